"""Pulumi's waits (trnctl/cluster/waits.py) and the resource options recorded in resources.json."""
from __future__ import annotations

import pytest
from pulumi.runtime.proto import resource_pb2

from tests.cluster_helpers import edit, mandatory, model, rules
from trnctl.cluster import waits
from trnctl.mocks import resource_options


def test_timeout_precedence_is_custom_timeouts_then_annotation_then_ten_minutes():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"annotations": {}}, "spec": {"activeDeadlineSeconds": 60}}
    assert waits.await_of(job) == waits.Await("Job Complete", 600, "the provider's 10-minute default")
    job["metadata"]["annotations"]["pulumi.com/timeoutSeconds"] = "1200"
    assert waits.await_of(job).timeout_seconds == 1200
    assert waits.await_of(job, {"customTimeouts": {"create": "1h30m"}}).timeout_seconds == 5400
    job["metadata"]["annotations"]["pulumi.com/skipAwait"] = "true"
    assert waits.await_of(job).what == "none"
    assert waits.await_of({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {}}).what == "none"


@pytest.fixture(scope="module")
def today():
    return model("dev-usw2", "llm-serve-usw2", "compile-usw2", "nemo-pretrain-usw2", "lora-finetune-usw2")


def test_todays_stacks_wait_long_enough(today):
    assert mandatory(waits.check(today)) == []
    serve = next(o for o in today.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "llm-serve-usw2")
    # the startup probe's hour for the first Neuron compile plus the provisioning allowance
    assert serve["metadata"]["annotations"]["pulumi.com/timeoutSeconds"] == str(3600 + waits.PROVISIONING_ALLOWANCE_SECONDS)


def test_llm_serve_without_a_timeout_fails_on_its_first_compile(today):
    broken = edit(today, "Deployment ml-shared/llm-serve-usw2", lambda d: d["metadata"].pop("annotations"))
    found = rules(waits.check(broken), "waits/too-short")
    assert len(found) == 1 and "only 600s" in found[0].message and "startup probe's budget (3600s)" in found[0].message


def test_a_job_awaited_for_ten_minutes_with_a_day_long_deadline_fails(today):
    broken = edit(today, "Job ml-shared/nemo-pretrain-usw2-data", lambda j: j["metadata"].pop("annotations"))
    found = rules(waits.check(broken), "waits/too-short")
    assert len(found) == 1 and "activeDeadlineSeconds (86400s)" in found[0].message


def test_an_awaited_job_without_a_deadline_is_unbounded(today):
    def no_deadline(job):
        job["metadata"].pop("annotations")
        job["spec"].pop("activeDeadlineSeconds")
    found = rules(waits.check(edit(today, "Job ml-shared/compile-usw2-compile", no_deadline)), "waits/unbounded")
    assert len(found) == 1 and found[0].severity == "mandatory"


def test_resource_options_are_read_from_the_register_request():
    request = resource_pb2.RegisterResourceRequest(
        type="kubernetes:apps/v1:Deployment", name="d", deleteBeforeReplace=True, deleteBeforeReplaceDefined=True,
        ignoreChanges=["spec.replicas"], protect=True, customTimeouts=resource_pb2.RegisterResourceRequest.CustomTimeouts(
            create="75m"))
    assert resource_options(request) == {"customTimeouts": {"create": "75m"}, "deleteBeforeReplace": True,
                                         "ignoreChanges": ["spec.replicas"], "protect": True}
    assert resource_options(resource_pb2.RegisterResourceRequest(type="t", name="n")) == {}


def test_options_set_in_a_program_reach_resources_json():
    """The SDK serializes ResourceOptions into the request the mock monitor records (the render's
    own run loop: trnctl.render.run_program)."""
    import asyncio

    import pulumi
    import pulumi_kubernetes as k8s
    from pulumi.runtime import settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from trnctl.mocks import RecordingMocks, RecordingMonitor
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks(region="us-west-2")
    monitor = RecordingMonitor(mocks)
    settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="p", stack="s", preview=False, monitor=monitor)

    def program():
        k8s.core.v1.ConfigMap("cm", metadata={"name": "cm"}, data={"a": "b"}, opts=pulumi.ResourceOptions(
            protect=True, ignore_changes=["data"], delete_before_replace=True,
            custom_timeouts=pulumi.CustomTimeouts(create="20m")))
        k8s.core.v1.ConfigMap("plain", metadata={"name": "plain"}, data={"a": "b"})
    _sync_await(run_pulumi_func(program))
    recorded = {r.name: r.to_json() for r in monitor.recorded}
    assert recorded["cm"]["options"] == {"customTimeouts": {"create": "20m"}, "deleteBeforeReplace": True,
                                         "ignoreChanges": ["data"], "protect": True}
    assert "options" not in recorded["plain"]


def test_llm_serve_records_that_pulumi_leaves_its_replicas_to_keda():
    from tests.cluster_helpers import workload_render
    (deployment,) = [r for r in workload_render("llm-serve-usw2").records if r["type"] == "kubernetes:apps/v1:Deployment"]
    assert deployment["options"] == {"ignoreChanges": ["spec.replicas"]}


def test_ray_jobs_awaited_to_complete_end_when_the_wait_does():
    """KubeRay fails a RayJob at spec.activeDeadlineSeconds (v1.7.0); each step sets it from ray.deadlineSeconds."""
    ray = model("dev-usw2", "ray-pretrain-usw2")
    assert rules(waits.check(ray), "waits/") == []
    for job in (o for o in ray.objects if o["kind"] == "RayJob"):
        assert job["spec"]["activeDeadlineSeconds"] == 7 * 24 * 3600, job["metadata"]["name"]
    found = rules(waits.check(edit(ray, "RayJob ml-shared/ray-pretrain-usw2-data",
                                   lambda j: j["spec"].pop("activeDeadlineSeconds"))), "waits/unbounded")
    assert len(found) == 1 and found[0].severity == "mandatory" and "604800s" in found[0].message
