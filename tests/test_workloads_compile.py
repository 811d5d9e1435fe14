"""The compile/serve workload stack on top of the rendered dev-usw2 platform: node
selection and devices come from the platform outputs; bad config fails up front."""
from __future__ import annotations

import copy
import json

import pytest

from trnctl.render import PLACEHOLDER_SECRET, render_stack, run_program
from tests.platform_helpers import (REPO, WORKLOAD_STACKS, assert_rejected_before_any_resource, platform_refs, project_with_stack,
                                    rendered_platform, rendered_workload, stack_config, with_setting)
from workloads.errors import WorkloadConfigError




def test_workload_stacks_exist():
    assert "compile-usw2" in WORKLOAD_STACKS


@pytest.mark.parametrize("stack", WORKLOAD_STACKS)
def test_workload_stack_renders_validates_and_passes_policy(stack, tmp_path):
    result, problems = render_stack(REPO / "workloads", stack, tmp_path)
    assert problems == []
    assert result.manifests
    text = (tmp_path / "outputs.json").read_text() + "".join(
        p.read_text() for p in (tmp_path / "manifests").glob("*.yaml"))
    assert PLACEHOLDER_SECRET not in text


def test_compile_job_lands_on_the_platform_pool_with_neuron_devices():
    platform = rendered_platform("dev-usw2").outputs
    result = rendered_workload("compile-usw2")
    job = result.by_type("kubernetes:batch/v1:Job")[0].inputs
    pod = job["spec"]["template"]["spec"]
    pool = platform["nodePools"]["trn1-single"]
    assert pod["nodeSelector"] == pool["nodeSelector"]
    assert pod["tolerations"] == pool["tolerations"]
    assert {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["aws.amazon.com/neuron"] == "1"
    assert job["spec"]["backoffLimit"] == 2 and pod["restartPolicy"] == "Never"
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"]
    assert claim == platform["sharedStorage"]["pvcName"]
    assert job["metadata"]["namespace"] == platform["sharedStorage"]["namespace"]
    command = pod["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "trn_workloads.compile"]
    s3_uri = command[command.index("--s3-uri") + 1]
    assert s3_uri.startswith(f"s3://{platform['artifactsBucket']}/workloads/compile-usw2/")


def test_serving_deployment_on_inf2_waits_for_the_compile_job():
    platform = rendered_platform("dev-usw2").outputs
    result = rendered_workload("compile-usw2")
    deployment = result.by_type("kubernetes:apps/v1:Deployment")[0]
    pod = deployment.inputs["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == platform["nodePools"]["inf2"]["nodeSelector"]
    server = pod["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["resources"]["requests"]["aws.amazon.com/neuron"] == "1"
    flags = server["command"]
    assert flags[flags.index("--max-queued-requests") + 1] == "64"  # the server sheds load beyond this (503)
    assert result.by_type("kubernetes:batch/v1:Job")[0].urn in deployment.depends_on
    service = result.by_type("kubernetes:core/v1:Service")[0].inputs
    assert service["spec"]["type"] == "ClusterIP"
    hpa = result.by_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")[0].inputs
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)


def test_image_is_the_platform_repository_at_the_workload_version():
    platform = rendered_platform("dev-usw2").outputs
    result = rendered_workload("compile-usw2")
    assert result.outputs["image"] == f"{platform['ecrRepositories']['compile']}:1.0.0"


BASE = stack_config("workloads", "compile-usw2")


def changed(key: str, value) -> dict:
    return with_setting(BASE, "trn-workloads:compile", key, value)


BAD = {
    "unknown pool": (changed("pool", "trn2"), "compile.pool: pool 'trn2' does not exist in platform stack"),
    "cpu pool for compile": (changed("pool", "cpu"), "compile.pool: pool 'cpu' is a CPU pool; allowed values: inf2, trn1-efa, trn1-single"),
    "too many devices": (changed("neuronDevices", 4), "compile.neuronDevices: 4 Neuron devices do not fit pool 'trn1-single'"),
    "bad model": (changed("model", "resnet"), "compile.model: allowed values: resnet50, housing-mlp or <module>:<attr>"),
    "too many replicas": (changed("serve", {"pool": "inf2", "replicas": 9}), "compile.serve.replicas: 9 replicas do not fit pool 'inf2'"),
    "queue bound": (changed("serve", {"pool": "inf2", "maxQueuedRequests": 0}), "compile.serve.maxQueuedRequests: must be 1 to 10000"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_workload_config_fails_before_any_resource(case, tmp_path):
    cfg, expected = BAD[case]
    assert_rejected_before_any_resource(tmp_path, "workloads", cfg, expected, WorkloadConfigError)


def test_plain_text_hf_token_is_refused(tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg["trn-workloads:hfToken"] = "hf_plaintext"
    project = project_with_stack(tmp_path, "workloads", "bad", cfg)
    with pytest.raises(WorkloadConfigError, match="hfToken: must be a secret"):
        run_program(project, "bad", stack_references=platform_refs())


def test_secret_hf_token_becomes_a_secret_reference_only(tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg["trn-workloads:hfToken"] = {"secure": "v1:AAAAencrypted"}
    project = project_with_stack(tmp_path, "workloads", "tok", cfg)
    result = run_program(project, "tok", stack_references=platform_refs())
    secret = result.by_type("kubernetes:core/v1:Secret")[0]
    # Pulumi lifts secretness to the enclosing map: the whole stringData is masked.
    assert secret.to_json()["inputs"]["stringData"] == "[secret]"
    assert secret.state["stringData"] == {"token": PLACEHOLDER_SECRET}
    job = result.by_type("kubernetes:batch/v1:Job")[0].to_json()["inputs"]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    hf = next(e for e in env if e["name"] == "HF_TOKEN")
    assert hf == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok-hf-token", "key": "token"}}}
    dumped = json.dumps([r.to_json() for r in result.resources]) + json.dumps(result.masked_outputs())
    assert PLACEHOLDER_SECRET not in dumped


def test_image_build_pushes_both_images_with_the_pinned_base(tmp_path):
    """image.build: docker-build builds images/compile and images/serve on the pinned base
    and pushes them to the platform's repositories; pods use the pushed digest."""
    import json as _json

    from infra import versions

    cfg = copy.deepcopy(BASE)
    cfg["trn-workloads:image"] = {"repository": "compile", "build": True}
    project = project_with_stack(tmp_path, "workloads", "build", cfg)
    result = run_program(project, "build", stack_references=platform_refs())
    images = {r.name: r.inputs for r in result.by_type("docker-build:index:Image")}
    assert set(images) == {"build-compile-image", "build-serve-image"}
    pin = versions.neuron_sdk()
    platform = rendered_platform("dev-usw2").outputs
    for repo, base in (("compile", "training"), ("serve", "inference")):
        image = images[f"build-{repo}-image"]
        assert image["buildArgs"] == {"BASE_IMAGE": pin["base_images"][base], "NEURON_SDK_VERSION": pin["neuron_sdk"]}
        assert image["dockerfile"]["location"].endswith(f"images/{repo}/Dockerfile")
        assert image["tags"] == [f"{platform['ecrRepositories'][repo]}:1.0.0"] and image["push"] is True
    job = result.by_type("kubernetes:batch/v1:Job")[0].inputs["spec"]["template"]["spec"]["containers"][0]
    deployment = result.by_type("kubernetes:apps/v1:Deployment")[0].inputs["spec"]["template"]["spec"]["containers"][0]
    assert job["image"].startswith(f"{platform['ecrRepositories']['compile']}@sha256:")
    assert deployment["image"].startswith(f"{platform['ecrRepositories']['serve']}@sha256:")
    assert "render-placeholder-registry-password" not in _json.dumps([r.to_json() for r in result.resources])
