"""trnctl.operators.volcano over the rendered titan-pretrain stack: the pods, env, /etc/volcano files, Service and
NetworkPolicy Volcano v1.15.1's job controller and plugins make of our Volcano Job, and what its webhook refuses."""
from __future__ import annotations

import pytest

from infra import versions
from tests.operator_helpers import context, objects, one
from tests.platform_helpers import rendered_platform
from trnctl.operators import all_config_objects, controller_for, dns_records, volcano
from trnctl.operators.kubernetes import container_env, container_mounts

STACK = "titan-pretrain-use2"
NS = "ml-shared"


def vcjob(objs: list[dict] | None = None) -> dict:
    return one(objects(STACK) if objs is None else objs, "Job", "-train")


def platform_objects() -> list[dict]:
    return [o for _, o in rendered_platform("dev-trn2-use2").manifests]


def test_module_is_for_the_pinned_version():
    assert volcano.VERSION == versions.VOLCANO_VERSION
    assert controller_for(vcjob()) is volcano


def test_todays_job_is_admitted_into_an_existing_open_queue():
    assert volcano.admission_problems(vcjob(), context(STACK), objects(STACK) + platform_objects()) == []


def test_pods_get_rank_world_and_master_from_the_pytorch_plugin():
    ctx = context(STACK)
    objs = objects(STACK)
    job = vcjob(objs)
    name = job["metadata"]["name"]
    pods = volcano.pods(job, ctx)
    tasks = {t["name"]: int(t["replicas"]) for t in job["spec"]["tasks"]}
    world = sum(tasks.values())
    assert [p["metadata"]["name"] for p in pods] == [f"{name}-{t}-{i}" for t, n in tasks.items() for i in range(n)]
    config = all_config_objects(objs, ctx)
    records = dns_records(objs, ctx)
    ranks = []
    for pod in pods:
        container = pod["spec"]["containers"][0]
        env = container_env(pod, container, config + objs)
        assert env["MASTER_ADDR"] == f"{name}-master-0.{name}" and env["MASTER_PORT"] == "23456"
        assert env["WORLD_SIZE"] == str(world) and "VC_TASK_INDEX" not in env  # no env plugin in our job
        assert env["VC_MASTER_HOSTS"] == f"{name}-master-0.{name}" and env["VC_MASTER_NUM"] == "1"
        ranks.append(int(env["RANK"]))
        assert pod["spec"]["hostname"] == pod["metadata"]["name"] and pod["spec"]["subdomain"] == name
        assert pod["spec"]["schedulerName"] == "volcano"
        labels = pod["metadata"]["labels"]
        assert labels[volcano.JOB_NAME_KEY] == name and labels[volcano.QUEUE_NAME_KEY] == job["spec"]["queue"]
        files = {f"{m.path}/{f.path}" for m in container_mounts(pod, container, config, None) if m.kind == "files"
                 for f in m.files}
        assert f"{volcano.SVC_MOUNT_PATH}/master.host" in files and f"{volcano.SVC_MOUNT_PATH}/VC_WORKER_NUM" in files
        assert any(p["containerPort"] == volcano.PYTORCH_DEFAULT_PORT for p in container["ports"])
    assert sorted(ranks) == list(range(world)) and ranks[0] == 0  # master is rank 0
    # MASTER_ADDR is a short name: it resolves in the pods' namespace to the master pod (svc plugin's Service)
    assert records[f"{name}-master-0.{name}"] == f"{name}-master-0"
    assert records[f"{name}-master-0.{name}.{NS}.svc.cluster.local"] == f"{name}-master-0"


def test_svc_plugin_service_and_network_policy():
    ctx = context(STACK)
    job = vcjob()
    [svc] = volcano.services(job, ctx)
    assert svc["metadata"]["name"] == job["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    kinds = {o["kind"]: o for o in volcano.config_objects(job, ctx)}
    assert set(kinds) == {"ConfigMap", "NetworkPolicy"}  # no ssh plugin in our job
    policy = kinds["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"][0]["from"][0]["podSelector"] == policy["podSelector"]


def test_webhook_adds_svc_to_pytorch_and_ssh_to_mpi():
    job = vcjob()
    job["spec"]["plugins"] = {"pytorch": ["--master=master", "--worker=worker"]}
    assert set(volcano.plugins(job)) == {"pytorch", "svc"}
    job["spec"]["plugins"] = {"mpi": []}
    assert set(volcano.plugins(job)) == {"mpi", "svc", "ssh"}


def test_ssh_plugin_mounts_its_keys():
    ctx = context(STACK)
    job = vcjob()
    job["spec"]["plugins"]["ssh"] = []
    pod = volcano.pods(job, ctx)[0]
    mount = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/root/.ssh"]
    assert mount and mount[0]["subPath"] == ".ssh"
    secret = [o for o in volcano.config_objects(job, ctx) if o["kind"] == "Secret"]
    assert secret and set(secret[0]["data"]) == {"id_rsa", "id_rsa.pub", "authorized_keys", "config"}


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(minAvailable=99), "minAvailable 99 is greater than"),
    (lambda s: s.update(tasks=[]), "no task specified"),
    (lambda s: s["tasks"].append(dict(s["tasks"][0])), "duplicated task name master"),
    (lambda s: s["plugins"].update(horovod=[]), "unable to find job plugin horovod"),
    (lambda s: s["plugins"].update(pytorch=["--master=chief"]), "master task 'chief' does not exist"),
    (lambda s: s.update(queue="nowhere"), "unable to find job queue 'nowhere'"),
])
def test_webhook_refuses(change, message):
    job = vcjob()
    change(job["spec"])
    problems = volcano.admission_problems(job, context(STACK), objects(STACK) + platform_objects())
    assert any(message in p for p in problems), problems
    assert volcano.pods(job, context(STACK)) == [] or "queue" in message


def test_env_plugin_gives_the_task_index():
    job = vcjob()
    job["spec"]["plugins"]["env"] = []
    for pod in volcano.pods(job, context(STACK)):
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["VC_TASK_INDEX"] == env["VK_TASK_INDEX"] == pod["metadata"]["name"].rsplit("-", 1)[1]
