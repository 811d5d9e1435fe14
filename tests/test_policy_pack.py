"""The pulumi-policy adapter (policy/pack.py): the validate callables the Pulumi engine
calls, fed the same argument objects the analyzer server builds (proxied props with
unknown-value sentinels). The PolicyPack itself is never constructed: it starts a
server and blocks."""
from __future__ import annotations

import ast

import pytest
from pulumi_policy import EnforcementLevel, ResourceValidationArgs, ResourceValidationPolicy, StackValidationArgs
from pulumi_policy.policy import PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from policy import pack, rules
from tests.platform_helpers import REPO

OPTS = PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                             custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[])


def resource_args(typ: str, name: str, props: dict) -> ResourceValidationArgs:
    # The analyzer wraps props exactly like this before calling a policy.
    return ResourceValidationArgs(typ, unknown_checking_proxy(props), f"urn:pulumi:dev::p::{typ}::{name}", name, OPTS, None)


def policy_resource(typ: str, name: str, props: dict, dependencies=()) -> PolicyResource:
    return PolicyResource(typ, unknown_checking_proxy(props), f"urn:pulumi:dev::p::{typ}::{name}", name, OPTS, None,
                          None, list(dependencies), {})


def policy_named(name: str):
    return next(p for p in pack.policies() if p.name == name)


def run_resource_policy(name: str, args) -> list[tuple[str, str | None]]:
    reported = []
    policy_named(name).validate(args, lambda message, urn=None: reported.append((message, urn)))
    return reported


def test_one_policy_per_rule_with_its_enforcement_level():
    policies = pack.policies()
    assert [p.name for p in policies] == [r.id for r in rules.RULES]
    for p, r in zip(policies, rules.RULES):
        assert p.enforcement_level == {"mandatory": EnforcementLevel.MANDATORY,
                                       "advisory": EnforcementLevel.ADVISORY}[r.severity]
        assert isinstance(p, ResourceValidationPolicy) == (r.scope == "resource")
        assert r.fix == p.remediation_steps


def test_resource_policy_reports_violation_with_fix():
    args = resource_args("aws:ec2/launchTemplate:LaunchTemplate", "system",
                         {"metadataOptions": {"httpTokens": "optional"},
                          "blockDeviceMappings": [{"ebs": {"encrypted": "true"}}]})
    reported = run_resource_policy("nodes-imdsv2", args)
    assert reported == [("metadataOptions.httpTokens is 'optional'; IMDSv1 stays enabled unless it is 'required'. "
                         f"Fix: {rules.rule_by_id('nodes-imdsv2').fix}", None)]
    assert run_resource_policy("nodes-encrypted-root", args) == []


def test_resource_policy_ignores_other_types():
    args = resource_args("aws:sqs/queue:Queue", "q", {})
    assert run_resource_policy("nodes-imdsv2", args) == []
    assert len(run_resource_policy("sqs-encrypted", args)) == 1


def test_unknown_values_at_preview_pass_through_as_unknown():
    """A proxied unknown would raise on access; the adapter maps it to "[unknown]"."""
    props = {"deploymentType": "PERSISTENT_2", "kmsKeyId": UNKNOWN_STRING_VALUE,
             "tags": {"a": UNKNOWN_STRING_VALUE}, "subnetIds": [UNKNOWN_STRING_VALUE]}
    args = resource_args("aws:fsx/lustreFileSystem:LustreFileSystem", "fs", props)
    assert pack.resource_from_args(args).props == {"deploymentType": "PERSISTENT_2", "kmsKeyId": "[unknown]",
                                                   "tags": {"a": "[unknown]"}, "subnetIds": ["[unknown]"]}
    assert run_resource_policy("fsx-encrypted", args) == []


def test_k8s_policy_reads_nested_proxied_objects():
    args = resource_args("kubernetes:batch/v1:Job", "j", {
        "kind": "Job", "metadata": {"name": "j", "namespace": "ml-shared"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "repo/app:latest"}]}}}})
    [(message, _)] = run_resource_policy("k8s-images-pinned", args)
    assert "tag 'latest' is not an exact version" in message


def test_stack_policy_binds_resources_by_dependencies():
    bucket = policy_resource("aws:s3/bucket:Bucket", "artifacts", {"bucketPrefix": "a-"})
    block = policy_resource("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "artifacts",
                            {"bucket": UNKNOWN_STRING_VALUE, "blockPublicAcls": True, "blockPublicPolicy": True,
                             "ignorePublicAcls": True, "restrictPublicBuckets": False}, dependencies=[bucket])
    stack = policy_resource("pulumi:pulumi:Stack", "p-dev", {"bucketName": "a-123"})
    reported = []
    policy_named("s3-private").validate(StackValidationArgs([stack, bucket, block]),
                                        lambda message, urn=None: reported.append((message, urn)))
    assert reported == [(f"BucketPublicAccessBlock artifacts: restrictPublicBuckets not true. "
                         f"Fix: {rules.rule_by_id('s3-private').fix}", bucket.urn)]


def test_stack_policy_reads_outputs_from_the_stack_resource():
    stack = policy_resource("pulumi:pulumi:Stack", "p-dev", {"hfToken": "hf_" + "a" * 34, "kubeconfig": "[secret]"})
    reported = []
    policy_named("outputs-no-secrets").validate(StackValidationArgs([stack]),
                                                lambda message, urn=None: reported.append((message, urn)))
    assert len(reported) == 1 and reported[0][0].startswith("output hfToken holds what looks like a Hugging Face token")
    assert reported[0][1] is None  # a stack-level finding


def test_pack_entry_point_builds_the_pack_from_the_adapter():
    """__main__.py cannot be run here (it serves the analyzer and blocks); check what it calls."""
    tree = ast.parse((REPO / "policy" / "__main__.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "PolicyPack"]
    assert len(calls) == 1
    kwargs = {k.arg: k.value for k in calls[0].keywords}
    assert ast.unparse(kwargs["policies"]) == "policies()"
    assert "pulumi-policy==1.21.0" in (REPO / "policy" / "requirements.txt").read_text().splitlines()
    import yaml
    project = yaml.safe_load((REPO / "policy" / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python"


@pytest.mark.parametrize("value", [
    {"a": [1, {"b": "x"}]}, [], "text", 3, None,
])
def test_plain_round_trips_proxied_values(value):
    proxied = unknown_checking_proxy({"v": value})
    assert pack.plain(proxied) == {"v": value}
