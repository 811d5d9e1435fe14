"""Rehearsal of ray-pretrain's three RayJobs end to end (issue 20 item 4): per RayJob, KubeRay's cluster (head, then
2 workers) and its submitter pod running the real `ray job submit` against the head Service's name; data, then
precompile, then train on the CPU path at tiny scale; the train RayJob stopped (its cluster and submitter deleted)
after its first checkpoint and resubmitted: training resumes from the checkpoint on the shared volume."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from trnctl.operators import kuberay
from trnctl.rehearse import overlay
from trnctl.rehearse.overlay import seed_ray_inputs
from trnctl.rehearse.runner import Rehearsal

pytestmark = pytest.mark.slow

STACK = "ray-pretrain-usw2"
CLAIM = "fsx-shared"


@pytest.fixture(scope="module")
def stack():
    return overlay.load(STACK)


def run_json(stack) -> dict:
    return json.loads(next(o for o in stack.objects if o["kind"] == "ConfigMap" and "run.json" in o.get("data", {}))
                      ["data"]["run.json"])


def job_step(stack, suffix: str) -> tuple[int, dict]:
    return next((i, o) for i, step in enumerate(stack.steps) for o in step
                if o["kind"] == "RayJob" and o["metadata"]["name"].endswith(f"-{suffix}"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-shared")
    seed_ray_inputs(root, CLAIM)
    return root


def on_pvc(shared: Path, path: str) -> Path:
    return shared / CLAIM / path.removeprefix("/shared/")


def report(results) -> str:
    return "\n".join(p.line() + ("\n" + p.log_tail if p.problem else "") for p in results)


@pytest.fixture(scope="module")
def data_done(stack, shared):
    index, job = job_step(stack, "data")
    with Rehearsal(stack, shared_dir=shared, step_timeout=150, s3=False) as r:
        results = r.run_step(index)
        submitter = next(p for p in results if p.name.startswith(f"{job['metadata']['name']}-") and "-head-" not in p.name
                         and "-worker-" not in p.name)
        log = (r.work / "pods" / submitter.name / "ray-job-submitter.log").read_text()
    return results, log


def test_data_rayjob_submitted_through_the_head_service(stack, shared, data_done):
    results, log = data_done
    assert all(not p.problem for p in results), report(results)
    assert len(results) == 4  # head, 2 workers, submitter
    run = run_json(stack)
    assert (on_pvc(shared, run["data_dir"]) / "index.json").exists()
    _, job = job_step(stack, "data")
    cluster = kuberay.rayjob_cluster(job, stack.ctx)
    # the submitter reached the dashboard by the head Service's cluster DNS name, as KubeRay writes it
    assert f"http://{kuberay.dashboard_url(cluster, stack.ctx)}" in log and "Job submission server address" in log, log
    assert f"Job '{kuberay.submission_id(job)}' succeeded" in log, log


def test_precompile_rayjob_on_the_cpu_path(stack, shared, data_done):
    index, job = job_step(stack, "precompile")
    with Rehearsal(stack, shared_dir=shared, step_timeout=150, s3=False) as r:
        results = r.run_step(index)
        submitter = next(p for p in results if p.name.startswith(f"{job['metadata']['name']}-") and "-head-" not in p.name
                         and "-worker-" not in p.name)
        log = (r.work / "pods" / submitter.name / "ray-job-submitter.log").read_text()
    assert all(not p.problem for p in results), report(results)
    assert "precompile: nothing to compile on the cpu backend" in log, log


def registered_step(shared: Path, run: dict) -> int | None:
    """The step of the newest checkpoint Ray Train has registered in its run's snapshot on the shared volume, which
    is what a new run with the same name resumes from (a checkpoint directory alone is not).
    source: ray-project/ray@ray-2.51.1:python/ray/train/v2/_internal/execution/checkpoint/checkpoint_manager.py
    (_write_state_to_storage, _maybe_load_state_from_storage: checkpoint_manager_snapshot.json)"""
    snapshot = on_pvc(shared, run["run_dir"]) / run["run_name"] / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None
    return latest["metrics"]["step"] if latest else None


def test_train_stopped_and_resubmitted_resumes_from_its_checkpoint(stack, shared, data_done):
    index, job = job_step(stack, "train")
    run = run_json(stack)
    with Rehearsal(stack, shared_dir=shared, step_timeout=150, s3=False) as r:
        first = r.run_rayjob(job, index, until=lambda: registered_step(shared, run) is not None)
        assert all(not p.problem for p in first), report(first)
        r.stop_rayjob(job)  # the RayJob deleted: KubeRay deletes its cluster and submitter
        saved_step = registered_step(shared, run)
        assert saved_step is not None and saved_step < run["steps"], report(first)
        second = r.run_rayjob(job, index)
        submitter = next(p for p in second if "-head-" not in p.name and "-worker-" not in p.name)
        log = (r.work / "pods" / submitter.name / "ray-job-submitter.log").read_text()
    assert all(not p.problem for p in second), report(second)
    assert saved_step > 0
    assert f"resuming at step {saved_step}" in log, log
    metrics = [json.loads(line) for line in (on_pvc(shared, run["run_dir"]) / run["run_name"] / "metrics.jsonl")
               .read_text().splitlines()]
    assert metrics[-1]["step"] == run["steps"]


def test_a_failing_ray_job_fails_its_submitter_pod_as_kuberay_sees_it(stack, tmp_path):
    """The data RayJob's entrypoint reading an input that is not there: the Ray job FAILS while the submitter's
    `ray job logs --follow` exits all the same; the rehearsal reads the job's status from the dashboard, as KubeRay
    does, and names the submitter pod and the step."""
    seed_ray_inputs(tmp_path, CLAIM)
    broken = copy.copy(stack)
    broken.steps = copy.deepcopy(stack.steps)
    index, job = job_step(broken, "data")
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace(overlay.RAY_CORPUS, "/shared/rehearsal/missing.jsonl")
    with Rehearsal(broken, shared_dir=tmp_path, step_timeout=150, s3=False) as r:
        results = r.run_step(index)
    failed = [p for p in results if p.problem]
    assert [p.name for p in failed] == [p.name for p in results if "-head-" not in p.name and "-worker-" not in p.name]
    [submitter] = failed
    assert submitter.step == index and submitter.problem.startswith(f"Ray job {kuberay.submission_id(job)} FAILED"), \
        report(results)
    assert "missing.jsonl" in submitter.log_tail, submitter.log_tail
