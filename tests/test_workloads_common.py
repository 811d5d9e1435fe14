"""What every workload shares (workloads/common.py, workloads/platform.py), tested as pure
functions: the platform outputs as a workload reads them, pod templates, resources, env.
The platform values are built with the platform's own exporter (`pool_scheduling`), so a
change to what the platform exports that a workload cannot read fails here first."""
from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import load_stack_file
from infra.nodepools import NEURON_TAINT, pool_scheduling, rendered_daemonset_pods
from trnctl.validation import validate_objects
from workloads import common
from workloads.errors import WorkloadConfigError
from workloads.platform import REQUIRED_OUTPUTS, parse_platform_outputs
from workloads.ray_pretrain import gang_resources, worker_resources

ROOT = Path(__file__).resolve().parents[1]


def platform_values(stack: str = "dev-usw2") -> dict:
    cfg = load_stack_file(ROOT, stack)
    return {
        "clusterName": cfg.cluster_name, "region": cfg.region, "kubernetesVersion": cfg.kubernetes_version,
        "identityMode": cfg.identity, "oidcProviderArn": "arn:aws:iam::111122223333:oidc-provider/x",
        "oidcIssuer": "oidc.eks.us-west-2.amazonaws.com/id/X",
        "nodePools": {p.name: pool_scheduling(p, daemonset_pods=rendered_daemonset_pods(cfg)) for p in cfg.node_pools},
        "sharedStorage": {"pvcName": cfg.fsx.pvc_name, "namespace": cfg.fsx.pvc_namespace,
                          "mountPath": cfg.fsx.mount_path},
        "workloadNamespace": cfg.fsx.pvc_namespace,
        "ecrRepositories": {"compile": "111122223333.dkr.ecr.us-west-2.amazonaws.com/trn/compile"},
        "artifactsBucket": "trn-artifacts", "artifactsBucketArn": "arn:aws:s3:::trn-artifacts",
        "volcanoQueue": "ml-default", "neuronSchedulerName": "neuron-scheduler", "neuronSdkVersion": "2.26.1",
    }


# The kubeconfig is only carried through (a secret Output in a real program); a plain stand-in
# keeps these tests free of the Pulumi runtime and its event loop.
KUBECONFIG = "kubeconfig-output"


@pytest.fixture
def platform():
    return parse_platform_outputs("org/trn-platform/dev-usw2", platform_values(), KUBECONFIG)


def test_every_required_output_is_read_and_a_missing_one_is_named():
    values = platform_values()
    assert set(REQUIRED_OUTPUTS) - {"kubeconfig"} == set(values)
    del values["volcanoQueue"], values["nodePools"]
    with pytest.raises(WorkloadConfigError, match="lacks outputs nodePools, volcanoQueue; run `pulumi up`"):
        parse_platform_outputs("org/trn-platform/dev-usw2", values, KUBECONFIG)


def test_pool_lookup_errors_name_the_key_and_the_allowed_pools(platform):
    assert platform.pool("trn1-efa", key="nemo.pool", accelerator=True).efa_per_node == 8
    with pytest.raises(WorkloadConfigError, match=r"nemo.pool: pool 'trn2' does not exist .*allowed values: "
                                                  r"cpu, inf2, trn1-efa, trn1-single"):
        platform.pool("trn2", key="nemo.pool")
    with pytest.raises(WorkloadConfigError, match=r"nemo.pool: pool 'cpu' is a CPU pool; allowed values: "
                                                  r"inf2, trn1-efa, trn1-single"):
        platform.pool("cpu", key="nemo.pool", accelerator=True)


def test_pod_spec_takes_selection_and_storage_from_the_platform_and_validates(platform):
    pool = platform.pool("trn1-efa", key="k")
    paths = common.Paths(mount=platform.storage.mount_path, stack="nemo-pretrain-usw2", run_id="r1")
    c = common.container(name="train", image="repo/nemo@sha256:" + "a" * 64, command=["python3", "-m", "x"],
                         env=common.common_env(platform, paths, neuron=True, hf_secret="nemo-hf-token"),
                         resources=common.resources_for(pool, neuron_devices=16, efa=8, cpu="120", memory="480Gi"),
                         mount_path=platform.storage.mount_path, efa=True)
    spec = common.pod_spec(platform=platform, pool=pool, containers=[c], service_account="nemo",
                           restart_policy="Never", run_config="nemo-run-0a1b2c3d")
    assert spec["nodeSelector"] == pool.node_selector == {"trn-platform/pool": "trn1-efa"}
    assert any(t["key"] == NEURON_TAINT["key"] and t["operator"] == "Exists" for t in spec["tolerations"])
    assert spec["nodeSelector"] is not pool.node_selector  # a copy: one pod's edits never leak into another
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[common.SHARED_VOLUME]["persistentVolumeClaim"] == {"claimName": "fsx-shared"}
    assert volumes[common.SHM_VOLUME]["emptyDir"]["medium"] == "Memory"
    assert volumes[common.RUN_CONFIG_VOLUME]["configMap"] == {"name": "nemo-run-0a1b2c3d"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {common.SHARED_VOLUME: "/shared", common.SHM_VOLUME: "/dev/shm",
                      common.RUN_CONFIG_VOLUME: common.RUN_CONFIG_DIR}
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["fsGroup"] == 1000
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}  # EFA pins memory
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ml-shared"}, "spec": spec}
    report = validate_objects([("pod", pod)], platform.kubernetes_version)
    assert report.ok, "\n".join(map(str, report.issues))


def test_device_requests_equal_limits_and_cpu_pods_ask_for_no_devices(platform):
    pool = platform.pool("trn1-single", key="k")
    res = common.resources_for(pool, neuron_devices=1, cpu="6", memory="24Gi", cpu_limit="8")
    assert res["requests"]["aws.amazon.com/neuron"] == res["limits"]["aws.amazon.com/neuron"] == "1"
    assert res["requests"]["memory"] == res["limits"]["memory"]
    assert res["limits"]["cpu"] == "8" and res["requests"]["cpu"] == "6"
    cpu = common.resources_for(platform.pool("cpu", key="k"), cpu="2", memory="8Gi")
    assert set(cpu["requests"]) == set(cpu["limits"]) == {"cpu", "memory"}


def test_common_env_takes_the_token_from_the_secret_and_neuron_settings_only_on_neuron(platform):
    paths = common.Paths(mount="/shared", stack="s", run_id="r")
    neuron = {e["name"]: e for e in common.common_env(platform, paths, neuron=True, hf_secret="s-hf-token")}
    assert neuron["HF_TOKEN"] == {"name": "HF_TOKEN",
                                  "valueFrom": {"secretKeyRef": {"name": "s-hf-token", "key": common.HF_TOKEN_KEY}}}
    assert neuron["NEURON_COMPILE_CACHE_URL"]["value"] == paths.neuron_cache == "/shared/neuron-cache"
    assert neuron["TRN_BACKEND"]["value"] == "neuron"
    assert neuron["RUN_DIR"]["value"] == "/shared/runs/s/r"
    cpu = {e["name"]: e for e in common.common_env(platform, paths, neuron=False, hf_secret=None)}
    assert "HF_TOKEN" not in cpu and "NEURON_CC_FLAGS" not in cpu and cpu["TRN_BACKEND"]["value"] == "cpu"


def test_device_check_names_the_key_and_the_range(platform):
    problems: list[str] = []
    common.check_devices(platform.pool("inf2", key="k"), 2, "compile.neuronDevices", problems)
    assert problems == ["compile.neuronDevices: 2 Neuron devices do not fit pool 'inf2' "
                        "(inf2.xlarge, inf2.8xlarge: 1 to 1 per node)"]
    problems.clear()
    common.check_devices(platform.pool("trn1-efa", key="k"), 16, "k", problems)
    assert problems == []


def test_image_reference_prefers_the_digest():
    repo = "111122223333.dkr.ecr.us-west-2.amazonaws.com/trn/compile"
    assert common.image_reference(repo, "v1.2.0", None) == f"{repo}:v1.2.0"
    assert common.image_reference(repo, "v1.2.0", "sha256:" + "b" * 64) == f"{repo}@sha256:{'b' * 64}"


def test_build_args_take_the_one_sdk_pin():
    from infra import versions
    pin = versions.neuron_sdk()
    assert common.build_args("serve")["BASE_IMAGE"] == pin["base_images"]["inference"]
    assert common.build_args("nemo")["BASE_IMAGE"] == pin["base_images"]["training"]
    assert {common.build_args(d)["NEURON_SDK_VERSION"] for d in ("serve", "nemo")} == {pin["neuron_sdk"]}


def test_ray_gang_fits_its_nodes_and_the_queue_covers_it_exactly(platform):
    pool = platform.pool("trn1-efa", key="k")
    worker = worker_resources(pool)["requests"]
    # exactly what Karpenter's first trn1.32xlarge offers after kube-reserved, VM overhead and the DaemonSets
    assert worker["cpu"] == str(pool.schedulable_millicpu_per_node // 1000) == "127"
    assert worker["memory"] == f"{pool.schedulable_memory_mib_per_node}Mi"
    assert pool.schedulable_memory_mib_per_node < 512 * 1024 * (1 - 0.075)
    assert worker["aws.amazon.com/neuron"] == "16" and worker["vpc.amazonaws.com/efa"] == "8"
    gang = gang_resources(pool, workers=4)
    assert gang["aws.amazon.com/neuron"] == "64" and gang["vpc.amazonaws.com/efa"] == "32"
    # the head's requests plus four workers', to the millicore and the MiB
    assert gang["cpu"] == str(4 + 4 * 127)
    assert gang["memory"] == f"{16 * 1024 + 4 * pool.schedulable_memory_mib_per_node}Mi"


def test_wait_annotations_bound_the_wait():
    assert common.wait_for("jsonpath={.status.jobStatus}=SUCCEEDED", 3600) == {
        "pulumi.com/waitFor": "jsonpath={.status.jobStatus}=SUCCEEDED", "pulumi.com/timeoutSeconds": "3600"}


def test_workload_programs_take_the_await_rules_from_the_provider_module_not_the_validator():
    """workloads/common.py sets its waits from trnctl/operators/pulumi_kubernetes.py; the validator
    (trnctl.cluster) is never loaded by a workload program."""
    import subprocess
    import sys
    code = ("import sys; from workloads import common; "
            "common.job_await(60); common.rollout_await({'name': 'c'}); common.wait_for('condition=Ready', 60); "
            "print(sorted(m for m in sys.modules if m.startswith('trnctl.cluster')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=str(common.REPO_ROOT))
    assert out.stdout.strip() == "[]", out.stdout
    from trnctl.operators import pulumi_kubernetes
    assert common.job_await(60) == {pulumi_kubernetes.TIMEOUT_ANNOTATION: "60"}
    assert common.rollout_await({"name": "c"}) == {
        pulumi_kubernetes.TIMEOUT_ANNOTATION: str(pulumi_kubernetes.PROVISIONING_ALLOWANCE_SECONDS)}
