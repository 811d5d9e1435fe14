"""Offline validation of rendered Kubernetes objects (trnctl/validation.py).

The fixtures under tests/fixtures/k8s/ are the project's shared examples: every file at the top
passes, every file in invalid/ fails with the messages asserted here.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import versions
from trnctl import validation
from trnctl.validation import (KubeVersionError, ValidationIssue, kube_minor, load_manifests,
                              prune_nulls_and_default, rule_outcome, validate_dir, validate_objects)

FIXTURES = Path(__file__).parent / "fixtures" / "k8s"
VALID_FILES = sorted(FIXTURES.glob("*.yaml"))
KUBE = "1.33"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((FIXTURES / name).read_text()) if d]


def issues_of(obj: dict, kube_version: str = KUBE, **kwargs) -> list[ValidationIssue]:
    return validate_objects([("test", obj)], kube_version, **kwargs).issues


def messages(issues) -> list[str]:
    return [f"{i.path}: {i.message}" for i in issues]


# --------------------------------------------------------------------------- shared examples


@pytest.mark.parametrize("path", VALID_FILES, ids=[p.name for p in VALID_FILES])
def test_every_shared_example_is_valid(path):
    report = validate_dir(path, KUBE)
    assert report.issues == []
    assert report.ok and not report.skipped
    assert sum(report.checked.values()) == len([d for d in yaml.safe_load_all(path.read_text()) if d])


def test_valid_examples_cover_every_custom_kind_and_run_cel_rules():
    report = validate_dir(FIXTURES, KUBE)
    custom = {f"{g['group']}/{g['version']}/{g['kind']}" for s in validation.crd_schemas().values()
              for g in s.schema["x-kubernetes-group-version-kind"]}
    assert custom - {"karpenter.sh/v1/NodeClaim"} <= set(report.checked)  # the platform creates no NodeClaim
    assert report.cel_evaluated > 100 and report.cel_transition_skipped > 0


def test_typo_is_unknown_field_with_did_you_mean():
    report = validate_dir(FIXTURES / "invalid" / "nodepool-typo.yaml", KUBE)
    typo = [i for i in report.issues if "unknown field" in i.message]
    assert len(typo) == 1
    issue = typo[0]
    assert (issue.source, issue.kind, issue.name, issue.path) == (
        "nodepool-typo.yaml", "karpenter.sh/v1/NodePool", "trainium", "spec.template.spec")
    assert issue.message.startswith("unknown field(s) ['requirments'] (did you mean 'requirements'?)")
    assert "spec.template.spec: 'requirements' is a required property" in messages(report.issues)


def test_wrong_type_and_enum():
    report = validate_dir(FIXTURES / "invalid" / "nodepool-wrong-type.yaml", KUBE)
    assert messages(report.issues) == [
        "spec.template.spec.requirements[2].operator: 'GreaterThan' is not one of "
        "['Gte', 'Lte', 'In', 'NotIn', 'Exists', 'DoesNotExist', 'Gt', 'Lt']",
        "spec.weight: 'ten' is not of type 'integer'",
    ]


def test_cel_rules_fail_as_the_api_server_would():
    report = validate_dir(FIXTURES / "invalid" / "cel-rules.yaml", KUBE)
    failed = {(i.kind, i.path, i.rule) for i in report.issues}
    assert all(i.rule for i in report.issues)  # only CEL failures: the objects are schema-valid
    assert len(failed) == 7
    by_path = {(i.kind.split("/")[-1], i.path): i.message for i in report.issues}
    assert by_path[("EC2NodeClass", "spec")] == "must specify exactly one of ['role', 'instanceProfile']"
    assert by_path[("EC2NodeClass", "spec.subnetSelectorTerms")] in (
        "subnetSelectorTerms cannot be empty",
        "'id' is mutually exclusive, cannot be set with a combination of other fields in a subnet selector term")
    assert by_path[("EC2NodeClass", "spec.amiSelectorTerms[0].alias")].startswith("family is not supported")
    assert by_path[("NodePool", "spec.template.spec.requirements[0].key")] == \
        'label domain "karpenter.sh" is restricted'
    assert by_path[("NodePool", "spec.template.spec.requirements")] == \
        "requirements with operator 'In' must have a value defined"
    assert [i.source for i in report.issues if i.kind.endswith("NodePool")][0] == "cel-rules.yaml:16"
    assert (report.cel_evaluated, report.cel_transition_skipped) == (43, 3)  # every rule on the path, once


def test_core_kinds_are_checked_strictly_by_kubernetes_schemas():
    report = validate_dir(FIXTURES / "invalid" / "core-kinds-invalid.yaml", KUBE)
    got = {(i.kind, i.path, i.message.split(";")[0]) for i in report.issues}
    assert got == {
        ("apps/v1/Deployment", "spec.template.spec.containers[0]",
         "unknown field(s) ['resource'] (did you mean 'resources'?)"),
        ("apps/v1/DaemonSet", "spec.template.spec.containers[0].ports[0].containerPort",
         "'80' is not of type 'integer'"),
        ("storage.k8s.io/v1/StorageClass", "<root>",
         "unknown field(s) ['volumeBindingMod'] (did you mean 'volumeBindingMode'?)"),
        ("batch/v1/Job", "spec.backoffLimit", "'1' is not of type 'integer', 'null'"),
        ("batch/v1/Job", "spec", "'template' is a required property"),  # every error, not the first only
        ("karpenter.sh/v1/NodePool", "spec", "'template' is a required property"),
    }


def test_mixed_errors_each_object_reports_its_own_problems():
    report = validate_dir(FIXTURES / "invalid" / "mixed-errors.yaml", KUBE)
    by_name: dict[str, list[str]] = {}
    for i in report.issues:
        by_name.setdefault(i.name, []).append(f"{i.path}: {i.message}")
    assert set(by_name) == {"bad-mpijob", "bad-ray", "bad-queue", "bad-nodeclass", "old"}
    assert "spec.slotsPerWorker: '32' is not of type 'integer'" in by_name["bad-mpijob"]
    assert any("(did you mean 'resources'?)" in m for m in by_name["bad-mpijob"])
    assert "spec.workerGroupSpecs[0].replicas: '2' is not of type 'integer'" in by_name["bad-ray"]
    assert any(m.startswith("metadata.labels.team: 'ml team' does not match") for m in by_name["bad-ray"])
    assert "spec.weight: 0 is less than the minimum of 1" in by_name["bad-queue"]
    assert any("(did you mean 'securityGroupSelectorTerms'?)" in m for m in by_name["bad-nodeclass"])
    assert by_name["old"] == ["<root>: NodePool is not served as 'karpenter.sh/v1beta1'; schemas exist only "
                              "for ['karpenter.sh/v1'] (removed or stale version?)"]


# --------------------------------------------------------------------------- kinds without a schema


WIDGET = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}


def test_unknown_kind_is_an_issue_in_strict_mode():
    report = validate_objects([("widget.yaml", WIDGET)], KUBE)
    assert not report.ok
    assert report.skipped == ["example.com/v1/Widget"]
    assert report.checked == {}
    [issue] = report.issues
    assert issue.source == "widget.yaml" and issue.kind == "example.com/v1/Widget" and issue.name == "w"
    assert "no schema for example.com/v1/Widget" in issue.message
    assert "no schema (not validated): example.com/v1/Widget" in report.summary()


def test_unknown_kind_is_only_listed_when_allowed():
    report = validate_objects([("widget.yaml", WIDGET)], KUBE, allow_unknown_kinds=True)
    assert report.ok and report.skipped == ["example.com/v1/Widget"]


def test_known_group_with_unknown_version_is_invalid_even_when_unknown_kinds_are_allowed():
    old = copy.deepcopy(docs("karpenter-nodepool.yaml")[0])
    old["apiVersion"] = "karpenter.sh/v1beta1"
    report = validate_objects([("old.yaml", old)], KUBE, allow_unknown_kinds=True)
    assert not report.ok and "not served as 'karpenter.sh/v1beta1'" in report.issues[0].message


def test_removed_builtin_version_names_the_served_ones():
    hpa = {"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"}}
    [issue] = issues_of(hpa)
    assert issue.message.startswith("HorizontalPodAutoscaler is not served as 'autoscaling/v2beta2'")
    assert "['autoscaling/v1', 'autoscaling/v2']" in issue.message


def test_kind_typo_in_a_known_group_suggests_the_kind():
    pool = copy.deepcopy(docs("karpenter-nodepool.yaml")[0])
    pool["kind"] = "NodePoool"
    [issue] = issues_of(pool)
    assert "(did you mean 'NodePool'?)" in issue.message


def test_custom_group_is_not_mistaken_for_a_builtin_with_the_same_short_name():
    # kubernetes-validate's files drop the group's domain: apps.example.com/v1 would read apps/v1
    fake = {"apiVersion": "apps.example.com/v1", "kind": "Deployment", "metadata": {"name": "d"}}
    report = validate_objects([("fake", fake)], KUBE)
    assert report.skipped == ["apps.example.com/v1/Deployment"] and not report.ok


def test_odd_kind_text_never_reaches_the_file_system():
    sneaky = {"apiVersion": "v1", "kind": "../../v1.33.0-local-strict/configmap", "metadata": {"name": "x"}}
    report = validate_objects([("sneaky", sneaky)], KUBE)
    assert report.checked == {} and report.skipped == ["v1/../../v1.33.0-local-strict/configmap"]


@pytest.mark.parametrize("doc", [["a", "list"], {"kind": "ConfigMap"}, {"apiVersion": "v1", "kind": 3}])
def test_document_that_is_not_a_kubernetes_object(doc):
    [issue] = issues_of(doc)
    assert issue.message.startswith("not a Kubernetes object")


# --------------------------------------------------------------------------- create semantics


def test_prune_nulls_and_default_is_pure_and_recursive():
    schema = {"type": "object", "properties": {
        "keep": {"type": ["string", "null"], "nullable": True},
        "drop": {"type": "string"},
        "mode": {"type": "string", "default": "auto"},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "port": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"}}}},
    }}
    obj = {"keep": None, "drop": None, "items": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}
    before = copy.deepcopy(obj)
    assert prune_nulls_and_default(obj, schema) == {
        "keep": None, "mode": "auto", "items": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}
    assert obj == before


def test_required_field_with_a_default_may_be_omitted():
    cluster = copy.deepcopy(docs("raycluster.yaml")[0])
    del cluster["spec"]["workerGroupSpecs"][0]["minReplicas"]  # required, default 0
    assert issues_of(cluster) == []


def test_null_values_are_pruned_like_the_api_server_does():
    pool = copy.deepcopy(docs("karpenter-nodepool.yaml")[0])
    pool["spec"]["weight"] = None
    assert issues_of(pool) == []
    pool["spec"]["weight"] = "ten"
    assert messages(issues_of(pool)) == ["spec.weight: 'ten' is not of type 'integer'"]


def test_list_map_keys_must_be_unique_after_defaults():
    cluster = copy.deepcopy(docs("raycluster.yaml")[0])
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["ports"].append({"containerPort": 6379, "name": "gcs-again"})  # protocol defaults to TCP on both
    [issue] = issues_of(cluster)
    assert issue.path == "spec.headGroupSpec.template.spec.containers[0].ports[2]"
    assert "containerPort=6379, protocol='TCP'" in issue.message and "same as [0]" in issue.message


def test_cel_rule_that_errors_on_a_schema_valid_object_is_reported():
    pool = copy.deepcopy(docs("karpenter-nodepool.yaml")[0])
    reqs = pool["spec"]["template"]["spec"]["requirements"]
    reqs.append({"key": "topology.kubernetes.io/zone", "operator": "In"})  # values absent
    issues = issues_of(pool)
    assert issues and all(i.rule for i in issues)
    assert any(i.path == "spec.template.spec.requirements" for i in issues)


def test_kubernetes_cel_string_functions():
    assert rule_outcome("self.split('@')[0] == 'al2023'", json.dumps("al2023@v20260903")) is None
    assert rule_outcome("self.split('@', 1) == ['a@b@c']", json.dumps("a@b@c")) is None
    assert rule_outcome("self.find('^([^/]+)') == 'karpenter.sh'", json.dumps("karpenter.sh/x")) is None
    assert rule_outcome("self.find('[0-9]+') == ''", json.dumps("abc")) is None
    assert rule_outcome("self.lowerAscii().indexOf('b') == 1", json.dumps("ABC")) is None
    assert rule_outcome("self.size() != 0", json.dumps([])) == "false"
    assert rule_outcome("self.missing == 1", json.dumps({})) not in (None, "false")  # an error text


# --------------------------------------------------------------------------- built-in kinds


def configmap(name: str, **meta) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": {"k": "v"}}


def test_builtin_metadata_gets_the_api_servers_name_and_label_checks():
    assert issues_of(configmap("ok.name-1", labels={"app.kubernetes.io/name": "x"})) == []
    assert messages(issues_of(configmap("Bad_Name")))[0].startswith(
        "metadata.name: 'Bad_Name' is not a valid ConfigMap name: must be a DNS-1123 subdomain")
    assert messages(issues_of(configmap("c", labels={"team": "ml team"})))[0].startswith(
        "metadata.labels.team: label value 'ml team' is invalid")
    assert messages(issues_of(configmap("c", annotations={"bad key!": "v"}))) == [
        "metadata.annotations.bad key!: key 'bad key!' is not a qualified name ([prefix/]name)"]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "eks:node-reader"}, "rules": []}
    assert issues_of(role) == []
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml.shared"}}
    assert "must be a DNS-1123 label" in issues_of(namespace)[0].message


def test_kube_version_is_honored():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"managedBy": "kueue.x-k8s.io/multikueue",  # JobSpec.managedBy is new in 1.30
                    "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}
    assert issues_of(job, "1.30") == []
    [issue] = issues_of(job, "1.29")
    assert issue.path == "spec" and issue.message.startswith("unknown field(s) ['managedBy']")
    assert validate_objects([("j", job)], "v1.30.4").kube_version == "1.30"


@pytest.mark.parametrize("version, expected", [
    ("1.38", "no bundled Kubernetes schemas for 1.38; supported: 1.25, "),
    ("1.24", "no bundled Kubernetes schemas for 1.24"),
    ("banana", "is not a Kubernetes version like '1.33'"),
])
def test_unsupported_kube_version_is_a_clear_error(version, expected, tmp_path):
    with pytest.raises(KubeVersionError, match=re.escape(expected)):
        kube_minor(version)
    with pytest.raises(KubeVersionError):
        validate_dir(tmp_path, version)


def test_project_kubernetes_versions_have_bundled_schemas():
    for version in versions.SUPPORTED_KUBERNETES_VERSIONS:
        assert kube_minor(version) == version


# --------------------------------------------------------------------------- files and CLI


def test_load_manifests_names_files_and_lines(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.yml").write_text(
        "---\n" + yaml.safe_dump(configmap("a"))
        + "---\n# empty document follows\n---\n" + yaml.safe_dump(configmap("b")))
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                                        "items": [configmap("c"), configmap("d")]}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    objects, unreadable = load_manifests(tmp_path)
    assert unreadable == []
    assert [s for s, _ in objects] == ["list.yaml items[0]", "list.yaml items[1]", "sub/two.yml:2", "sub/two.yml:11"]
    assert [o["metadata"]["name"] for _, o in objects] == ["c", "d", "a", "b"]


def test_unparseable_file_is_an_issue_naming_file_and_line(tmp_path):
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(configmap("good")))
    (tmp_path / "bad.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\ndata: 1\n")
    report = validate_dir(tmp_path, KUBE)
    [issue] = report.issues
    assert issue.source == "bad.yaml" and issue.message.startswith("cannot parse YAML")
    assert "line 3" in issue.message or "line 4" in issue.message
    assert report.checked == {"v1/ConfigMap": 1}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        validate_dir(tmp_path / "no-such-dir", KUBE)


def test_issue_and_summary_text():
    report = validate_dir(FIXTURES / "invalid" / "nodepool-wrong-type.yaml", KUBE)
    assert str(report.issues[-1]) == ("nodepool-wrong-type.yaml: karpenter.sh/v1/NodePool trainium: "
                                      "spec.weight: 'ten' is not of type 'integer'")
    cel_issue = ValidationIssue("s", "k", "n", "p", "m", rule="self.size() != 0")
    assert str(cel_issue).endswith("[CEL: self.size() != 0]")
    assert report.summary().startswith("validation (Kubernetes 1.33): 1 objects of 1 kinds, 2 issue(s) in 1 object(s)")


def test_cli_exit_codes(capsys):
    assert validation.main([str(FIXTURES), "--kube-version", KUBE]) == 1  # invalid/ is inside
    out = capsys.readouterr().out
    assert "invalid/nodepool-typo.yaml: karpenter.sh/v1/NodePool trainium: spec.template.spec: unknown field" in out
    assert validation.main([str(FIXTURES / "karpenter-nodepool.yaml"), "--kube-version", KUBE]) == 0
    assert validation.main([str(FIXTURES), "--kube-version", "1.99"]) == 2
    assert "supported: 1.25" in capsys.readouterr().err


def test_cli_runs_as_a_module(tmp_path):
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(WIDGET))
    cmd = [sys.executable, "-m", "trnctl", "validate", str(tmp_path)]
    strict = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60)
    assert strict.returncode == 1 and "no schema for example.com/v1/Widget" in strict.stdout
    relaxed = subprocess.run(cmd + ["--allow-unknown-kinds"], capture_output=True, text=True,
                             cwd=Path(__file__).parent.parent, timeout=60)
    assert relaxed.returncode == 0 and "no schema (not validated): example.com/v1/Widget" in relaxed.stdout


# --------------------------------------------------------------------------- the schema files


SCHEMA_FILES = sorted(validation.SCHEMA_DIR.glob("*.json"))


def _closed_objects(node, inside_combinator=False, path="#"):
    """Paths of objects with `properties` but no `additionalProperties` outside combinators."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node and not inside_combinator:
            yield path
        for key, value in node.items():
            child_inside = inside_combinator or key in ("allOf", "anyOf", "oneOf", "not")
            if key == "properties":
                for name, sub in value.items():
                    yield from _closed_objects(sub, child_inside, f"{path}/properties/{name}")
            else:
                yield from _closed_objects(value, child_inside, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _closed_objects(value, inside_combinator, f"{path}/{i}")


def _rules(node):
    if isinstance(node, dict):
        yield from (r["rule"] for r in node.get("x-kubernetes-validations", []))
        for value in node.values():
            yield from _rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _rules(value)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=[p.name for p in SCHEMA_FILES])
def test_schema_file_invariants(path):
    schema = json.loads(path.read_text())
    assert re.search(r"@ \S+ .*\(commit [0-9a-f]{40}\)", schema["x-source"])
    [gvk] = schema["x-kubernetes-group-version-kind"]
    assert path.name == f"{gvk['group']}_{gvk['version']}_{gvk['kind'].lower()}.json"
    assert list(_closed_objects(schema)) == []  # unknown fields are rejected everywhere
    for rule in _rules(schema):
        validation.cel_program(rule)  # cel-python compiles every rule


def test_schema_sources_match_the_pinned_releases():
    sources = {p.name: json.loads(p.read_text())["x-source"] for p in SCHEMA_FILES}
    pins = {"karpenter": f"@ v{versions.KARPENTER_VERSION} ", "ray.io": f"@ v{versions.KUBERAY_VERSION} ",
            "volcano": f"@ v{versions.VOLCANO_VERSION} ", "mpijob": f"@ {versions.MPI_OPERATOR_VERSION} "}
    for name, source in sources.items():
        for marker, pin in pins.items():
            if marker in name:
                assert pin in source, f"{name} is from {source!r}, but infra/versions.py pins {pin.strip()}"
