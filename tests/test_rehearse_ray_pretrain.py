"""Rehearsal of ray-pretrain's three RayJobs end to end (issue 20 item 4): per RayJob, KubeRay's cluster (head, then
2 workers) and its submitter pod running the real `ray job submit` against the head Service's name; data, then
precompile, then train on the CPU path at tiny scale; the train RayJob stopped (its cluster and submitter deleted)
after its first checkpoint and resubmitted: training resumes from the checkpoint on the shared volume."""
from __future__ import annotations

import copy
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trnctl.operators import kuberay
from trnctl.rehearse import overlay
from trnctl.rehearse.hangwatch import HangWatch
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
    """The data RayJob: its cluster (asked, while it runs, for `ray status` and what reaches its GCS), then its
    submitter; one cluster for the join and the submission tests."""
    index, job = job_step(stack, "data")
    with Rehearsal(stack, shared_dir=shared, step_timeout=150, s3=False) as r:
        cluster = r.run_cluster(job, index)
        asked = ask_cluster(r, job, cluster) if not any(p.problem for p in cluster) else None
        results = cluster + (r.submit_rayjob(job, index, cluster) if asked else [])
        submitter = next((p for p in results if p.name.startswith(f"{job['metadata']['name']}-")
                          and "-head-" not in p.name and "-worker-" not in p.name), None)
        log = (r.work / "pods" / submitter.name / "ray-job-submitter.log").read_text() if submitter else ""
    return results, log, asked


def ask_cluster(r: Rehearsal, job: dict, results) -> tuple:
    """`ray status` inside the head pod through the address workers use (the head Service's cluster DNS name), and
    whether the GCS port answers inside the rehearsal's network namespace and from this machine's."""
    head = next(p for p in results if "-head-" in p.name)
    cluster = kuberay.rayjob_cluster(job, r.stack.ctx)
    port = kuberay.head_port(cluster)
    status = r.exec_in(head.name, "ray-head", ["ray", "status", "--address",
                                               f"{kuberay.head_fqdn(cluster, r.stack.ctx)}:{port}"], timeout=60)
    # Ray's GCS binds every interface: reachable inside the rehearsal's network namespace, not from this machine's
    probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)"
    reach = {where: subprocess.run(argv([sys.executable, "-c", probe, address, str(port)]), capture_output=True).returncode
             for address in (r.addresses.pod(head.name), "127.0.0.1")
             for where, argv in ((f"inside {address}", list), (f"outside {address}", r.namespace.outside_argv))}
    return status, reach


def test_workers_join_the_head_with_kuberay_commands(stack, data_done):
    """Issue 20 defect 1 fixed: the head and two workers run the `ray start` commands KubeRay builds through their
    pods' `/bin/bash -c` with the real `ray` CLI; the workers join the head with their resources whole."""
    results, _, asked = data_done
    index, job = job_step(stack, "data")
    assert asked, report(results)
    status, reach = asked
    assert status.returncode == 0, status.stderr
    assert reach == {k: (0 if k.startswith("inside") else 1) for k in reach}, reach
    nodes = status.stdout.split("Node status", 1)[1].split("Pending:", 1)[0]
    assert " 2 trn1-efa" in nodes and " 1 headgroup" in nodes, status.stdout  # RAY_NODE_TYPE_NAME = ray.io/group
    # each worker's --resources reached Ray whole: 2 x 32 NeuronCores; --num-cpus from each worker's CPU limit (head 0)
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    cpus = workers["replicas"] * int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert "/64.0 neuron_cores" in status.stdout and f"/{cpus}.0 CPU" in status.stdout, status.stdout
    by_type = {kind: [p for p in results if f"-{kind}-" in p.name] for kind in ("head", "worker")}
    assert len(by_type["head"]) == 1 and len(by_type["worker"]) == 2
    for p in by_type["head"] + by_type["worker"]:
        assert not p.problem and p.ready, p.line() + "\n" + p.log_tail
    assert all(p.step == index and p.owner == f"RayJob/{job['metadata']['name']}" for p in results)


def test_data_rayjob_submitted_through_the_head_service(stack, shared, data_done):
    results, log, _ = data_done
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


def metrics_steps(shared: Path, run: dict) -> list[int]:
    """Steps world rank 0 logged to metrics.jsonl (appended by every attempt of the run)."""
    path = on_pvc(shared, run["run_dir"]) / run["run_name"] / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


TRAIN_WORKER = "RayTrainWorker"


def train_worker_pods(r: Rehearsal, job: dict) -> list[str]:
    """The RayJob's worker pods running a Ray Train worker actor (Ray sets the actor's process title to
    `ray::RayTrainWorker...`: ray-2.51.1 python/ray/train/v2/_internal/execution/worker_group/worker.py)."""
    cluster = kuberay.rayjob_cluster(job, r.stack.ctx)["metadata"]["name"]
    return [c for c in dict.fromkeys(c.pod for c in r.containers if c.pod.startswith(f"{cluster}-") and "-worker-" in c.pod)
            if r.pod_processes(c, TRAIN_WORKER)]


def resume_steps(r: Rehearsal, job: dict, *, at_least: int, timeout: float = 60.0) -> list[int]:
    """The steps the run resumed at, from the submitter's log (`ray job logs --follow` lags the driver a little:
    waited for until `at_least` are there)."""
    end = time.monotonic() + timeout
    while len(steps := [int(n) for n in re.findall(r"resuming at step (\d+)", submitter_log(r, job))]) < at_least \
            and time.monotonic() < end:
        time.sleep(0.5)
    return steps


def midway_past_a_checkpoint(shared: Path, run: dict, *, after: int) -> bool:
    """A checkpoint newer than `after` is registered and training is halfway to the next one (a fault there loses
    steps unless the resume is from the newest)."""
    newest = registered_step(shared, run) or 0
    return newest > after and max(metrics_steps(shared, run), default=0) >= newest + run["checkpoint_interval"] // 2


def test_a_killed_and_a_hung_worker_each_restart_the_gang_from_its_checkpoint(stack, shared, data_done):
    """Issue 24 item 4 (measured recovery), ray: the train RayJob runs halfway past its first registered checkpoint;
    one worker pod (holding one of the two Ray Train workers) is killed, its node lost. KubeRay's reconcile creates a new worker
    pod under a new generated name (kuberay.replacement_worker_pods); Ray Train's controller (Train V2, the default
    in 2.51.1) sees the worker group fail, and, within FailureConfig.max_failures, restarts the whole group from the
    newest reported checkpoint once the placement group fits again; training completes in the same Ray job.
    Then, halfway past the next checkpoint, one Ray Train worker is stopped (hung): the platform's TrainingGangHung
    rule fires on the submitter's step counter, the watchdog deletes a gang-restart worker pod, KubeRay replaces it,
    and Ray Train restarts the group from the newest checkpoint again (trnctl/rehearse/hangwatch.py).
    Each time, steps lost (last step logged before the fault - the step resumed from) <= the checkpoint interval.
    source: ray-project/ray@ray-2.51.1 python/ray/train/v2/_internal/execution/controller/controller.py (_step:
    RunningState poll errors -> failure policy -> RestartingState -> SchedulingState -> _execute_resize_decision),
    failure_handling/default.py (WorkerGroupError counted against max_failures; WorkerGroupStartupTimeoutError is a
    controller error, retried without limit: the controller waits for the replacement pod),
    worker_group/worker_group.py (_start_impl: pg.ready() bounded by RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 30 s).
    The resubmission path (the RayJob's backoffLimit: a new cluster, the run resumed under the same name) is covered
    by tests/test_operators_kuberay.py::test_a_failed_train_rayjob_is_retried_up_to_its_backoff_limit (the rule)
    and tests/test_ray_train_ray.py::test_stopped_run_resumes_to_the_same_weights (a new driver, same run name)."""
    index, job = job_step(stack, "train")
    run = run_json(stack)
    assert run["max_failures"] >= 1, run
    assert registered_step(shared, run) is None, "a checkpoint of an earlier run is there: the first one must be this run's"
    started = time.monotonic()
    with Rehearsal(stack, shared_dir=shared, step_timeout=150, s3=False) as r:
        first = r.run_rayjob(job, index, until=lambda: midway_past_a_checkpoint(shared, run, after=0))
        assert all(not p.problem for p in first), report(first)
        saved = registered_step(shared, run)
        to_checkpoint = time.monotonic() - started
        assert saved is not None and 0 < saved < run["steps"], report(first)
        holding = train_worker_pods(r, job)
        assert len(holding) == 2, f"Ray Train workers on {holding}: one per worker pod expected\n" + report(first)
        victim = holding[0]
        r.kill_pod(victim)  # the node lost: every process of the pod gone at once
        killed_at, last_step = time.monotonic(), max(metrics_steps(shared, run), default=0)
        seen = len(metrics_steps(shared, run))
        replaced = r.recreate_worker_pods(job, index)  # KubeRay's reconcile: the group is one pod short
        replaced_in = time.monotonic() - killed_at
        # the training goes on only once Ray Train's group fits again: without the new pod it waits to the step bound
        followed = r.follow_rayjob(job, first + replaced, until=lambda: len(metrics_steps(shared, run)) > seen)
        time_to_resume = time.monotonic() - killed_at
        assert all(not p.problem for p in followed + replaced), \
            f"after killing {victim} at step {last_step} (replaced by {[p.name for p in replaced]}):\n" + report(followed + replaced)
        resumed_kill = resume_steps(r, job, at_least=1)[-1]

        # 2. a hung worker, halfway past the next checkpoint: its Ray Train worker stopped (alive, no steps; the other
        # blocks in its all-reduce). Nothing exits; the platform's hang path notices the step counter (the submitter's
        # progress sidecar) and the watchdog deletes a `trn-platform/gang-restart` worker pod; KubeRay replaces it.
        watch = HangWatch(r).start()
        pods = first + replaced
        hung = r.follow_rayjob(job, pods, until=lambda: midway_past_a_checkpoint(shared, run, after=resumed_kill))
        assert all(not p.problem for p in hung), report(hung)
        stalled = train_worker_pods(r, job)[-1]
        r.signal_processes(stalled, signal.SIGSTOP, TRAIN_WORKER)
        stalled_at, last_step_hung = time.monotonic(), max(metrics_steps(shared, run))
        restart = watch.until_restart(timeout=120)
        assert max(metrics_steps(shared, run)) == last_step_hung, "steps while a worker was stopped"
        seen = len(metrics_steps(shared, run))
        again = r.recreate_worker_pods(job, index)
        followed = r.follow_rayjob(job, pods + again, until=lambda: len(metrics_steps(shared, run)) > seen)
        assert all(not p.problem for p in followed + again), f"after {restart}:\n" + report(followed + again)
        hung_to_resume = time.monotonic() - stalled_at
        done = r.follow_rayjob(job, pods + again)
        to_end = time.monotonic() - killed_at
        log = submitter_log(r, job)
    assert all(not p.problem for p in done), f"after killing {victim} at step {last_step}:\n" + report(done)
    [new] = replaced
    assert new.ready and new.name != victim and new.name.startswith(victim.rsplit("-", 1)[0] + "-"), report(replaced)
    resumes = re.findall(r"resuming at step (\d+)", log)
    assert resumes, f"no resume after killing {victim} at step {last_step}:\n{log[-3000:]}"
    resumed = int(resumes[0])
    assert resumed >= saved > 0, log[-3000:]
    resumed_hung = int(resumes[-1])
    assert resumed == resumed_kill and len(resumes) >= 2 and resumed_hung > resumed_kill, log[-3000:]
    assert restart.pod.startswith(victim.rsplit("-", 1)[0] + "-") and any("hung: deleted pod" in x for x in restart.lines)
    steps_lost, steps_lost_hung = last_step - resumed, last_step_hung - resumed_hung
    print(f"ray recovery (killed worker): killed {victim} at step {last_step}, resumed from {resumed}, steps lost "
          f"{steps_lost}, time to resume {time_to_resume:.1f}s (replacement pod joined after {replaced_in:.1f}s); "
          f"first checkpoint {to_checkpoint:.1f}s after the cluster was asked for")
    print(f"ray recovery (hung worker): stopped {stalled}'s Ray Train worker at step {last_step_hung}, the watchdog "
          f"deleted {restart.pod} after {restart.at - stalled_at:.1f}s, resumed from {resumed_hung}, steps lost "
          f"{steps_lost_hung}, time to resume {hung_to_resume:.1f}s; completion {to_end:.1f}s after the kill")
    assert 0 <= steps_lost <= run["checkpoint_interval"], log[-3000:]
    assert 0 <= steps_lost_hung <= run["checkpoint_interval"], log[-3000:]
    assert metrics_steps(shared, run)[-1] == run["steps"]
    assert registered_step(shared, run) == run["steps"]


def submitter_log(r: Rehearsal, job: dict) -> str:
    """The train RayJob's submitter log (`ray job logs --follow`: the driver's and the workers' output)."""
    name = job["metadata"]["name"]
    logs = [p for p in (r.work / "pods").glob(f"{name}-*/ray-job-submitter.log") if "-head-" not in p.parent.name]
    return "".join(p.read_text(errors="replace") for p in logs)


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
