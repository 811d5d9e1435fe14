"""The NeMo-style pretraining stack: data Job -> precompile MPIJob -> training MPIJob, on
the platform's EFA pool, checked by the launcher's own RunConfig."""
from __future__ import annotations

import json

import pytest

from tests.platform_helpers import (assert_rejected_before_any_resource, rendered_platform, rendered_workload,
                                    stack_config, with_setting)
from workloads.errors import WorkloadConfigError

STACK = "nemo-pretrain-usw2"
MPIJOB = "kubernetes:kubeflow.org/v2beta1:MPIJob"


def mpijob(result, suffix: str):
    return next(r for r in result.by_type(MPIJOB) if r.inputs["metadata"]["name"].endswith(suffix))


def test_workers_take_whole_efa_nodes_of_the_platform_pool():
    pool = rendered_platform("dev-usw2").outputs["nodePools"]["trn1-efa"]
    train = mpijob(rendered_workload(STACK), "-train").inputs["spec"]
    workers = train["mpiReplicaSpecs"]["Worker"]
    assert workers["replicas"] == 4  # llama2-7b preset
    pod = workers["template"]["spec"]
    assert pod["nodeSelector"] == pool["nodeSelector"] and pod["tolerations"] == pool["tolerations"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["aws.amazon.com/neuron"] == str(pool["neuronDevicesPerNode"]) == "16"
    assert limits["vpc.amazonaws.com/efa"] == str(pool["efaPerNode"]) == "8"
    assert "IPC_LOCK" in pod["containers"][0]["securityContext"]["capabilities"]["add"]
    launcher = train["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    assert launcher["nodeSelector"] == rendered_platform("dev-usw2").outputs["nodePools"]["cpu"]["nodeSelector"]
    command = launcher["containers"][0]["command"]
    # the launcher takes rank 0's host from its hostfile, then execs mpirun (trn_workloads.nemo.mpirun)
    assert command[:6] == ["python", "-m", "trn_workloads.nemo.mpirun", "--nodes", "4", "--"]
    assert command[-6:] == ["python", "-m", "trn_workloads.nemo.launch", "--config", "/etc/run/run.json", "--mode"] \
        or command[-7:-1] == ["python", "-m", "trn_workloads.nemo.launch", "--config", "/etc/run/run.json", "--mode"]
    assert command[-1] == "train"


def test_steps_are_ordered_data_then_precompile_then_train():
    result = rendered_workload(STACK)
    data = result.by_type("kubernetes:batch/v1:Job")[0]
    pre, train = mpijob(result, "-precompile"), mpijob(result, "-train")
    assert data.urn in pre.depends_on and pre.urn in train.depends_on
    assert pre.inputs["metadata"]["annotations"]["pulumi.com/waitFor"] == "condition=Succeeded"
    assert pre.inputs["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["command"][-1] == "precompile"


def test_run_config_is_the_launchers_with_platform_facts():
    result = rendered_workload(STACK)
    platform = rendered_platform("dev-usw2").outputs
    run = json.loads(result.by_type("kubernetes:core/v1:ConfigMap")[0].inputs["data"]["run.json"])
    assert run["neuron_cores_per_node"] == platform["nodePools"]["trn1-efa"]["neuronCoresPerNode"]
    assert run["efa_per_node"] == 8 and run["nodes"] == 4 and run["preset"] == "llama2-7b"
    mount = platform["sharedStorage"]["mountPath"]
    assert run["run_dir"] == f"{mount}/runs/{STACK}/v1-0-0"
    assert run["compile_cache"] == f"{mount}/neuron-cache"
    data_cmd = result.by_type("kubernetes:batch/v1:Job")[0].inputs["spec"]["template"]["spec"]["containers"][0]["command"]
    prefix = data_cmd[data_cmd.index("--output-prefix") + 1]
    assert run["dataset_prefix"] == f"{prefix}_text_document"
    assert data_cmd[data_cmd.index("--save-tokenizer") + 1] == run["tokenizer"]


def test_tensorboard_is_cluster_internal():
    result = rendered_workload(STACK)
    service = result.by_type("kubernetes:core/v1:Service")[0].inputs
    assert service["spec"]["type"] == "ClusterIP"
    assert "port-forward" in result.outputs["tensorboard"]
    assert "neuron-top" in result.outputs["neuronTop"]


BASE = stack_config("workloads", STACK)


def changed(key: str, value) -> dict:
    return with_setting(BASE, "trn-workloads:nemo", key, value)


BAD = {
    "more nodes than the pool": (changed("run.nodes", 8), "nemo.run.nodes: 8 nodes exceed the pool limit of 4"),
    "tensor parallel not allowed": (changed("run.tensor_parallel_size", 3),
                                    "nemo.run.tensor_parallel_size: must be one of 1, 2, 4, 8, 16, 32, got 3"),
    "global batch not divisible": (changed("run.global_batch_size", 250),
                                   "nemo.run.global_batch_size: 250 must be divisible by micro_batch_size * "
                                   "data-parallel degree = 1 * 16 = 16"),
    "stack-owned key": (changed("run.run_dir", "/tmp"), "nemo.run.run_dir: set by the stack"),
    "pool without efa": (changed("pool", "trn1-single"), "nemo.pool: 'trn1-single' has no EFA"),
    "cpu pool for data must be cpu": (changed("data.pool", "inf2"), "nemo.data.pool: pool 'inf2' is an accelerator pool"),
    "no inputs": (changed("data.inputs", []), None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_nemo_config_fails_before_any_resource(case, tmp_path):
    cfg, expected = BAD[case]
    if case == "no inputs":
        cfg["trn-workloads:nemo"]["data"].pop("inputs")
        expected = "nemo.data.inputs: required key is missing"
    assert_rejected_before_any_resource(tmp_path, "workloads", cfg, expected, WorkloadConfigError)
