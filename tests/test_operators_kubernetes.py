"""Kubernetes' built-in controllers and the kubelet (trnctl/operators/kubernetes.py), the image configs
(trnctl/operators/images.py) and the shared dispatch and DNS names (trnctl/operators/__init__.py), checked
on the rendered workload stacks: what a pod sees is derived from the rendered objects plus the cited rules."""
from __future__ import annotations

import functools
import re
import stat

import pytest

from trnctl import operators
from trnctl.operators import images, kubernetes
from trnctl.rehearse.stack import load


@functools.lru_cache(maxsize=None)
def stack(name: str):
    return load(name)


def first(objects, kind):
    return next(o for o in objects if o["kind"] == kind)


# Cases from kubernetes/kubernetes third_party/forked/golang/expansion/expand_test.go (TestExpand), a
# documented sample of the upstream behaviour used as a fixture.
EXPAND_ENV = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}
EXPAND_CASES = [
    ("$(VAR_A)", "A"), ("___$(VAR_B)___", "___B___"), ("$(VAR_REF)", "$(VAR_A)"), ("foo$(VAR_EMPTY)bar", "foobar"),
    ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"), ("$?_boo_$!", "$?_boo_$!"), ("$VAR_A", "$VAR_A"),
    ("$(VAR_DNE)", "$(VAR_DNE)"), ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"), ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"), ("$$$$$$$(VAR_A)", "$$$A"), ("${VAR_A}", "${VAR_A}"),
    ("$(VAR_B)_______$(A", "B_______$(A"), ("$(VAR_C)_______$(", "C_______$("), ("$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("--$($($($($--", "--$($($($($--"), ("$(foo$$var)", "$(foo$$var)"),
]


@pytest.mark.parametrize("text,expected", EXPAND_CASES)
def test_dollar_paren_expansion_follows_the_kubelet(text, expected):
    assert kubernetes.expand(text, EXPAND_ENV) == expected


def test_job_pod_name_labels_and_env_from_the_secret():
    s = stack("lora-finetune-usw2")
    job = first(s.objects, "Job")
    [pod] = operators.all_pods([job], s.ctx)
    name = job["metadata"]["name"]
    assert re.fullmatch(rf"{name}-[{kubernetes.SAFE_ALPHABET}]{{5}}", pod["metadata"]["name"])
    labels = pod["metadata"]["labels"]
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == name
    assert labels["controller-uid"] == labels["batch.kubernetes.io/controller-uid"]
    proc = kubernetes.container_process(pod, "finetune", s.objects, images.image_config(
        pod["spec"]["containers"][0]["image"]))
    assert proc.env["HF_TOKEN"] == "render-placeholder-secret"  # valueFrom.secretKeyRef, from the rendered Secret
    assert proc.env["PYTHONPATH"] == "/opt/workloads"  # the finetune image's ENV under the container's
    assert proc.argv == ["python", "-m", "trn_workloads.finetune", "--config", "/etc/run/run.json"]
    assert proc.workdir == "/home/finetune" and (proc.uid, proc.gid) == (1000, 1000)
    assert proc.supplemental_gids == [1000]  # fsGroup
    run = next(m for m in proc.mounts if m.path == "/etc/run")
    [f] = run.files
    assert f.path == "run.json" and stat.S_IMODE(f.mode) == 0o644 and f.gid == 1000 and run.read_only
    assert {m.path: m.kind for m in proc.mounts} == {"/shared": "pvc", "/dev/shm": "memory", "/etc/run": "files"}


def test_missing_secret_key_is_the_kubelets_config_error():
    s = stack("lora-finetune-usw2")
    job = first(s.objects, "Job")
    [pod] = kubernetes.pods(job, s.ctx)
    objects = [o for o in s.objects if o["kind"] != "Secret"]
    with pytest.raises(kubernetes.PodSpecError, match="CreateContainerConfigError"):
        kubernetes.container_process(pod, "finetune", objects, images.our_image("finetune"))


def test_deployment_pods_match_the_scaledobject_pod_regex():
    s = stack("llm-serve-usw2")
    deploy = first(s.objects, "Deployment")
    [pod] = operators.all_pods([deploy], s.ctx)
    assert pod["metadata"]["labels"][kubernetes.POD_TEMPLATE_HASH_LABEL]
    query = first(s.objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    pattern = re.search(r'pod=~"([^"]+)"', query).group(1)
    assert re.fullmatch(pattern, pod["metadata"]["name"])


def test_vllm_container_runs_in_the_dlc_workdir_as_root_unless_the_pod_says_otherwise():
    cfg = images.image_config("public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.9.1-neuronx-py311-sdk2.26.1-ubuntu22.04")
    assert cfg.workdir == "/opt/vllm" and cfg.user == ""
    s = stack("llm-serve-usw2")
    [pod] = operators.all_pods([first(s.objects, "Deployment")], s.ctx)
    container = pod["spec"]["containers"][0]
    proc = kubernetes.container_process(pod, container["name"], s.objects, cfg)
    assert proc.workdir == (container.get("workingDir") or "/opt/vllm")
    assert proc.uid == 1000  # runAsUser over the image's root
    assert proc.env["VLLM_API_KEY"] == "render-placeholder-secret"


def test_our_dockerfiles_entrypoint_cmd_user_and_code_location():
    compile_image = images.our_image("compile")
    assert compile_image.entrypoint == ("python", "-m", "trn_workloads.compile") and compile_image.cmd == ("--help",)
    assert compile_image.workdir == "/home/trn" and compile_image.uid_gid() == (1000, 1000)
    assert dict(compile_image.code) == {"/opt/trn/trn_workloads": "images/trn_workloads"}
    nemo = images.our_image("nemo")
    assert nemo.entrypoint == () and nemo.cmd[:3] == ("python3", "-m", "trn_workloads.nemo.launch")
    # ray-train sets no ENTRYPOINT: the training DLC's (aws-neuron/deep-learning-containers@2.26.1) applies
    assert images.our_image("ray-train").entrypoint == ("bash", "-m", "start_with_right_hostname.sh")


def test_args_only_keep_the_image_entrypoint_and_command_drops_cmd():
    cfg = images.ImageConfig(entrypoint=("python", "-m", "x"), cmd=("--help",), user="1000")
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"automountServiceAccountToken": False,
                                                                  "containers": [{"name": "c", "args": ["$(A)"],
                                                                                  "env": [{"name": "A", "value": "1"}]}]}}
    assert kubernetes.container_process(pod, "c", [], cfg).argv == ["python", "-m", "x", "1"]
    pod["spec"]["containers"][0] = {"name": "c", "command": ["sh"]}
    assert kubernetes.container_process(pod, "c", [], cfg).argv == ["sh"]
    pod["spec"]["containers"][0] = {"name": "c"}
    assert kubernetes.container_process(pod, "c", [], cfg).argv == ["python", "-m", "x", "--help"]


def test_service_account_token_is_mounted_unless_automount_is_off():
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [{"name": "c", "command": ["x"]}]}}
    proc = kubernetes.container_process(pod, "c", [], images.ImageConfig(user="1000"))
    [sa] = proc.mounts
    assert sa.path == kubernetes.SERVICE_ACCOUNT_MOUNT and {f.path for f in sa.files} == {"token", "namespace"}


def test_dns_names_of_services_and_headless_pods():
    s = stack("compile-usw2")
    records = operators.dns_records(s.objects, s.ctx)
    svc = first(s.objects, "Service")["metadata"]["name"]
    [serve] = operators.all_pods([first(s.objects, "Deployment")], s.ctx)
    for name in (svc, f"{svc}.ml-shared", f"{svc}.ml-shared.svc", f"{svc}.ml-shared.svc.cluster.local"):
        assert records[name] == serve["metadata"]["name"]
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "w", "namespace": "ns"},
           "spec": {"replicas": 2, "serviceName": "w", "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}}}}
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "namespace": "ns"},
                "spec": {"clusterIP": "None", "selector": {"a": "b"}}}
    records = operators.dns_records([sts, headless], s.ctx)
    assert records["w-1.w.ns.svc.cluster.local"] == records["w-1.w"] == "w-1"


def test_unknown_kind_has_no_controller_and_a_missing_module_fails_only_when_used():
    assert operators.controller_for({"apiVersion": "v1", "kind": "ConfigMap"}) is None
    assert operators.controller_for({"apiVersion": "batch/v1", "kind": "Job"}) is kubernetes


def test_an_upstream_image_is_known_only_at_the_tag_its_dockerfile_was_read():
    with pytest.raises(KeyError, match="no ENTRYPOINT/CMD/WORKDIR/USER recorded"):
        images.image_config("public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.29.0.1.2.0-neuronx-py314-sdk2.34.0-ubuntu26.04")
    titan = images.our_image("titan")  # its base (the native track's training DLC) is not pinned yet
    assert titan.workdir == "/tmp" and titan.entrypoint == () and titan.user == "1000"


def _job(restart_policy: str, backoff_limit: int | None) -> dict:
    spec = {"template": {"spec": {"restartPolicy": restart_policy, "containers": [{"name": "c", "image": "x"}]}}}
    if backoff_limit is not None:
        spec["backoffLimit"] = backoff_limit
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "launch", "namespace": "ns"}, "spec": spec}


def test_a_failed_onfailure_container_restarts_in_its_pod_until_the_restarts_reach_backoff_limit():
    """kubernetes@v1.34.0 job_controller.go pastBackoffLimitOnFailure: restartCounts summed, >= backoffLimit fails."""
    job = _job("OnFailure", 3)
    [pod] = kubernetes.job_pods(job)
    name = pod["metadata"]["name"]
    first = kubernetes.job_retry(job, name)
    assert (first.action, first.pod, first.restarts, first.failed) == ("restart-container", name, 1, 0)
    second = kubernetes.job_retry(job, name, restarts=first.restarts)
    assert second.action == "restart-container" and second.restarts == 2
    third = kubernetes.job_retry(job, name, restarts=second.restarts)
    assert third.action == "failed" and "BackoffLimitExceeded" in third.reason
    assert kubernetes.job_retry(_job("OnFailure", 0), name).action == "failed"  # backoffLimit 0: any restart


def test_a_failed_or_deleted_pod_is_replaced_by_a_new_pod_while_failures_stay_within_backoff_limit():
    """job_controller.go: isPodFailed (a deleted pod counts once Failed), failed > backoffLimit fails the Job,
    else manageJob creates a pod from generateName: a new name each time."""
    job = _job("Never", 1)
    [pod] = kubernetes.job_pods(job)
    name = pod["metadata"]["name"]
    first = kubernetes.job_retry(job, name)
    assert first.action == "new-pod" and first.failed == 1
    assert first.pod != name and first.pod.startswith("launch-") and len(first.pod) == len(name)
    assert first.pod == kubernetes.job_pods(job, attempt=1)[0]["metadata"]["name"]
    assert kubernetes.job_retry(job, first.pod, failed=first.failed).action == "failed"
    # restartPolicy OnFailure: a deleted pod (the hang watchdog's) is replaced, its restarts kept in the count
    deleted = kubernetes.job_retry(_job("OnFailure", 3), name, restarts=1, deleted=True)
    assert (deleted.action, deleted.failed, deleted.restarts) == ("new-pod", 1, 1)
    assert kubernetes.job_retry(_job("Never", None), name, failed=6).action == "failed"  # default backoffLimit 6
    assert kubernetes.job_retry(_job("Never", None), name, failed=5).action == "new-pod"
