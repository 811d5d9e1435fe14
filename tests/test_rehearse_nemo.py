"""Rehearsal of nemo-pretrain end to end (issue 20 defect 3), as `trnctl rehearse nemo-pretrain-usw2` runs it: the
data-prep Job tokenizes the seeded corpus onto the shared volume; in each MPIJob (precompile, train) two workers run
the image's sshd as the pod user, the launcher's real Open MPI `mpirun` starts one launch process per worker over
ssh, and every rank meets rank 0 at MASTER_ADDR (the CPU stand-in of the NxD step, which trains for real in the
train MPIJob). With the defect put back (mpirun without `-x MASTER_ADDR`, the launch code looking for a hostfile
only the launcher has), the rehearsal fails, naming the launcher pod and step.

Issue 24 item 4 (measured recovery): one rank SIGKILLed mid-run; mpirun aborts, the launcher Job's rule restarts
it, the gang resumes from the newest checkpoint; steps lost <= the checkpoint interval."""
from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from trn_workloads import progress
from trn_workloads.nemo import standin
from trn_workloads.nemo.command import FORWARDED_ENV, mpirun_command
from trnctl.operators import mpi
from trnctl.rehearse import overlay
from trnctl.rehearse.runner import Rehearsal

pytestmark = pytest.mark.slow

STACK = "nemo-pretrain-usw2"
NODES = overlay.NEMO_OVERLAY["nemo-pretrain"]["nemo"]["run"]["nodes"]


@pytest.fixture(scope="module")
def stack():
    return overlay.load(STACK)


def mpijob_step(stack, suffix: str) -> int:
    return next(i for i, step in enumerate(stack.steps) if any(o["metadata"]["name"].endswith(suffix) for o in step))


@pytest.fixture(scope="module")
def rehearsed(stack):
    """One rehearsal of every step (data-prep Job, precompile and train MPIJobs) on one shared volume; the launcher
    logs of both MPIJobs kept for the tests."""
    shared = Path(tempfile.mkdtemp(prefix="trn-rehearse-test-nemo-"))
    try:
        with Rehearsal(stack, shared_dir=shared, step_timeout=120, s3=False) as r:
            result = r.run()
            logs = {p.name: (r.work / "pods" / p.name / "launcher.log").read_text() for p in result.pods
                    if "-launcher-" in p.name}
        yield result, logs, shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("mode", ["precompile", "train"])
def test_every_rank_reaches_rank0_over_ssh_and_mpirun(stack, rehearsed, mode):
    result, logs, _ = rehearsed
    assert result.ok, result.report()
    index = mpijob_step(stack, f"-{mode}")
    results = [p for p in result.pods if p.step == index]
    assert len(results) == NODES + 1
    launcher = next(p for p in results if "-launcher-" in p.name)
    assert launcher.exit_code == 0
    log = logs[launcher.name]
    for rank in range(NODES):
        assert f"node {rank}/{NODES}: CPU stand-in for NxD Training {mode}" in log, log
    assert f"met ranks {list(range(NODES))}" in log


def test_without_master_addr_forwarded_the_rehearsal_fails_naming_pod_and_step(stack, rehearsed):
    """The defect put back in the rendered objects: the launcher runs plain mpirun without `-x MASTER_ADDR` (on the
    shared volume the data-prep Job of the full rehearsal filled)."""
    broken = copy.copy(stack)
    index = mpijob_step(stack, "-precompile")
    broken.steps = copy.deepcopy(stack.steps)
    job = next(o for o in broken.steps[index] if o["kind"] == "MPIJob")
    container = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    launch = container["command"][container["command"].index("--") + 1:]
    container["command"] = mpirun_command(NODES, launch, forward_env=tuple(n for n in FORWARDED_ENV if n != "MASTER_ADDR"))
    with Rehearsal(broken, shared_dir=rehearsed[2], step_timeout=120, s3=False) as r:
        results = r.run_step(index)
    [failed] = [p for p in results if p.problem]
    assert failed.name.startswith(f"{job['metadata']['name']}-launcher-") and failed.step == index
    assert "MASTER_ADDR is not set" in failed.log_tail
    assert all(p.problem == "" for p in results if p.name.startswith(mpi.worker_name(job["metadata"]["name"], 0)[:-1]))


# --- issue 24 item 4: a killed rank ---------------------------------------------------------------------------------

RANK_MATCH = "trn_workloads.nemo.launch"  # the rank process mpirun starts on each worker (over ssh, under orted)
STALL_SECONDS = 3.0  # many step times of the tiny model: a gang that kept stepping would log several


def train_job(stack) -> tuple[int, dict]:
    index = mpijob_step(stack, "-train")
    return index, next(o for o in stack.steps[index] if o["kind"] == "MPIJob")


def run_on_volume(stack, shared: Path) -> tuple[dict, Path]:
    """The run config (the ConfigMap's run.json) and its run_dir on the rehearsal's shared volume."""
    run = json.loads(next(o for o in stack.objects if o["kind"] == "ConfigMap" and "run.json" in o.get("data", {}))
                     ["data"]["run.json"])
    _, job = train_job(stack)
    worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    [claim] = {v["persistentVolumeClaim"]["claimName"] for v in worker["volumes"] if "persistentVolumeClaim" in v}
    return run, shared / claim / run["run_dir"].removeprefix("/shared/")


def saved_steps(run_dir: Path) -> list[int]:
    return sorted(standin.checkpoint_step(p) for p in standin.complete_checkpoints(run_dir / "checkpoints"))


def logged_step(run_dir: Path) -> int:
    """Where training is, as the progress sidecar reads it from the TensorBoard events."""
    return progress.latest_step_tensorboard(run_dir) or 0


def event_files(run_dir: Path) -> set[Path]:
    return set(run_dir.glob(progress.EVENT_FILE_GLOB))


def first_new_step(run_dir: Path, before: set[Path], after: int) -> bool:
    """An event file the restarted gang wrote logs a step past `after` (the step it resumed from)."""
    steps = [progress.event_step(rec) for f in event_files(run_dir) - before for rec in progress.tfrecords(f.read_bytes())]
    return any(s is not None and s > after for s in steps)


def kill_a_rank_and_recover(stack, shared: Path, *, before_retry=None) -> dict:
    """Train until a checkpoint exists and training is past it; SIGSTOP the rank on the last worker (the gang must
    stop: every step all-reduces), then SIGKILL it; let the launcher fail; apply the launcher Job's rule; train to
    the end. Returns what was measured."""
    run, run_dir = run_on_volume(stack, shared)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run on the data the full rehearsal prepared
    index, job = train_job(stack)
    interval = run["checkpoint_every_n_steps"]
    out: dict = {"interval": interval, "steps": run["steps"], "keep": run["keep_checkpoints"]}
    with Rehearsal(stack, shared_dir=shared, step_timeout=120, s3=False) as r:
        gang = r.start_mpijob(job, index)
        first = r.await_mpijob(gang, until=lambda: bool(saved_steps(run_dir)) and logged_step(run_dir) > interval)
        assert not first.problem and first.exit_code is None, report(gang.results.values())
        out["saved"] = saved_steps(run_dir)
        worker = mpi.worker_name(job["metadata"]["name"], NODES - 1)
        # a hung rank: the others wait in the all-reduce, nothing exits, no step is logged
        stopped = r.signal_processes(worker, signal.SIGSTOP, RANK_MATCH)
        time.sleep(1.0)
        at_stop = logged_step(run_dir)
        time.sleep(STALL_SECONDS)
        out["stalled"] = (at_stop, logged_step(run_dir), r.await_mpijob(gang, until=lambda: True).problem)
        out["killed_pids"] = r.signal_processes(worker, signal.SIGKILL, RANK_MATCH)
        assert set(stopped) <= set(out["killed_pids"])  # the stopped rank is the one killed
        killed_at, out["last_step"] = time.monotonic(), logged_step(run_dir)
        failed = r.await_mpijob(gang)
        out["launcher_failure"] = failed.problem
        # Open MPI's orted on every worker ends the ranks it started when mpirun aborts: none may be left
        end = time.monotonic() + 30
        while (left := [p for w in gang.workers for p in r.pod_processes(w["metadata"]["name"], RANK_MATCH)]) \
                and time.monotonic() < end:
            time.sleep(0.2)
        out["ranks_left"] = left
        if before_retry:
            before_retry(run_dir)
        old_events = event_files(run_dir)
        out["retry"] = r.retry_launcher(gang)
        log = r.work / "pods" / gang.launcher_name / "launcher.log"
        resumed = lambda: [int(n) for n in re.findall(r"resumed from \S+ \(step (\d+)\)", log.read_text())]  # noqa: E731
        if out["retry"].action != "failed":
            r.await_mpijob(gang, until=lambda: first_new_step(run_dir, old_events, max(resumed(), default=0)))
            out["time_to_resume"] = time.monotonic() - killed_at  # to the first step after the one resumed from
            out["done"] = r.await_mpijob(gang)
        out["resumed"] = max(resumed(), default=0)  # 0: started again from scratch
        out["results"] = r.finish_mpijob(gang)
        out["log"] = log.read_text()
    out["final_saved"], out["final_step"] = saved_steps(run_dir), logged_step(run_dir)
    return out


def report(results) -> str:
    return "\n".join(p.line() + "\n" + p.log_tail for p in results)


def test_a_killed_rank_restarts_the_launcher_and_the_gang_resumes_from_the_newest_checkpoint(stack, rehearsed):
    """mpirun aborts when a rank dies (its orted reports the SIGKILL); the launcher pod's container exits non-zero;
    the launcher Job (restartPolicy OnFailure, backoffLimit 3) has the kubelet restart it in the same pod; the new
    mpirun starts both ranks again over ssh and they resume from the newest complete checkpoint. Steps lost (last
    step logged before the kill - the step resumed from) <= the checkpoint interval; the run completes."""
    assert rehearsed[0].ok, rehearsed[0].report()
    m = kill_a_rank_and_recover(stack, rehearsed[2])
    assert m["saved"] and 0 < m["saved"][-1] < m["steps"]
    at_stop, after_stall, launcher_problem = m["stalled"]
    step_time = sorted(float(t) for t in re.findall(r"step_time ([\d.]+)s", m["log"]))[len(re.findall("step_time", m["log"])) // 2]
    assert STALL_SECONDS >= 3 * step_time, f"the stall window must span several steps (median step {step_time:.2f}s)"
    assert after_stall == at_stop and launcher_problem == "", f"a stopped rank must stop the gang: {m['stalled']}"
    assert m["launcher_failure"].startswith("container exited with"), m["log"][-3000:]
    assert m["ranks_left"] == [], f"ranks left on the workers after mpirun ended: {m['ranks_left']}"
    retry = m["retry"]
    assert retry.action == "restart-container" and retry.restarts == 1, retry
    done = m["done"]
    assert not done.problem and done.exit_code == 0, report(m["results"])
    steps_lost = m["last_step"] - m["resumed"]
    print(f"nemo recovery: last step {m['last_step']}, resumed from {m['resumed']}, steps lost {steps_lost}, "
          f"time to resume {m['time_to_resume']:.1f}s, median step {step_time:.2f}s ({retry.reason})")
    assert m["resumed"] >= m["saved"][-1] > 0, m["log"][-3000:]
    assert 0 <= steps_lost <= m["interval"]
    assert m["final_step"] == m["steps"] and m["final_saved"][-1] == m["steps"], m["log"][-3000:]
    assert len(m["final_saved"]) <= m["keep"]  # save_top_k


def test_without_the_checkpoint_to_resume_from_the_recovery_check_fails(stack, rehearsed):
    """The defect put back: the restarted gang finds no checkpoint (what resume_if_exists off, or checkpoints off
    the shared volume, amount to): it trains again from step 0 and loses more than a checkpoint interval."""
    m = kill_a_rank_and_recover(stack, rehearsed[2], before_retry=lambda run_dir: shutil.rmtree(run_dir / "checkpoints"))
    assert m["retry"].action == "restart-container"
    assert "resumed from" not in m["log"] and m["resumed"] == 0
    assert m["last_step"] - m["resumed"] > m["interval"]  # what the recovery test asserts against
