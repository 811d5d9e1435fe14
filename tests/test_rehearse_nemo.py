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
from trn_workloads.nemo import checkpoints
from trn_workloads.nemo.command import FORWARDED_ENV, mpirun_command
from trnctl.operators import mpi
from trnctl.rehearse import overlay
from trnctl.rehearse.hangwatch import HangWatch
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
STALL_SECONDS = 2.0  # many step times of the tiny model (checked): a gang that kept stepping would log several


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
    return sorted(checkpoints.checkpoint_step(p) for p in checkpoints.complete_checkpoints(run_dir / "checkpoints"))


def logged_step(run_dir: Path) -> int:
    """Where training is, as the progress sidecar reads it from the TensorBoard events."""
    return progress.latest_step_tensorboard(run_dir) or 0


def event_files(run_dir: Path) -> set[Path]:
    return set(run_dir.glob(progress.EVENT_FILE_GLOB))


def first_new_step(run_dir: Path, before: set[Path], after: int) -> bool:
    """An event file the restarted gang wrote logs a step past `after` (the step it resumed from)."""
    steps = [progress.event_step(rec) for f in event_files(run_dir) - before for rec in progress.tfrecords(f.read_bytes())]
    return any(s is not None and s > after for s in steps)


def report(results) -> str:
    return "\n".join(p.line() + "\n" + p.log_tail for p in results)


def resumed_steps(log: Path) -> list[int]:
    return [int(n) for n in re.findall(r"resumed from \S+ \(step (\d+)\)", log.read_text())]


def ranks_left(r, gang, timeout: float = 30.0) -> list:
    """The rank processes still on the workers, once Open MPI's orted had `timeout` to end them."""
    end = time.monotonic() + timeout
    while (left := [p for w in gang.workers for p in r.pod_processes(w["metadata"]["name"], RANK_MATCH)]) \
            and time.monotonic() < end:
        time.sleep(0.2)
    return left


def train_past_a_checkpoint(r, gang, run_dir: Path, after: int) -> None:
    """Until a checkpoint newer than `after` exists and training has logged a step past it."""
    def past() -> bool:
        saved = saved_steps(run_dir)
        return bool(saved) and saved[-1] > after and logged_step(run_dir) > saved[-1]
    res = r.await_mpijob(gang, until=past)
    assert not res.problem and res.exit_code is None and past(), report(gang.results.values())


def stall(r, worker: str, run_dir: Path) -> tuple[list[int], int, int]:
    """SIGSTOP the rank on `worker` (hung in a collective): (its pids, the step logged once stopped, after
    STALL_SECONDS more)."""
    stopped = r.signal_processes(worker, signal.SIGSTOP, RANK_MATCH)
    time.sleep(0.5)  # a step under way ends in the all-reduce
    at_stop = logged_step(run_dir)
    time.sleep(STALL_SECONDS)
    return stopped, at_stop, logged_step(run_dir)


def recover(r, gang, run_dir: Path, *, interrupted_at: float, watch=None, before_retry=None) -> dict:
    """After an interruption: the ranks left, the launcher Job's rule applied, training until the restarted gang
    logs its first new step; time to resume measured from the interruption. With `watch` (a hung gang): the
    platform's hang path (trnctl/rehearse/hangwatch.py) notices the stopped step counter and its watchdog deletes
    the pod labelled trn-platform/gang-restart (the launcher, workloads/progress.py) first."""
    out: dict = {}
    deleted = watch is not None
    if deleted:
        restart = watch.until_restart(timeout=90)
        out["watchdog"], out["detected_after"] = restart, restart.at - interrupted_at
    out["ranks_left"] = ranks_left(r, gang)
    # the last step the old gang logged, once its ranks are gone: Open MPI's orted sends a stopped rank SIGCONT
    # before SIGTERM (orte/mca/odls/base/odls_base_default_fns.c, kill_local_procs), so a SIGSTOPped gang may still
    # make a few steps (and a save) while it is torn down
    out["last_step"] = logged_step(run_dir)
    if before_retry:
        before_retry(run_dir)
    old_events = event_files(run_dir)
    out["retry"] = retry = r.retry_launcher(gang, deleted=deleted)
    if retry.action != "failed":
        log = r.work / "pods" / gang.launcher_name / "launcher.log"
        seen = len(resumed_steps(log)) if log.exists() else 0
        res = r.await_mpijob(gang, until=lambda: first_new_step(run_dir, old_events, max(resumed_steps(log)[seen:], default=0)))
        assert not res.problem, report(gang.results.values())
        out["time_to_resume"] = time.monotonic() - interrupted_at
        out["resumed"] = max(resumed_steps(log)[seen:], default=0)  # 0: started again from scratch
    return out


def run_with_a_killed_rank(stack, shared: Path, *, before_retry=None, then_delete_the_launcher=False,
                           to_the_end=True, stall_first=True) -> dict:
    """Train past the first checkpoint; SIGSTOP the rank on the last worker (stall_first: every rank must stop, each
    step all-reduces), then SIGKILL it (a crashed rank): mpirun aborts, the launcher's container fails, the launcher Job's
    rule restarts it. With then_delete_the_launcher: past the next checkpoint, stop the rank on the first worker and
    delete the launcher pod as the hang watchdog would (workloads/progress.py): the Job replaces the pod. Then to
    the end (unless not to_the_end: then stopped once the restarted gang logged a step). Returns what was measured."""
    run, run_dir = run_on_volume(stack, shared)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run on the data the full rehearsal prepared
    index, job = train_job(stack)
    name = job["metadata"]["name"]
    out: dict = {"interval": run["checkpoint_every_n_steps"], "steps": run["steps"], "keep": run["keep_checkpoints"]}
    with Rehearsal(stack, shared_dir=shared, step_timeout=120, s3=False) as r:
        gang = r.start_mpijob(job, index)
        watch = HangWatch(r).start() if then_delete_the_launcher else None
        train_past_a_checkpoint(r, gang, run_dir, 0)
        out["saved"] = saved_steps(run_dir)
        if stall_first:
            stopped, *out["stalled"] = stall(r, mpi.worker_name(name, NODES - 1), run_dir)
            out["stalled_launcher"] = r.await_mpijob(gang, until=lambda: True).problem  # mpirun waits, nothing failed
        killed = r.signal_processes(mpi.worker_name(name, NODES - 1), signal.SIGKILL, RANK_MATCH)
        assert not stall_first or set(stopped) <= set(killed)
        interrupted_at = time.monotonic()
        out["launcher_failure"] = r.await_mpijob(gang).problem
        out["kill"] = recover(r, gang, run_dir, interrupted_at=interrupted_at, before_retry=before_retry)
        if then_delete_the_launcher:
            train_past_a_checkpoint(r, gang, run_dir, out["kill"]["resumed"])
            out["saved_before_delete"] = saved_steps(run_dir)
            stall(r, mpi.worker_name(name, 0), run_dir)
            interrupted_at = time.monotonic()
            out["deleted_launcher"] = gang.launcher_name
            out["delete"] = recover(r, gang, run_dir, interrupted_at=interrupted_at, watch=watch)
            out["gang_restart_pods"] = [p["metadata"]["name"] for p in r.all_pods
                                        if (p["metadata"].get("labels") or {}).get("trn-platform/gang-restart")]
        if to_the_end:
            out["done"] = r.await_mpijob(gang)
        out["results"] = r.finish_mpijob(gang)
        out["log"] = "".join(f.read_text() for f in sorted((r.work / "pods").glob(f"{name}-launcher-*/launcher.log")))
    out["final_saved"], out["final_step"] = saved_steps(run_dir), logged_step(run_dir)
    return out


def test_a_killed_rank_restarts_the_launcher_and_the_gang_resumes_from_the_newest_checkpoint(stack, rehearsed):
    """A stopped rank stops the gang (the premise of the hang watchdog). A killed rank: mpirun aborts (its orted
    reports the SIGKILL and ends the other ranks); the launcher container exits non-zero; the launcher Job
    (restartPolicy OnFailure, backoffLimit 3) has the kubelet restart it in the same pod; the new mpirun starts both
    ranks again over ssh and they resume from the newest complete checkpoint. Then the path the hang watchdog takes:
    a rank stopped, the launcher pod deleted, the Job's replacement pod (a new name) restarts the gang, which
    resumes again. Steps lost (last step the interrupted gang logged - the step resumed from) <= the checkpoint
    interval each time; the run completes at max_steps."""
    assert rehearsed[0].ok, rehearsed[0].report()
    m = run_with_a_killed_rank(stack, rehearsed[2], then_delete_the_launcher=True)
    log, interval = m["log"], m["interval"]
    assert m["saved"] and 0 < m["saved"][-1] < m["steps"]
    step_times = sorted(float(t) for t in re.findall(r"step_time ([\d.]+)s", log))
    median_step = step_times[len(step_times) // 2]
    assert STALL_SECONDS >= 3 * median_step, f"the stall window must span several steps (median step {median_step:.2f}s)"
    at_stop, after_stall = m["stalled"]
    assert after_stall == at_stop and m["stalled_launcher"] == "", f"a stopped rank must stop the gang: {m['stalled']}"

    kill, delete = m["kill"], m["delete"]
    assert m["launcher_failure"].startswith("container exited with"), log[-3000:]
    assert kill["ranks_left"] == [], f"ranks left on the workers after mpirun ended: {kill['ranks_left']}"
    assert kill["retry"].action == "restart-container" and kill["retry"].restarts == 1, kill["retry"]
    assert kill["resumed"] >= m["saved"][-1] > 0, log[-3000:]
    assert delete["ranks_left"] == [], f"ranks (one stopped) left after the launcher pod was deleted: {delete['ranks_left']}"
    restart = delete["watchdog"]
    assert restart.pod == m["deleted_launcher"] and any("hung: deleted pod" in line for line in restart.lines), restart
    assert delete["retry"].action == "new-pod" and delete["retry"].pod != m["deleted_launcher"], delete["retry"]
    assert m["gang_restart_pods"] == [delete["retry"].pod]  # what the watchdog finds next time: the replacement
    assert delete["resumed"] >= m["saved_before_delete"][-1] > kill["resumed"], log[-3000:]

    done = m["done"]
    assert not done.problem and done.exit_code == 0 and done.name == delete["retry"].pod, report(m["results"])
    lost = {"killed rank": kill["last_step"] - kill["resumed"], "hung rank": delete["last_step"] - delete["resumed"]}
    for what, case in (("killed rank", kill), ("hung rank", delete)):
        detected = f"detected after {case['detected_after']:.1f}s, " if "detected_after" in case else ""
        print(f"nemo recovery ({what}): steps lost {lost[what]}, resumed from step {case['resumed']}, {detected}time to "
              f"resume {case['time_to_resume']:.1f}s; {case['retry'].reason}")
    print(f"nemo recovery: median step {median_step:.2f}s, checkpoint every {interval} steps")
    assert all(0 <= n <= interval for n in lost.values()), (lost, re.findall(r"resumed from .*|saved .*", log))
    assert m["final_step"] == m["steps"] and m["final_saved"][-1] == m["steps"], log[-3000:]
    # save_top_k newest, plus saves an attempt resumed from (an attempt never removes the save it resumed from; a
    # later attempt that saves nothing, one resumed near the end, removes nothing)
    assert m["final_saved"][-m["keep"]:] == list(range(m["steps"] - interval * (m["keep"] - 1), m["steps"] + 1, interval))
    assert set(m["final_saved"][:-m["keep"]]) <= {kill["resumed"], delete["resumed"]}, m["final_saved"]
    assert delete["resumed"] < m["steps"], "the hung gang must have steps left to resume (raise the overlay's steps)"


def test_without_the_checkpoint_to_resume_from_the_recovery_check_fails(stack, rehearsed):
    """The defect put back: the restarted gang finds no checkpoint (what resume_if_exists off, or checkpoints off
    the shared volume, amount to): it trains again from step 0 and loses more than a checkpoint interval, which the
    recovery test refuses."""
    m = run_with_a_killed_rank(stack, rehearsed[2], before_retry=lambda run_dir: shutil.rmtree(run_dir / "checkpoints"),
                               to_the_end=False, stall_first=False)
    assert m["kill"]["retry"].action == "restart-container"
    assert "resumed from" not in m["log"] and m["kill"]["resumed"] == 0
    assert m["kill"]["last_step"] - m["kill"]["resumed"] > m["interval"]
