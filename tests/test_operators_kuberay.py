"""trnctl.operators.kuberay over the rendered ray-pretrain stack: the pods, Services and submitter Job KubeRay
v1.7.0 makes of our RayJobs, the `ray start` / `ray job submit` commands run through a real bash, and what KubeRay
refuses under the platform's Volcano batch scheduler."""
from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest

from infra import versions
from tests.operator_helpers import context, objects, one
from trnctl.operators import Context, controller_for
from trnctl.operators import kuberay

STACK = "ray-pretrain-usw2"

# A `ray` that prints its argv NUL-separated (so the test sees exactly the words bash passed) and fails
# `ray job status` (a job not yet submitted), as the submitter's command expects.
RAY_STUB = """#!/bin/sh
if [ "$1" = job ] && [ "$2" = status ]; then exit 1; fi
printf 'ray\\0'; for a in "$@"; do printf '%s\\0' "$a"; done; printf '\\n'
"""
PYTHON_STUB = "#!/bin/sh\nexit 0\n"  # the submitter's dashboard health check: healthy


def run_in_bash(pod_container: dict, tmp_path: Path) -> list[list[str]]:
    """Run a container's `/bin/bash -c` command (as KubeRay sets it) with stub `ray`/`python`; the argv of every
    `ray` invocation, as bash passed it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("ray", RAY_STUB), ("python", PYTHON_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    command = pod_container["command"] + pod_container["args"]
    assert command[0] == "/bin/bash" and command[1] in ("-c", "-ce") and command[2] == "--"
    out = subprocess.run(["bash", command[1], command[3]], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    return [line.split("\0")[:-1] for line in out.stdout.splitlines() if line.startswith("ray\0")]


def rayjob(step: str, objs: list[dict] | None = None) -> dict:
    return one(objects(STACK) if objs is None else objs, "RayJob", f"-{step}")


def ray_container(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


def test_module_is_for_the_pinned_version():
    assert kuberay.VERSION == f"v{versions.KUBERAY_VERSION}"
    assert controller_for(rayjob("train")) is kuberay


def test_platform_runs_kuberay_with_volcano():
    assert context(STACK).kuberay_batch_scheduler == "volcano"


@pytest.mark.parametrize("step", ["data", "precompile", "train"])
def test_worker_ray_start_gets_one_resources_argument_through_bash(step, tmp_path):
    """Issue 20 defect 1: the worker's `ray start`, as KubeRay builds it and bash runs it, gets the Neuron cores
    as one `--resources` argument holding valid JSON."""
    pods = kuberay.pods(rayjob(step), context(STACK))
    workers = [p for p in pods if p["metadata"]["labels"].get(kuberay.NODE_TYPE_LABEL) == "worker"]
    assert len(workers) == 2
    for worker in workers:
        [argv] = run_in_bash(ray_container(worker), tmp_path)
        assert argv[:2] == ["ray", "start"]
        resources = [a for a in argv if a.startswith("--resources")]
        assert len(resources) == 1 and json.loads(resources[0].split("=", 1)[1]) == {"neuron_cores": 32}
        assert not [a for a in argv if not a.startswith("--") and a not in ("ray", "start")], argv
    assert kuberay.start_param_problems(rayjob(step)) == []


def test_unquoted_json_resources_are_split_by_bash(tmp_path):
    """The defect put back: the value json.dumps writes by default reaches `ray start` as two words without
    quotes, which `ray start` rejects ("Got unexpected extra argument (32})")."""
    job = rayjob("train")
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["resources"] = json.dumps({"neuron_cores": 32})
    worker = [p for p in kuberay.pods(job, context(STACK)) if "worker" in p["metadata"]["name"]][0]
    [argv] = run_in_bash(ray_container(worker), tmp_path)
    assert "--resources={neuron_cores:" in argv and "32}" in argv
    [problem] = kuberay.start_param_problems(job)
    assert "ray-pretrain-usw2-train" in problem and "'resources'" in problem and "common/pod.go" in problem


def test_kuberay_adds_neuron_cores_only_for_the_neuroncore_resource():
    """KubeRay maps `aws.amazon.com/neuroncore` limits to a quoted `neuron_cores` resource, not
    `aws.amazon.com/neuron` (devices): our worker group states the cores itself."""
    job = rayjob("train")
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    del group["rayStartParams"]["resources"]
    container = group["template"]["spec"]["containers"][0]
    cluster = kuberay.rayjob_cluster(job, context(STACK))
    assert "resources" not in kuberay.complete_start_params(cluster, group, container, context(STACK))
    container["resources"]["limits"]["aws.amazon.com/neuroncore"] = "32"
    assert kuberay.complete_start_params(cluster, group, container, context(STACK))["resources"] == "'{\"neuron_cores\":32}'"


def test_rayjob_cluster_pods_as_kuberay_builds_them():
    ctx = context(STACK)
    job = rayjob("train")
    cluster = kuberay.rayjob_cluster(job, ctx)
    name = cluster["metadata"]["name"]
    assert name.startswith("ray-pretrain-usw2-train-") and len(name) == len("ray-pretrain-usw2-train-") + 5
    assert cluster["metadata"]["labels"][kuberay.ORIGINATED_FROM_NAME_LABEL] == "ray-pretrain-usw2-train"
    pods = kuberay.pods(job, ctx)
    head = [p for p in pods if p["metadata"]["labels"].get(kuberay.NODE_TYPE_LABEL) == "head"]
    workers = [p for p in pods if p["metadata"]["labels"].get(kuberay.NODE_TYPE_LABEL) == "worker"]
    submitters = [p for p in pods if kuberay.NODE_TYPE_LABEL not in p["metadata"]["labels"]]
    assert (len(head), len(workers), len(submitters)) == (1, 2, 1)
    fqdn = f"{name}-head-svc.ml-shared.svc.cluster.local"
    for pod in head + workers:
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"][kuberay.CLUSTER_LABEL] == name and meta["labels"][kuberay.IS_RAY_NODE_LABEL] == "yes"
        # Volcano gang: one PodGroup named after the RayJob, in the stack's queue
        assert meta["annotations"][kuberay.VOLCANO_GROUP_ANNOTATION] == "ray-ray-pretrain-usw2-train-pg"
        assert meta["labels"][kuberay.VOLCANO_QUEUE_LABEL] == "ray-pretrain-usw2-gang"
        assert spec["schedulerName"] == "volcano"
        ports = {p["name"]: p["containerPort"] for p in ray_container(pod)["ports"]}
        assert ports["metrics"] == kuberay.METRICS_PORT == 8080
        env = {e["name"]: e.get("value") for e in ray_container(pod)["env"]}
        assert env["RAY_PORT"] == "6379" and env["KUBERAY_GEN_RAY_START_CMD"].startswith("ray start")
    head_env = {e["name"]: e.get("value") for e in ray_container(head[0])["env"]}
    assert head_env["RAY_ADDRESS"] == "127.0.0.1:6379"
    assert head[0]["metadata"]["annotations"][kuberay.VOLCANO_TASK_SPEC_ANNOTATION] == "headgroup"
    for worker in workers:
        env = {e["name"]: e.get("value") for e in ray_container(worker)["env"]}
        assert env["RAY_ADDRESS"] == f"{fqdn}:6379" and env["FQ_RAY_IP"] == fqdn
        [init] = worker["spec"]["initContainers"]
        assert init["name"] == "wait-gcs-ready" and f"ray health-check --address {fqdn}:6379" in init["args"][0]
        assert f"--address={fqdn}:6379" in ray_container(worker)["args"][0]
        assert worker["metadata"]["annotations"][kuberay.VOLCANO_TASK_SPEC_ANNOTATION] == "trn1-efa"


def test_head_services_select_the_head_with_dashboard_and_metrics():
    ctx = context(STACK)
    job = rayjob("train")
    cluster_svc, job_svc = kuberay.services(job, ctx)
    assert job_svc["metadata"]["name"] == kuberay.rayjob_service_name("ray-pretrain-usw2-train") == \
        "ray-pretrain-usw2-train-head-svc"
    head = [p for p in kuberay.pods(job, ctx) if p["metadata"]["labels"].get(kuberay.NODE_TYPE_LABEL) == "head"][0]
    for svc in (cluster_svc, job_svc):
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
        assert all(head["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        assert ports["dashboard"] == kuberay.DASHBOARD_PORT and ports["metrics"] == kuberay.METRICS_PORT
    assert cluster_svc["metadata"]["name"] == kuberay.head_service_name(kuberay.rayjob_cluster(job, ctx))


@pytest.mark.parametrize("step, backend", [("data", "cpu"), ("train", "neuron")])
def test_submitter_runs_ray_job_submit_against_the_head_service(step, backend, tmp_path):
    ctx = context(STACK)
    job = rayjob(step)
    submitter = kuberay.submitter_job(job, ctx)
    assert submitter["metadata"]["name"] == job["metadata"]["name"] and submitter["spec"]["backoffLimit"] == 2
    container = submitter["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == kuberay.SUBMITTER_BASH_COMMAND
    calls = run_in_bash(container, tmp_path)
    [submit] = [c for c in calls if c[1:3] == ["job", "submit"]]
    address = f"http://{kuberay.rayjob_cluster(job, ctx)['metadata']['name']}-head-svc.ml-shared.svc.cluster.local:8265"
    assert submit[submit.index("--address") + 1] == address and "--no-wait" in submit
    assert json.loads(submit[submit.index("--runtime-env-json") + 1]) == {"env_vars": {"TRN_BACKEND": backend}}
    # KubeRay pastes the entrypoint unquoted: bash splits it into words and `ray job submit` joins what follows `--`
    # (a glob such as `*.parquet` is expanded by the submitter's bash when it matches there; not here)
    assert " ".join(submit[submit.index("--") + 1:]) == job["spec"]["entrypoint"]
    [logs] = [c for c in calls if c[1:3] == ["job", "logs"]]
    assert logs[-1] == submit[submit.index("--submission-id") + 1] == kuberay.submission_id(job)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_DASHBOARD_ADDRESS"] == address.removeprefix("http://")
    pod = kuberay.pods(job, ctx)[-1]
    assert pod["metadata"]["labels"]["job-name"] == job["metadata"]["name"]  # what `followTraining` selects
    assert pod["spec"]["schedulerName"] == "volcano"


def test_todays_rayjobs_are_admitted_and_gang_scheduled():
    ctx = context(STACK)
    for step in ("data", "precompile", "train"):
        job = rayjob(step)
        assert kuberay.admission_problems(job, ctx) == []
        assert job["spec"]["shutdownAfterJobFinishes"] is True and "clusterSelector" not in job["spec"]


def test_rayjob_on_an_existing_cluster_is_refused_under_volcano():
    """Issue 20 defect 2, the old shape: a RayJob with clusterSelector and no rayClusterSpec."""
    job = rayjob("data")
    del job["spec"]["rayClusterSpec"]
    job["spec"]["clusterSelector"] = {"ray.io/cluster": "ray-pretrain-usw2"}
    [problem] = kuberay.admission_problems(job, context(STACK))
    assert "RayJob ml-shared/ray-pretrain-usw2-data" in problem and "gang scheduling does not support" in problem
    assert "batchscheduler/volcano/volcano_scheduler.go" in problem
    assert kuberay.pods(job, context(STACK)) == [] and kuberay.services(job, context(STACK)) == []
    # Without a batch scheduler KubeRay accepts it and submits to the selected cluster.
    assert kuberay.admission_problems(job, Context(kuberay_batch_scheduler=None)) == []


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("rayClusterSpec"), "one of rayClusterSpec or clusterSelector must be set"),
    (lambda s: s.update(clusterSelector={"ray.io/cluster": "c"}, submissionMode="SidecarMode"),
     "clusterSelector is not supported in SidecarMode"),
    (lambda s: s.update(activeDeadlineSeconds=0), "activeDeadlineSeconds 0 must be a positive int32"),
    (lambda s: s.update(activeDeadlineSeconds=2**31), "must be a positive int32"),
])
def test_rayjob_spec_validation(change, message):
    job = rayjob("data")
    change(job["spec"])
    assert any(message in p for p in kuberay.admission_problems(job, Context()))


def test_rayjob_name_limit():
    job = rayjob("data")
    job["metadata"]["name"] = "x" * 48
    assert any("at most 47 characters" in p for p in kuberay.admission_problems(job, Context()))


def test_standalone_raycluster_pods_and_service():
    """A plain RayCluster (no RayJob): `<cluster>-head-<5>` and `<cluster>-<group>-worker-<5>` pods, `<cluster>-head-svc`."""
    ctx = context(STACK)
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
               "metadata": {"name": "demo", "namespace": "ml-shared", "labels": {"volcano.sh/queue-name": "q"}},
               "spec": copy.deepcopy(rayjob("train")["spec"]["rayClusterSpec"])}
    pods = kuberay.pods(cluster, ctx)
    names = [p["metadata"]["name"] for p in pods]
    assert names[0].startswith("demo-head-") and all(n.startswith("demo-trn1-efa-worker-") for n in names[1:])
    assert len(set(names)) == 3 and all(len(n.rsplit("-", 1)[1]) == 5 for n in names)
    assert pods[0]["metadata"]["annotations"][kuberay.VOLCANO_GROUP_ANNOTATION] == "ray-demo-pg"
    [svc] = kuberay.services(cluster, ctx)
    assert svc["metadata"]["name"] == "demo-head-svc"
    assert os.path.basename(pods[0]["spec"]["containers"][0]["command"][0]) == "bash"


@pytest.mark.parametrize("ray_version, kind", [("2.51.1", "exec"), ("2.53.0", "httpGet")])
def test_probes_follow_the_ray_version(ray_version, kind):
    job = rayjob("train")
    job["spec"]["rayClusterSpec"]["rayVersion"] = ray_version
    head = [p for p in kuberay.pods(job, context(STACK)) if "-head-" in p["metadata"]["name"]][0]
    probe = ray_container(head)["readinessProbe"]
    assert kind in probe
    if kind == "exec":  # our ray-train image checks wget is there (images/ray-train/Dockerfile)
        assert "wget" in probe["exec"]["command"][2] and "api/gcs_healthz" in probe["exec"]["command"][2]
    else:
        assert probe["httpGet"] == {"path": "/api/healthz", "port": kuberay.DASHBOARD_AGENT_LISTEN_PORT}


def worker_pods(pods: list[dict]) -> list[dict]:
    return [p for p in pods if p["metadata"]["labels"][kuberay.NODE_TYPE_LABEL] == "worker"]


def test_a_lost_worker_pod_is_replaced_under_a_new_generated_name():
    """KubeRay v1.7.0 reconcilePods: a worker group one pod short gets one new pod from its template, named
    `<cluster>-<group>-worker-<rand5>` (generateName), never the lost pod's name; a full group gets none."""
    ctx = context(STACK)
    cluster = kuberay.rayjob_cluster(rayjob("train"), ctx)
    pods = kuberay.cluster_pods(cluster, ctx)
    head, (lost, kept) = pods[0], worker_pods(pods)
    assert kuberay.replacement_worker_pods(cluster, pods, ctx) == []
    [new] = kuberay.replacement_worker_pods(cluster, [head, kept], ctx, taken={lost["metadata"]["name"]})
    group = cluster["spec"]["workerGroupSpecs"][0]["groupName"]
    prefix = f"{cluster['metadata']['name']}-{group}-worker-"
    name = new["metadata"]["name"]
    assert name.startswith(prefix) and len(name) == len(prefix) + 5 and name not in {lost["metadata"]["name"],
                                                                                   kept["metadata"]["name"]}
    # the same pod as the group's others but for its name: template labels (the gang-restart label), the ray start
    assert new["metadata"]["labels"] == kept["metadata"]["labels"]
    assert ray_container(new)["args"] == ray_container(kept)["args"]
    # both lost: two new pods, distinct names
    both = kuberay.replacement_worker_pods(cluster, [head], ctx, taken={p["metadata"]["name"] for p in pods})
    assert len({p["metadata"]["name"] for p in both}) == 2


def test_desired_worker_replicas_adhere_to_min_and_max():
    """utils.GetWorkerGroupDesiredReplicas: replicas clamped to [minReplicas, maxReplicas], x numOfHosts; 0 suspended."""
    assert kuberay.desired_worker_replicas({"replicas": 5, "minReplicas": 1, "maxReplicas": 3}) == 3
    assert kuberay.desired_worker_replicas({"replicas": 0, "minReplicas": 2, "maxReplicas": 3}) == 2
    assert kuberay.desired_worker_replicas({"replicas": 2, "numOfHosts": 2}) == 4
    assert kuberay.desired_worker_replicas({"replicas": 2, "suspend": True}) == 0


def test_a_failed_train_rayjob_is_retried_up_to_its_backoff_limit():
    """The resubmission path: the train RayJob's backoffLimit (workloads/ray_pretrain.py TRAIN_RESUBMISSIONS) is how
    many times KubeRay retries a failed Ray job on a new cluster; the other steps are never retried (CRD default 0),
    nor is a RayJob past its deadline."""
    from workloads.ray_pretrain import TRAIN_RESUBMISSIONS
    train = rayjob("train")
    assert train["spec"]["backoffLimit"] == TRAIN_RESUBMISSIONS >= 1
    assert [kuberay.retries_failed_rayjob(train, failed) for failed in range(TRAIN_RESUBMISSIONS + 1)] == \
        [True] * TRAIN_RESUBMISSIONS + [False]
    assert not kuberay.retries_failed_rayjob(train, 0, reason="DeadlineExceeded")
    assert not kuberay.retries_failed_rayjob(rayjob("data"), 0)
