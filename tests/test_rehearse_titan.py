"""Rehearsal of titan-pretrain's Volcano Job (issue 20 item 4): master and worker pods as Volcano's pytorch and svc
plugins build them, the Job's own `torchrun` in each (static rendezvous at MASTER_ADDR:MASTER_PORT, gloo) on the CPU
path at tiny scale (one process per pod); stopped after a checkpoint and started again, training resumes from it.
With the torchrun command reading an env var the pytorch plugin does not set, the rehearsal fails naming the pod
and step."""
from __future__ import annotations

import copy
import json
import re
import signal
import time
from pathlib import Path

import pytest

from trnctl.operators import volcano
from trnctl.rehearse import overlay
from trnctl.rehearse.overlay import seed_titan_inputs
from trnctl.rehearse.runner import Rehearsal

pytestmark = pytest.mark.slow

STACK = "titan-pretrain-use2"
CLAIM = "fsx-shared"


@pytest.fixture(scope="module")
def stack():
    return overlay.load(STACK)


def train_job(stack) -> tuple[int, dict]:
    return next((i, o) for i, step in enumerate(stack.steps) for o in step if (o["apiVersion"], o["kind"]) in volcano.KINDS)


def run_json(stack) -> dict:
    return json.loads(next(o for o in stack.objects if o["kind"] == "ConfigMap" and "run.json" in o.get("data", {}))
                      ["data"]["run.json"])


@pytest.fixture(scope="module")
def shared(stack, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("titan-shared")
    seed_titan_inputs(root, CLAIM, run_json(stack)["dataset_prefix"])
    return root


def checkpoint_steps(shared: Path, run: dict) -> list[int]:
    """Complete torch.distributed.checkpoint saves (the .metadata file is written last)."""
    root = shared / CLAIM / run["run_dir"].removeprefix("/shared/") / "checkpoints"
    return sorted(int(p.parent.name.split("_")[1]) for p in root.glob("step_*/.metadata"))


def report(results) -> str:
    return "\n".join(p.line() + "\n" + p.log_tail for p in results)


def test_torchrun_reading_an_env_var_the_plugin_does_not_set_fails_naming_pod_and_step(stack, shared):
    """The defect put back: the node rank read from $(NODE_RANK), which Volcano's pytorch plugin never sets (it sets
    RANK): the kubelet leaves `$(NODE_RANK)` as written and torchrun refuses it on every pod."""
    broken = copy.copy(stack)
    broken.steps = copy.deepcopy(stack.steps)
    index, job = train_job(broken)
    for task in job["spec"]["tasks"]:
        c = task["template"]["spec"]["containers"][0]
        c["command"] = [a.replace("$(RANK)", "$(NODE_RANK)") for a in c["command"]]
    with Rehearsal(broken, shared_dir=shared, step_timeout=90, s3=False) as r:
        results = r.run_job(job, index)
    failed = [p for p in results if p.problem]
    assert failed and all(p.step == index and p.name.startswith(job["metadata"]["name"]) for p in failed), report(results)
    assert any("$(NODE_RANK)" in p.log_tail for p in failed), report(results)


def test_pytorch_plugin_without_its_master_task_makes_no_pods_and_says_why(stack, shared):
    """The pytorch plugin told a master task the Job does not have: Volcano gives no pod MASTER_ADDR/RANK/WORLD_SIZE;
    the rehearsal starts nothing and names the Job, the step and the upstream rule."""
    broken = copy.copy(stack)
    broken.steps = copy.deepcopy(stack.steps)
    index, job = train_job(broken)
    job["spec"]["plugins"]["pytorch"] = [a.replace("--master=master", "--master=launcher") for a in job["spec"]["plugins"]["pytorch"]]
    with Rehearsal(broken, shared_dir=shared, step_timeout=30, s3=False) as r:
        [result] = r.run_job(job, index)
        assert r.containers == []
    assert result.step == index and f"Job.batch.volcano.sh {job['metadata']['namespace']}/{job['metadata']['name']}" in result.problem
    assert "master task 'launcher' does not exist" in result.problem and "pytorch.go" in result.problem


def metrics_steps(shared: Path, run: dict) -> list[int]:
    path = shared / CLAIM / run["run_dir"].removeprefix("/shared/") / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def last_logged_step(shared: Path, run: dict) -> int:
    return max(metrics_steps(shared, run), default=0)


def resumed_steps(r: Rehearsal, pod: str) -> list[int]:
    log = "".join(f.read_text() for f in (r.work / "pods" / pod).glob("*.log"))
    return [int(s) for s in re.findall(r"resumed from \S+ \(step (\d+)\)", log)]


def test_a_killed_and_a_hung_worker_each_restart_the_gang_from_the_newest_checkpoint(stack, tmp_path):
    """Issue 24 item 4 (measured recovery), titan, one run of the Volcano Job:
    1. killed: halfway past the first checkpoint, worker-0's pod is killed; the master's torchrun fails with it; the Job's
       policy (PodFailed -> RestartJob) restarts the gang, which resumes from the newest checkpoint;
    2. hung: halfway past the next checkpoint, worker-0's trainer is stopped (SIGSTOP: alive, no steps; the master blocks in
       its collective). Nothing exits, so no operator notices: the platform's TrainingGangHung rule in Prometheus
       fires on the master's step counter, the platform's watchdog deletes the gang-restart pod (the master), and the
       Job's policy for that (PodEvicted -> RestartJob) restarts the gang, which resumes and trains to the end.
    Each time: steps lost (last step logged before the fault - the step resumed from) <= the checkpoint interval.
    (This run is also issue 20's stop-and-resume rehearsal of titan: one titan run, not two.)"""
    from trnctl.rehearse.hangwatch import HangWatch
    run = run_json(stack)
    every = run["checkpoint_every_n_steps"]
    seed_titan_inputs(tmp_path, CLAIM, run["dataset_prefix"])
    index, job = train_job(stack)
    name = job["metadata"]["name"]
    master, worker = f"{name}-master-0", f"{name}-worker-0"
    measured = {}
    with Rehearsal(stack, shared_dir=tmp_path, step_timeout=150, s3=False) as r:
        started = r.start_job(job, index)
        watch = HangWatch(r).start()

        def midway_past_a_checkpoint_after(step: int) -> bool:
            """Faults come halfway between checkpoints: a resume from anything but the newest loses more steps."""
            newest = max(checkpoint_steps(tmp_path, run), default=0)
            return newest > step and last_logged_step(tmp_path, run) >= newest + every // 2

        # 1. a worker killed
        first = r.await_job(job, started, until=lambda: midway_past_a_checkpoint_after(0))
        assert all(not p.problem for p in first) and max(checkpoint_steps(tmp_path, run)) < run["steps"], report(first)
        r.kill_pod(worker)
        killed_at, last_step = time.monotonic(), last_logged_step(tmp_path, run)
        broken = r.await_job(job, started)  # the master's torchrun loses its peer
        assert next(p for p in broken if p.name == master).problem.startswith("container exited with"), report(broken)
        seen = len(metrics_steps(tmp_path, run))
        again = r.pod_lost(job, index, worker, "PodFailed")
        r.await_job(job, again, until=lambda: len(metrics_steps(tmp_path, run)) > seen)
        [resumed] = resumed_steps(r, master)
        measured["killed"] = (last_step, resumed, time.monotonic() - killed_at)

        # 2. a worker hung, after the next checkpoint
        r.await_job(job, again, until=lambda: midway_past_a_checkpoint_after(resumed))
        assert all(not p.problem for p in again.values()), report(again.values())
        r.signal_processes(worker, signal.SIGSTOP, match="trn_workloads.titan.train")
        stalled_at, last_step = time.monotonic(), last_logged_step(tmp_path, run)
        restart = watch.until_restart(timeout=90)
        assert (restart.namespace, restart.pod) == (job["metadata"]["namespace"], master), restart
        assert any("hung: deleted pod" in line for line in restart.lines), restart.lines
        assert last_logged_step(tmp_path, run) == last_step  # no step while hung
        seen = len(metrics_steps(tmp_path, run))
        third = r.pod_lost(job, index, master, "PodEvicted")
        r.await_job(job, third, until=lambda: len(metrics_steps(tmp_path, run)) > seen)
        resumed = resumed_steps(r, master)[-1]
        measured["hung"] = (last_step, resumed, time.monotonic() - stalled_at, restart.at - stalled_at)
        done = r.await_job(job, third)
    assert all(not p.problem and p.exit_code == 0 for p in done), report(done)
    assert sorted(p.name for p in done) == [master, worker]
    for fault, (last, resumed, to_resume, *detect) in measured.items():
        print(f"titan {fault} worker: last step {last}, resumed from {resumed}, steps lost {last - resumed}, "
              + (f"detected after {detect[0]:.1f}s, " if detect else "") + f"time to resume {to_resume:.1f}s")
        assert resumed > 0 and 0 <= last - resumed <= every, measured
    assert metrics_steps(tmp_path, run)[-1] == run["steps"]
    assert checkpoint_steps(tmp_path, run)[-1] == run["steps"]
