"""The Ray Train stack: RayJobs ordered data -> precompile -> train, each with its own Volcano-gang
cluster on the platform's pools, in a Queue that covers the gang."""
from __future__ import annotations

import json

import pytest

from tests.platform_helpers import (assert_rejected_before_any_resource, rendered_platform, rendered_workload,
                                    stack_config, with_setting)
from trnctl.operators.kubernetes import quantity
from workloads.errors import WorkloadConfigError

STACK = "ray-pretrain-usw2"


def jobs_by_step(result) -> dict:
    return {r.inputs["metadata"]["name"].rsplit("-", 1)[-1]: r for r in result.by_type("kubernetes:ray.io/v1:RayJob")}


def test_each_job_brings_its_own_gang_scheduled_cluster_on_the_platform_pools():
    platform = rendered_platform("dev-usw2").outputs["nodePools"]
    result = rendered_workload(STACK)
    assert result.by_type("kubernetes:ray.io/v1:RayCluster") == []  # KubeRay creates one per RayJob
    queue = result.by_type("kubernetes:scheduling.volcano.sh/v1beta1:Queue")[0].inputs
    jobs = jobs_by_step(result)
    specs = [job.inputs["spec"]["rayClusterSpec"] for job in jobs.values()]
    assert all(spec == specs[0] for spec in specs)  # data, precompile and train run on the same shape
    for job in jobs.values():
        # the PodGroup's queue comes from the RayJob's label (kuberay v1.7.0 volcano_scheduler.go createPodGroup)
        assert job.inputs["metadata"]["labels"]["volcano.sh/queue-name"] == queue["metadata"]["name"]
        assert job.inputs["spec"]["shutdownAfterJobFinishes"] is True and "clusterSelector" not in job.inputs["spec"]
    cluster = specs[0]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == platform["cpu"]["nodeSelector"]
    group = cluster["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    worker = group["template"]["spec"]
    assert worker["nodeSelector"] == platform["trn1-efa"]["nodeSelector"]
    assert worker["tolerations"] == platform["trn1-efa"]["tolerations"]
    limits = worker["containers"][0]["resources"]["limits"]
    assert limits["aws.amazon.com/neuron"] == "16" and limits["vpc.amazonaws.com/efa"] == "8"
    assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in worker["volumes"])
    # single-quoted compact JSON: what survives KubeRay's unquoted `/bin/bash -c` (tests/test_operators_kuberay.py)
    assert group["rayStartParams"]["resources"] == "'{\"neuron_cores\":32}'"
    assert json.loads(group["rayStartParams"]["resources"].strip("'")) == {"neuron_cores": 32}


def test_queue_capacity_covers_the_whole_gang():
    result = rendered_workload(STACK)
    capability = result.by_type("kubernetes:scheduling.volcano.sh/v1beta1:Queue")[0].inputs["spec"]["capability"]
    for job in jobs_by_step(result).values():
        cluster = job.inputs["spec"]["rayClusterSpec"]
        pods = [(1, cluster["headGroupSpec"]["template"]["spec"])]
        pods += [(g["replicas"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
        for resource in ("cpu", "memory", "aws.amazon.com/neuron", "vpc.amazonaws.com/efa"):
            needed = sum(n * quantity(c["resources"]["requests"].get(resource, "0")) for n, spec in pods
                         for c in spec["containers"])
            assert quantity(capability[resource]) >= needed * (1 - 1e-12), resource  # float sums of millicores


def test_jobs_run_in_order():
    result = rendered_workload(STACK)
    queue = result.by_type("kubernetes:scheduling.volcano.sh/v1beta1:Queue")[0]
    jobs = jobs_by_step(result)
    assert set(jobs) == {"data", "precompile", "train"}
    assert queue.urn in jobs["data"].depends_on
    assert jobs["data"].urn in jobs["precompile"].depends_on and jobs["precompile"].urn in jobs["train"].depends_on
    assert jobs["precompile"].inputs["spec"]["entrypoint"].endswith("--precompile")
    assert "TRN_BACKEND: neuron" in jobs["train"].inputs["spec"]["runtimeEnvYAML"]
    assert jobs["data"].inputs["metadata"]["annotations"]["pulumi.com/waitFor"] == \
        "jsonpath={.status.jobDeploymentStatus}=Complete"


def test_run_config_has_one_worker_per_neuron_core():
    result = rendered_workload(STACK)
    run = json.loads(result.by_type("kubernetes:core/v1:ConfigMap")[0].inputs["data"]["run.json"])
    assert run["num_workers"] == 2 * 32 and run["tensor_parallel_size"] == 8
    assert run["data_dir"].startswith("/shared/data/") and run["run_name"] == "v1-0-0"


def test_dashboard_output_targets_the_train_jobs_head_service():
    """The port-forward names the Service KubeRay creates for the train RayJob, which selects its head pod."""
    from tests.operator_helpers import context, objects, one
    from trnctl.operators import kuberay, selects

    result = rendered_workload(STACK)
    train = one(objects(STACK), "RayJob", "-train")
    services = {s["metadata"]["name"]: s for s in kuberay.services(train, context(STACK))}
    target = result.outputs["rayDashboard"].split("service/", 1)[1].split()[0]
    assert target in services and f"{kuberay.DASHBOARD_PORT}:{kuberay.DASHBOARD_PORT}" in result.outputs["rayDashboard"]
    head = [p for p in kuberay.pods(train, context(STACK)) if p["metadata"]["labels"].get(kuberay.NODE_TYPE_LABEL) == "head"]
    assert len(head) == 1 and selects(services[target]["spec"]["selector"], head[0]["metadata"]["labels"])
    assert "ray.io/is-ray-node=yes" in result.outputs["rayPods"]


BASE = stack_config("workloads", STACK)


def changed(key: str, value) -> dict:
    return with_setting(BASE, "trn-workloads:ray", key, value)


BAD = {
    "more workers than the pool": (changed("workers", 5), "ray.workers: 5 worker nodes exceed pool 'trn1-efa' limit of 4 nodes"),
    "stack-owned key": (changed("run.num_workers", 8), "ray.run.num_workers: set by the stack"),
    "unknown model": (changed("run.model", "llama9"), "ray.run.model: must be one of ['llama2-7b', 'tiny'], got 'llama9'"),
    "head on an accelerator pool": (changed("headPool", "inf2"), "ray.headPool: pool 'inf2' is an accelerator pool"),
    "no deadline": (changed("deadlineSeconds", 0), "ray.deadlineSeconds: must be 1 to 2147483647 seconds"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ray_config_fails_before_any_resource(case, tmp_path):
    cfg, expected = BAD[case]
    assert_rejected_before_any_resource(tmp_path, "workloads", cfg, expected, WorkloadConfigError)
