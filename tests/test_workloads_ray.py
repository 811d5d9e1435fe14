"""The Ray Train stack: a Volcano-gang RayCluster on the platform's pools, a Queue that
covers the gang, RayJobs ordered data -> precompile -> train."""
from __future__ import annotations

import json

import pytest

from tests.platform_helpers import (assert_rejected_before_any_resource, rendered_platform, rendered_workload,
                                    stack_config, with_setting)
from workloads.errors import WorkloadConfigError

STACK = "ray-pretrain-usw2"


def quantity(value: str) -> float:
    return float(value[:-2]) if value.endswith("Gi") else float(value.rstrip("m")) / (1000 if value.endswith("m") else 1)


def test_cluster_is_gang_scheduled_on_the_platform_pools():
    platform = rendered_platform("dev-usw2").outputs["nodePools"]
    result = rendered_workload(STACK)
    cluster = result.by_type("kubernetes:ray.io/v1:RayCluster")[0].inputs
    queue = result.by_type("kubernetes:scheduling.volcano.sh/v1beta1:Queue")[0].inputs
    assert cluster["metadata"]["labels"]["ray.io/scheduler-name"] == "volcano"
    assert cluster["metadata"]["labels"]["volcano.sh/queue-name"] == queue["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == platform["cpu"]["nodeSelector"]
    group = cluster["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    worker = group["template"]["spec"]
    assert worker["nodeSelector"] == platform["trn1-efa"]["nodeSelector"]
    assert worker["tolerations"] == platform["trn1-efa"]["tolerations"]
    limits = worker["containers"][0]["resources"]["limits"]
    assert limits["aws.amazon.com/neuron"] == "16" and limits["vpc.amazonaws.com/efa"] == "8"
    assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in worker["volumes"])
    assert json.loads(group["rayStartParams"]["resources"]) == {"neuron_cores": 32}


def test_queue_capacity_covers_the_whole_gang():
    result = rendered_workload(STACK)
    cluster = result.by_type("kubernetes:ray.io/v1:RayCluster")[0].inputs["spec"]
    capability = result.by_type("kubernetes:scheduling.volcano.sh/v1beta1:Queue")[0].inputs["spec"]["capability"]
    pods = [(1, cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(g["replicas"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    for resource in ("cpu", "memory", "aws.amazon.com/neuron", "vpc.amazonaws.com/efa"):
        needed = sum(n * quantity(c["resources"]["requests"].get(resource, "0")) for n, spec in pods
                     for c in spec["containers"])
        assert quantity(capability[resource]) >= needed, resource


def test_jobs_run_in_order_against_the_cluster():
    result = rendered_workload(STACK)
    cluster = result.by_type("kubernetes:ray.io/v1:RayCluster")[0]
    jobs = {r.inputs["metadata"]["name"].rsplit("-", 1)[-1]: r for r in result.by_type("kubernetes:ray.io/v1:RayJob")}
    assert set(jobs) == {"data", "precompile", "train"}
    assert cluster.urn in jobs["data"].depends_on
    assert jobs["data"].urn in jobs["precompile"].depends_on and jobs["precompile"].urn in jobs["train"].depends_on
    for job in jobs.values():
        assert job.inputs["spec"]["clusterSelector"] == {"ray.io/cluster": cluster.inputs["metadata"]["name"]}
    assert jobs["precompile"].inputs["spec"]["entrypoint"].endswith("--precompile")
    assert "TRN_BACKEND: neuron" in jobs["train"].inputs["spec"]["runtimeEnvYAML"]
    assert jobs["data"].inputs["metadata"]["annotations"]["pulumi.com/waitFor"] == \
        "jsonpath={.status.jobDeploymentStatus}=Complete"


def test_run_config_has_one_worker_per_neuron_core():
    result = rendered_workload(STACK)
    run = json.loads(result.by_type("kubernetes:core/v1:ConfigMap")[0].inputs["data"]["run.json"])
    assert run["num_workers"] == 2 * 32 and run["tensor_parallel_size"] == 8
    assert run["data_dir"].startswith("/shared/data/") and run["run_name"] == "v1-0-0"
    assert "port-forward" in result.outputs["rayDashboard"]


BASE = stack_config("workloads", STACK)


def changed(key: str, value) -> dict:
    return with_setting(BASE, "trn-workloads:ray", key, value)


BAD = {
    "more workers than the pool": (changed("workers", 5), "ray.workers: 5 worker nodes exceed pool 'trn1-efa' limit of 4 nodes"),
    "stack-owned key": (changed("run.num_workers", 8), "ray.run.num_workers: set by the stack"),
    "unknown model": (changed("run.model", "llama9"), "ray.run.model: must be one of ['llama2-7b', 'tiny'], got 'llama9'"),
    "head on an accelerator pool": (changed("headPool", "inf2"), "ray.headPool: pool 'inf2' is an accelerator pool"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ray_config_fails_before_any_resource(case, tmp_path):
    cfg, expected = BAD[case]
    assert_rejected_before_any_resource(tmp_path, "workloads", cfg, expected, WorkloadConfigError)
