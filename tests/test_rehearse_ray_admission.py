"""Issue 20 defect 2 through the rehearsal: the ray-pretrain stack with its RayJobs put back on a shared RayCluster
(`clusterSelector`, no `rayClusterSpec`) is refused as KubeRay v1.7.0 under the platform's Volcano batch scheduler
refuses it, before any pod runs; today's stack passes that gate."""
from __future__ import annotations

import copy

import pytest

from trnctl import operators
from trnctl.rehearse.runner import Rehearsal
from trnctl.rehearse.stack import load

pytestmark = pytest.mark.slow

STACK = "ray-pretrain-usw2"


@pytest.fixture(scope="module")
def stack():
    return load(STACK)


def old_shape(objects: list[dict]) -> list[dict]:
    """The RayJobs as they were: one RayCluster made from the train job's spec, every RayJob selecting it."""
    out = []
    cluster = None
    for obj in objects:
        if obj["kind"] == "RayJob":
            obj = copy.deepcopy(obj)
            spec = obj["spec"].pop("rayClusterSpec")
            obj["spec"].pop("shutdownAfterJobFinishes", None)
            cluster = cluster or {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                                  "metadata": {"name": STACK, "namespace": obj["metadata"]["namespace"],
                                               "labels": dict(obj["metadata"]["labels"])}, "spec": spec}
            obj["spec"]["clusterSelector"] = {"ray.io/cluster": STACK}
        out.append(obj)
    return out + ([cluster] if cluster else [])


def test_todays_stack_passes_the_operators_admission(stack):
    assert operators.admission_problems(stack.all_objects(), stack.ctx) == []


def test_rayjobs_on_a_shared_cluster_are_refused_before_any_pod_runs(stack):
    broken = copy.copy(stack)
    broken.objects = old_shape(stack.objects)
    broken.steps = [old_shape(step) for step in stack.steps]
    with Rehearsal(broken, s3=False) as r:
        result = r.run()
        assert not result.ok and result.pods == []  # no pod started
    refused = [p for p in result.problems if "gang scheduling does not support RayJob" in p]
    assert {p.split(":")[0] for p in refused} == {f"RayJob ml-shared/{STACK}-{step}"
                                                  for step in ("data", "precompile", "train")}
    assert all("batchscheduler/volcano/volcano_scheduler.go" in p for p in refused)
    assert "rehearsal of ray-pretrain-usw2: FAILED" in result.report()
