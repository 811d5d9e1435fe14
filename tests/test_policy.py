"""Guardrail rules (policy/rules/): each rule against its passing and failing fixture,
a deliberately weakened real render, and every stack file of the repository."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from policy import rules
from policy.rules import Resource, evaluate, format_report, image_pin_problem, resources_from_records
from tests.platform_helpers import PLATFORM_STACKS, REPO, WORKLOAD_STACKS

FIXTURES = REPO / "tests" / "fixtures" / "policy"
RULE_IDS = [r.id for r in rules.RULES]


def load_case(rule_id: str, case: str) -> tuple[list[Resource], dict, list[str]]:
    doc = yaml.safe_load((FIXTURES / f"{rule_id}.yaml").read_text())[case]
    records = []
    for i, rec in enumerate(doc["resources"]):
        rec = {"urn": f"urn:fixture::{rule_id}-{case}-{i}", "dependsOn": [], **rec}
        directory = rec["inputs"].get("directory")
        if directory and not Path(directory).is_absolute():  # kustomize fixtures live next to this file
            rec["inputs"] = {**rec["inputs"], "directory": str(REPO / directory)}
        records.append(rec)
    return resources_from_records(records), doc.get("outputs", {}), doc.get("expect", [])


def of_rule(violations, rule_id):
    return [v for v in violations if v.rule == rule_id]


# --------------------------------------------------------------------------- per rule


def test_rule_ids_are_unique_and_valid_policy_names():
    assert len(RULE_IDS) == len(set(RULE_IDS))
    for rule in rules.RULES:
        assert re.match(r"^[a-z0-9-]{1,100}$", rule.id)  # pulumi-policy names: no spaces
        assert rule.severity in rules.SEVERITIES
        assert rule.what and rule.why and rule.fix


def test_every_rule_has_a_fixture_and_every_fixture_a_rule():
    files = {p.stem for p in FIXTURES.glob("*.yaml")}
    assert files == set(RULE_IDS)


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_passing_fixture_passes(rule_id):
    resources, outputs, _ = load_case(rule_id, "pass")
    assert of_rule(evaluate(resources, outputs), rule_id) == []


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_failing_fixture_is_caught_with_its_messages(rule_id):
    resources, outputs, expected = load_case(rule_id, "fail")
    found = of_rule(evaluate(resources, outputs), rule_id)
    assert found, f"{rule_id} accepted its failing fixture"
    text = "\n".join(f"{v.resource}: {v.message}" for v in found)
    for fragment in expected:
        assert fragment in text, f"{rule_id}: {fragment!r} not in\n{text}"
    rule = rules.rule_by_id(rule_id)
    assert all(v.severity == rule.severity and v.fix == rule.fix for v in found)


def test_readme_documents_every_rule():
    readme = (REPO / "policy" / "README.md").read_text()
    for rule in rules.RULES:
        assert f"`{rule.id}`" in readme, f"policy/README.md lacks {rule.id}"


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("image,pinned", [
    ("repo/app:1.0.0", True),
    ("repo/app:v1.21.1-eksbuild.1", True),
    ("public.ecr.aws/neuron/pytorch-training-neuronx:2.7.0-neuronx-py310-sdk2.26.1-ubuntu22.04", True),
    ("localhost:5000/app:1.2.3", True),
    ("app@sha256:" + "a" * 64, True),
    ("app:latest", False),
    ("app", False),
    ("localhost:5000/app", False),  # the port is not a tag
    ("mpioperator/mpi-operator:0.8", False),
    ("app:v1", False),
    ("app:stable", False),
    ("app:1.2", False),
    ("app@sha256:abc", False),
])
def test_image_pin_rule(image, pinned):
    assert (image_pin_problem(image) is None) is pinned


def test_unknown_values_never_fail_a_rule():
    """At preview, computed values are unknown: rules must not call them violations."""
    unknown = rules.UNKNOWN
    resources = [
        Resource("aws:ec2/launchTemplate:LaunchTemplate", "lt", {"metadataOptions": {"httpTokens": unknown},
                                                                  "blockDeviceMappings": unknown}),
        Resource("eks:index:Cluster", "eks", {"encryptionConfigKeyArn": unknown, "enabledClusterLogTypes": unknown,
                                              "publicAccessCidrs": unknown}),
        Resource("aws:iam/rolePolicy:RolePolicy", "p", {"policy": unknown}),
        Resource("aws:iam/role:Role", "r", {"assumeRolePolicy": unknown}),
        Resource("kubernetes:batch/v1:Job", "j", {"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": unknown, "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                                                          "limits": {"cpu": "1", "memory": "1Gi"}}}]}}}}),
    ]
    assert evaluate(resources, {"token": unknown}) == []


def test_exceptions_file_is_valid_and_every_entry_has_a_reason():
    exc = rules.exceptions()
    assert exc.write_on_any_resource and exc.privileged_workloads
    assert all(e.reason.strip() for e in exc.write_on_any_resource + exc.privileged_workloads)


def test_bad_exceptions_file_names_the_entry_and_key():
    doc = yaml.safe_load(rules.EXCEPTIONS_FILE.read_text())
    bad = copy.deepcopy(doc)
    del bad["privilegedWorkloads"][1]["reason"]
    bad["privilegedWorkloads"][0]["allows"] = ["privileged", "root"]
    with pytest.raises(rules.ExceptionsError) as err:
        rules.parse_exceptions(bad, "exceptions.yaml")
    msg = str(err.value)
    assert "exceptions.yaml: privilegedWorkloads[1].reason: required" in msg
    assert "privilegedWorkloads[0].allows: 'root' is not allowed; allowed values: privileged, hostPath" in msg


def test_format_report_names_rule_resource_problem_and_fix():
    resources, outputs, _ = load_case("nodes-imdsv2", "fail")
    report = format_report(evaluate(resources, outputs))
    assert report.startswith("policy: 4 mandatory, 0 advisory violation(s)")  # + no root volume declared
    assert "[mandatory] nodes-imdsv2: aws:ec2/launchTemplate:LaunchTemplate system" in report
    assert "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass trn1 (trn1)" in report
    assert "fix: set metadataOptions.httpTokens to 'required'" in report
    assert format_report([]) == "policy: no violations"


def test_mandatory_violations_come_first():
    resources = [Resource("aws:kms/key:Key", "k", {}), Resource("aws:sqs/queue:Queue", "q", {})]
    assert [v.severity for v in evaluate(resources)] == ["mandatory", "advisory"]


# --------------------------------------------------------------------------- real renders


@pytest.fixture(scope="module")
def platform_render(tmp_path_factory):
    """dev-usw2 rendered to disk by the render command, read back as the policy sees it."""
    from trnctl.render import render_stack
    out = tmp_path_factory.mktemp("dev-usw2")
    _, problems = render_stack(REPO, "dev-usw2", out)
    assert problems == []
    return json.loads((out / "resources.json").read_text()), json.loads((out / "outputs.json").read_text())


def _find(records, typ, name=None):
    return next(r for r in records if r["type"] == typ and (name is None or r["name"] == name))


def test_weakened_platform_is_caught_with_the_right_messages(platform_render):
    """Public bucket, IMDSv1, an unpinned image and an unlimited accelerator pool, each
    planted in the real render, each reported by its rule."""
    records, outputs = copy.deepcopy(platform_render)
    assert evaluate(resources_from_records(records), outputs) == []

    _find(records, rules.PUBLIC_ACCESS_BLOCK)["inputs"]["blockPublicPolicy"] = False
    _find(records, rules.LAUNCH_TEMPLATE)["inputs"]["metadataOptions"]["httpTokens"] = "optional"
    pool = next(r for r in records if r["type"] == rules.NODE_POOL and r["inputs"]["metadata"]["name"] == "trn1-efa")
    del pool["inputs"]["spec"]["limits"]
    volcano = next(r for r in records if r["type"] == "kubernetes:helm.sh/v3:Release" and r["inputs"]["name"] == "volcano")
    volcano["inputs"]["values"]["basic"]["image_tag_version"] = "latest"

    found = {(v.rule, v.message) for v in evaluate(resources_from_records(records), outputs)}
    assert ("s3-private", "BucketPublicAccessBlock registry-artifacts: blockPublicPolicy not true") in found
    assert ("nodes-imdsv2", "metadataOptions.httpTokens is 'optional'; IMDSv1 stays enabled unless it is 'required'") in found
    assert ("nodes-accelerator-pool-limits", "no spec.limits: the pool can launch accelerator nodes without bound") in found
    assert ("k8s-images-pinned",
            "values.basic.image_tag_version: tag 'latest' is not an exact version (major.minor.patch) or a digest") in found
    assert len(found) == 4


def test_weakened_workload_is_caught():
    from tests.platform_helpers import rendered_workload
    result = rendered_workload("compile-usw2")
    records = copy.deepcopy([r.to_json() for r in result.resources])
    job = _find(records, "kubernetes:batch/v1:Job")
    container = job["inputs"]["spec"]["template"]["spec"]["containers"][0]
    container["image"] = container["image"].rsplit(":", 1)[0] + ":latest"
    del container["resources"]["limits"]
    container["env"].append({"name": "HF_TOKEN", "value": "hf_" + "x" * 34})
    found = {v.rule for v in evaluate(resources_from_records(records), result.masked_outputs())}
    assert found == {"k8s-images-pinned", "k8s-requests-limits", "k8s-no-secret-env-values"}


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_every_platform_stack_passes(stack):
    from tests.platform_helpers import rendered_platform
    result = rendered_platform(stack)
    violations = evaluate(resources_from_records([r.to_json() for r in result.resources]), result.masked_outputs())
    assert violations == [], format_report(violations)


@pytest.mark.parametrize("stack", WORKLOAD_STACKS)
def test_every_workload_stack_renders_and_passes(stack, tmp_path):
    from trnctl.render import render_stack
    _, problems = render_stack(REPO / "workloads", stack, tmp_path)
    assert problems == []
    records = json.loads((tmp_path / "resources.json").read_text())
    violations = evaluate(resources_from_records(records), json.loads((tmp_path / "outputs.json").read_text()))
    assert violations == [], format_report(violations)
    # A secure config value (rendered as a placeholder) must never reach a file in the clear.
    from trnctl.render import PLACEHOLDER_SECRET
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PLACEHOLDER_SECRET not in path.read_text(), f"{path} leaks a secret config value"


def test_rules_are_registered_domain_by_domain_in_a_fixed_order():
    """Reports list violations in registration order (within a severity): the package imports
    the domain modules nodes, iam, data, kubernetes in that order, whatever sorts imports."""
    domains = ["policy.rules.nodes", "policy.rules.iam", "policy.rules.data", "policy.rules.kubernetes"]
    order = [domains.index(rule.check.__module__) for rule in rules.RULES]
    assert order == sorted(order) and set(order) == {0, 1, 2, 3}
