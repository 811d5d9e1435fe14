"""Rehearsal of titan-pretrain's Volcano Job (issue 20 item 4): master and worker pods as Volcano's pytorch and svc
plugins build them, the Job's own `torchrun` in each (static rendezvous at MASTER_ADDR:MASTER_PORT, gloo) on the CPU
path at tiny scale (one process per pod); stopped after a checkpoint and started again, training resumes from it.
With the torchrun command reading an env var the pytorch plugin does not set, the rehearsal fails naming the pod
and step."""
from __future__ import annotations

import copy
import json
import re
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


def test_a_killed_worker_restarts_the_gang_from_the_newest_checkpoint(stack, tmp_path):
    """Issue 24 item 4 (measured recovery), titan: master and worker train with the Volcano plugins' env until the
    first checkpoint; one worker pod killed mid-run; the master's torchrun fails with it; the Job's own policy for
    PodFailed (RestartJob) restarts the gang (every pod deleted and created again), which resumes from the newest
    checkpoint and trains to the end. Steps lost (last step logged before the kill - the step resumed from) <= the
    checkpoint interval. (This run is also the stop-and-resume rehearsal of issue 20: one titan run, not two.)"""
    run = run_json(stack)
    seed_titan_inputs(tmp_path, CLAIM, run["dataset_prefix"])
    index, job = train_job(stack)
    name = job["metadata"]["name"]
    with Rehearsal(stack, shared_dir=tmp_path, step_timeout=150, s3=False) as r:
        started = r.start_job(job, index)
        first = r.await_job(job, started, until=lambda: bool(checkpoint_steps(tmp_path, run)))
        assert all(not p.problem for p in first), report(first)
        saved = checkpoint_steps(tmp_path, run)
        assert saved and 0 < saved[-1] < run["steps"], report(first)
        r.kill_pod(f"{name}-worker-0")
        killed_at, last_step = time.monotonic(), max(metrics_steps(tmp_path, run), default=0)
        broken = r.await_job(job, started)  # the master's torchrun loses its peer
        master = next(p for p in broken if p.name == f"{name}-master-0")
        assert master.problem.startswith("container exited with"), report(broken)
        assert volcano.policy_action(job, "worker", "PodFailed") == "RestartJob"
        r.stop_job(job)  # RestartJob: every pod of the gang killed and created again
        seen = len(metrics_steps(tmp_path, run))
        again = r.start_job(job, index)
        r.await_job(job, again, until=lambda: len(metrics_steps(tmp_path, run)) > seen)
        time_to_resume = time.monotonic() - killed_at
        done = r.await_job(job, again)
        log = "".join(f.read_text() for f in (r.work / "pods" / f"{name}-master-0").glob("*.log"))
    assert all(not p.problem and p.exit_code == 0 for p in done), report(done)
    assert sorted(p.name for p in done) == [f"{name}-master-0", f"{name}-worker-0"]
    resumed = int(re.findall(r"resumed from \S+ \(step (\d+)\)", log)[-1])
    assert resumed >= saved[-1] > 0, log[-3000:]
    steps_lost = last_step - resumed
    print(f"titan recovery: last step {last_step}, resumed from {resumed}, steps lost {steps_lost}, "
          f"time to resume {time_to_resume:.1f}s")
    assert 0 <= steps_lost <= run["checkpoint_every_n_steps"]
    assert metrics_steps(tmp_path, run)[-1] == run["steps"]
    assert checkpoint_steps(tmp_path, run)[-1] == run["steps"]
