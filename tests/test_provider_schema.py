"""Recorded provider inputs are checked against the pinned SDKs' schemas (trnctl/provider_schema.py):
what the mock runtime accepts but `pulumi up` would reject fails the render instead."""
from __future__ import annotations

import copy
import re
import textwrap

import pytest

from stackfiles.records import RecordedResource
from trnctl import provider_schema
from trnctl.provider_schema import check_resources
from trnctl.render import render_stack, run_program
from tests.platform_helpers import (
    PLATFORM_STACKS,
    REPO,
    WORKLOAD_STACKS,
    platform_refs,
    project_with_stack,
    rendered_platform,
    rendered_workload,
    stack_config,
)


def recorded(typ: str, inputs: dict, name: str = "r") -> RecordedResource:
    return RecordedResource(type=typ, name=name, urn=f"urn:pulumi:t::p::{typ}::{name}", inputs=inputs,
                            parent=None, depends_on=[], custom=True)


def one(stack: str, typ: str) -> RecordedResource:
    """A deep copy of the first resource of `typ` in a rendered stack (platform or workload)."""
    result = rendered_platform(stack) if stack in PLATFORM_STACKS else rendered_workload(stack)
    return copy.deepcopy(result.by_type(typ)[0])


def issues_of(resource: RecordedResource) -> dict[str, provider_schema.Issue]:
    return {i.path: i for i in check_resources([resource])}


NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
NODE_GROUP_INPUTS = {"clusterName": "c", "nodeRoleArn": "arn:aws:iam::123456789012:role/n", "subnetIds": ["subnet-1"],
                     "scalingConfig": {"minSize": 1, "maxSize": 2, "desiredSize": 1}}


def test_a_valid_node_group_has_no_issues():
    assert check_resources([recorded(NODE_GROUP, NODE_GROUP_INPUTS)]) == []


def test_misspelled_nested_key_is_unknown_with_did_you_mean():
    inputs = copy.deepcopy(NODE_GROUP_INPUTS)
    inputs["scalingConfig"]["minSizee"] = inputs["scalingConfig"].pop("minSize")
    found = issues_of(recorded(NODE_GROUP, inputs, "system"))
    typo = found["scalingConfig.minSizee"]
    assert typo.problem.startswith("unknown property") and typo.suggestion == "minSize"
    assert typo.allowed == "desiredSize, maxSize, minSize"
    assert str(typo).startswith("aws:eks/nodeGroup:NodeGroup system at scalingConfig.minSizee: unknown property")
    assert "did you mean 'minSize'?" in str(typo)
    # ... and the real name is then missing: minSize is required in NodeGroupScalingConfigArgs.
    assert found["scalingConfig.minSize"].problem.startswith("missing required property")


def test_missing_required_property_at_top_level_and_nested():
    inputs = copy.deepcopy(NODE_GROUP_INPUTS)
    del inputs["scalingConfig"]
    assert set(issues_of(recorded(NODE_GROUP, inputs))) == {"scalingConfig"}
    rule = {"type": "ingress", "fromPort": 0, "toPort": 0, "securityGroupId": "sg-1"}
    found = issues_of(recorded("aws:ec2/securityGroupRule:SecurityGroupRule", rule))
    assert set(found) == {"protocol"} and found["protocol"].problem.startswith("missing required")
    # A property recorded as null is missing too (an Output that resolved to None).
    assert "subnetIds" in issues_of(recorded(NODE_GROUP, {**NODE_GROUP_INPUTS, "subnetIds": None}))


@pytest.mark.parametrize("value, wanted", [(["10.0.0.0/16"], "string"), (10, "string"), ({"a": 1}, "string")])
def test_wrong_type_of_a_scalar(value, wanted):
    found = issues_of(recorded("aws:ec2/vpc:Vpc", {"cidrBlock": value}))
    assert found["cidrBlock"].problem.startswith("wrong type") and found["cidrBlock"].allowed == wanted


def test_numbers_and_booleans_are_told_apart():
    inputs = copy.deepcopy(NODE_GROUP_INPUTS)
    inputs["scalingConfig"].update(minSize=True, maxSize=2.5, desiredSize="1")
    found = issues_of(recorded(NODE_GROUP, inputs))
    assert {p: i.allowed for p, i in found.items()} == {
        "scalingConfig.minSize": "integer", "scalingConfig.maxSize": "integer", "scalingConfig.desiredSize": "integer"}
    vpc = issues_of(recorded("aws:ec2/vpc:Vpc", {"cidrBlock": "10.0.0.0/16", "enableDnsSupport": "true"}))
    assert vpc["enableDnsSupport"].allowed == "boolean"


def test_wrong_container_shapes():
    inputs = {**NODE_GROUP_INPUTS, "subnetIds": "subnet-1", "tags": ["a"], "labels": {"pool": 1}}
    found = issues_of(recorded(NODE_GROUP, inputs))
    assert found["subnetIds"].allowed == "list of string"
    assert found["tags"].allowed == "map of string"
    assert found["labels.pool"].allowed == "string"


def test_bad_enum_value_names_the_allowed_values():
    cluster = one("dev-usw2", "eks:index:Cluster")
    cluster.inputs["authenticationMode"] = "APII"
    found = issues_of(cluster)
    assert found["authenticationMode"].allowed == "one of 'CONFIG_MAP', 'API', 'API_AND_CONFIG_MAP'"
    assert found["authenticationMode"].suggestion == "API"
    image = {"push": False, "platforms": ["linux/amd65"]}
    found = issues_of(recorded("docker-build:index:Image", image))
    assert found["platforms[0]"].suggestion == "linux/amd64" and "'linux/arm64'" in found["platforms[0]"].allowed


def test_enum_that_the_schema_leaves_open_accepts_any_string():
    # SecurityGroupRule.protocol is Union[str, ProtocolType] (oneOf string/enum): "6" is valid.
    rule = {"type": "ingress", "fromPort": 0, "toPort": 0, "securityGroupId": "sg-1", "protocol": "6"}
    assert check_resources([recorded("aws:ec2/securityGroupRule:SecurityGroupRule", rule)]) == []


def test_kubernetes_deployment_checked_through_the_pod_template():
    deployment = one("compile-usw2", "kubernetes:apps/v1:Deployment")
    assert check_resources([deployment]) == []
    deployment.inputs["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    deployment.inputs["metadata"]["lables"] = {}
    deployment.inputs["apiVersion"] = "apps/v1beta1"
    del deployment.inputs["spec"]["selector"]
    found = issues_of(deployment)
    assert set(found) == {"spec.template.spec.containers[0].imagePullPolicyy", "metadata.lables", "apiVersion",
                          "spec.selector"}
    assert found["spec.template.spec.containers[0].imagePullPolicyy"].suggestion == "imagePullPolicy"
    assert found["metadata.lables"].suggestion == "labels"
    assert found["apiVersion"].allowed == "one of 'apps/v1'"
    assert found["spec.selector"].problem.startswith("missing required property of DeploymentSpecArgs")


def test_custom_resource_wrapper_is_checked_and_its_body_left_to_crd_validation():
    pool = one("dev-usw2", "kubernetes:karpenter.sh/v1:NodePool")
    pool.inputs["spec"]["notAField"] = 1          # the CRD schemas in infra/schemas/ catch this one
    assert check_resources([pool]) == []
    pool.inputs["metdata"] = pool.inputs.pop("metadata")
    pool.inputs["kind"] = "NodePools"
    found = issues_of(pool)
    assert set(found) == {"metdata", "kind"}
    assert found["metdata"].suggestion == "metadata" and found["kind"].suggestion == "NodePool"


def test_unknown_secret_and_sdk_set_values():
    from pulumi.runtime import rpc

    def secret(value):
        return {rpc._special_sig_key: rpc._special_secret_sig, "value": value}

    inputs = {**NODE_GROUP_INPUTS, "clusterName": "[unknown]", "nodeRoleArn": secret("arn"), "version": "[secret]"}
    assert check_resources([recorded(NODE_GROUP, inputs)]) == []
    # The engine sees through the secret envelope: the value inside is still type-checked.
    assert set(issues_of(recorded(NODE_GROUP, {**NODE_GROUP_INPUTS, "subnetIds": secret("subnet-1")}))) == {"subnetIds"}
    # The Helm Release's `compat` is set by the SDK itself; the recording carries it.
    release = one("dev-usw2", "kubernetes:helm.sh/v3:Release")
    assert release.inputs["compat"] == "true" and check_resources([release]) == []


def test_provider_inputs_are_json_encoded_on_the_wire():
    provider = one("dev-usw2", "pulumi:providers:kubernetes")
    assert provider.inputs["enableServerSideApply"] == "true" and check_resources([provider]) == []
    provider.inputs["enableServerSideApply"] = '"yes"'
    provider.inputs["kubeconfigg"] = "{}"
    found = issues_of(provider)
    assert found["enableServerSideApply"].allowed == "boolean"
    assert found["kubeconfigg"].suggestion == "kubeconfig"


def test_unknown_resource_type_and_other_packages():
    found = check_resources([recorded("aws:ec2/vpcc:Vpc", {}), recorded("trn:platform:Network", {"x": 1}),
                             recorded("pulumi:pulumi:StackReference", {"name": "a/b/c"})])
    assert len(found) == 1 and found[0].type == "aws:ec2/vpcc:Vpc" and found[0].suggestion == "aws:ec2/vpc:Vpc"
    assert "pulumi-aws 7.51.1" in found[0].problem


def test_resources_json_form_is_accepted():
    vpc = recorded("aws:ec2/vpc:Vpc", {"cidrBlock": 1})
    assert check_resources([vpc.to_json()]) == check_resources([vpc])


def test_schemas_are_those_of_the_pinned_sdks():
    pins = dict(re.findall(r"^(pulumi-[a-z-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.MULTILINE))
    for package, version in provider_schema.package_versions().items():
        assert pins[provider_schema.PACKAGES[package][1]] == version


def test_no_installed_sdk_ships_a_provider_schema():
    """A shipped schema.json would be authoritative over the introspected SDK code: if a new
    pin brings one, derive from it instead (see the module docstring)."""
    import importlib.util
    from pathlib import Path

    for module, _ in provider_schema.PACKAGES.values():
        root = Path(importlib.util.find_spec(module).origin).parent
        assert not [p for p in root.rglob("*.json") if p.name != "pulumi-plugin.json"], module


def test_registry_maps_tokens_of_every_package():
    assert provider_schema.package_types("aws")["aws:ec2/vpc:Vpc"] == ("pulumi_aws.ec2", "Vpc")
    assert provider_schema.package_types("kubernetes")["pulumi:providers:kubernetes"] == ("pulumi_kubernetes", "Provider")
    assert provider_schema.package_types("eks")["eks:index:Cluster"] == ("pulumi_eks", "Cluster")
    assert provider_schema.package_types("docker-build")["docker-build:index:Image"] == ("pulumi_docker_build", "Image")


@pytest.mark.parametrize("stack", PLATFORM_STACKS + WORKLOAD_STACKS)
def test_every_stack_in_the_repo_is_clean(stack):
    result = rendered_platform(stack) if stack in PLATFORM_STACKS else rendered_workload(stack)
    checked = [r for r in result.resources if provider_schema._package_of(r.type)]
    assert checked
    assert [str(i) for i in check_resources(result.resources)] == []


def test_image_builds_are_clean(tmp_path):
    cfg = copy.deepcopy(stack_config("workloads", "compile-usw2"))
    cfg["trn-workloads:image"] = {"repository": "compile", "build": True}
    project = project_with_stack(tmp_path, "workloads", "build", cfg)
    result = run_program(project, "build", stack_references=platform_refs())
    assert result.by_type("docker-build:index:Image")
    assert [str(i) for i in check_resources(result.resources)] == []


def test_render_fails_on_a_schema_issue_naming_resource_path_and_fix(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: schema-check\nruntime: python\n")
    (project / "Pulumi.t.yaml").write_text("config:\n  aws:region: us-west-2\n")
    (project / "__main__.py").write_text(textwrap.dedent("""
        import pulumi_aws as aws
        aws.eks.NodeGroup("system", cluster_name="c", node_role_arn="arn", subnet_ids=["subnet-1"],
                          scaling_config={"minSize": 1, "maxSizee": 2, "desired_size": 1})
    """))
    _, problems = render_stack(project, "t", tmp_path / "out")
    where = "provider schema: aws:eks/nodeGroup:NodeGroup system at scalingConfig"
    assert problems == [f"{where}.maxSizee: unknown property of NodeGroupScalingConfigArgs; allowed: "
                        + "desiredSize, maxSize, minSize; did you mean 'maxSize'?",
                        f"{where}.maxSize: missing required property of NodeGroupScalingConfigArgs; allowed: integer"]


def test_python_name_on_the_wire_suggests_the_wire_name():
    # A Python name that reached the wire untranslated (the SDK only translates names it has types for).
    inputs = {"cidrBlock": "10.0.0.0/16", "enable_dns_support": True}
    assert issues_of(recorded("aws:ec2/vpc:Vpc", inputs))["enable_dns_support"].suggestion == "enableDnsSupport"


def test_required_inputs_are_those_the_sdk_itself_insists_on():
    """The derivation (constructor parameters without a default) agrees with the SDK's own
    "Missing required property" checks for every provider type the repo's stacks create."""
    import importlib
    import inspect

    tokens = {r.type for stack in PLATFORM_STACKS for r in rendered_platform(stack).resources}
    tokens |= {r.type for stack in WORKLOAD_STACKS for r in rendered_workload(stack).resources}
    compared = 0
    for token in sorted(tokens):
        package = provider_schema._package_of(token)
        entry = provider_schema.package_types(package).get(token) if package else None
        if entry is None:
            continue
        cls = getattr(importlib.import_module(entry[0]), entry[1])
        insisted = set(re.findall(r"Missing required property '(\w+)'", inspect.getsource(cls._internal_init)))
        schema = provider_schema.resource_schema(token)
        assert {re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), n) for n in insisted} == set(schema.required), token
        compared += 1
    assert compared >= 40


def _key_paths(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from _key_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _key_paths(item, (*path, i))


MAP_FIELDS = {"tags", "labels", "annotations", "matchLabels", "nodeSelector", "requests", "limits", "capacity",
              "volumeAttributes"}


@pytest.mark.parametrize("stack, typ", [("dev-usw2", "aws:ec2/launchTemplate:LaunchTemplate"),
                                        ("dev-usw2", "eks:index:Cluster"),
                                        ("dev-usw2", "kubernetes:core/v1:PersistentVolume"),
                                        ("compile-usw2", "kubernetes:apps/v1:Deployment"),
                                        ("compile-usw2", "kubernetes:batch/v1:Job")])
def test_a_misspelling_is_caught_at_every_nesting_level(stack, typ):
    """Every property name of a real recorded resource, renamed, is reported at its path
    (map keys such as labels or tags are free by the schema)."""
    resource = one(stack, typ)
    paths = [p for p in _key_paths(resource.inputs) if not MAP_FIELDS & {str(k) for k in p[:-1]}]
    assert len(paths) > 10
    for path in paths:
        mutated = copy.deepcopy(resource)
        parent = mutated.inputs
        for key in path[:-1]:
            parent = parent[key]
        parent[f"{path[-1]}Zz"] = parent.pop(path[-1])
        assert any(i.path.endswith(f"{path[-1]}Zz") and i.problem.startswith("unknown property")
                   for i in check_resources([mutated])), path
