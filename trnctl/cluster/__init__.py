"""The cluster model: what the cluster will do with our objects where they meet, checked at
every render and by `trnctl validate` over a platform render and the workload renders that
reference it.

One module per rule family, each a function `check(model) -> list[Finding]`:
reachability (NetworkPolicies against the flows the platform needs), scheduling (pools,
instance types, zones), waits (pulumi-kubernetes' await logic against how long each step
takes), order (create and destroy order from the dependency graph), disruption (PDBs,
do-not-disrupt, expireAfter). Pods of operator-controlled kinds come from `trnctl.operators`
(one module per operator), never from a restatement here.

Findings use the policy pack's severities: "mandatory" blocks a render (exit code 1, like a
mandatory policy violation), "advisory" is printed only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

import yaml

from trnctl.operators.kubernetes import match_expression  # noqa: F401  (Kubernetes' rule; re-exported for the rule families)

MANDATORY = "mandatory"
ADVISORY = "advisory"


@dataclass(frozen=True)
class Finding:
    rule: str                 # "reachability/prometheus-scrape"
    severity: str             # MANDATORY or ADVISORY
    objects: tuple[str, ...]  # "Kind namespace/name" of every object involved
    message: str              # what breaks and the fix

    def __str__(self) -> str:
        return f"cluster {self.rule} ({self.severity}) on {', '.join(self.objects)}: {self.message}"


@dataclass
class Render:
    """One rendered stack as the model reads it: resources.json rows, Kubernetes objects, Helm releases."""
    project: str
    stack: str
    records: list[dict]
    objects: list[dict]
    releases: list[dict] = field(default_factory=list)  # {release, namespace, chart, version, values}
    outputs: dict = field(default_factory=dict)

    @property
    def is_platform(self) -> bool:
        from infra.config import PROJECT
        return self.project == PROJECT

    def references(self) -> list[str]:
        """Stacks this render reads through a StackReference (`org/project/stack`)."""
        return [r["inputs"].get("name", r["name"]) for r in self.records if r["type"] == "pulumi:pulumi:StackReference"]


def render_from_result(result) -> Render:
    """A Render from `trnctl.render.RenderResult` (in-process, no files)."""
    releases = [_release_doc(r.to_json()) for r in result.resources if r.type == "kubernetes:helm.sh/v3:Release"]
    return Render(result.project, result.stack, [r.to_json() for r in result.resources],
                  [obj for _, obj in result.manifests], releases, dict(result.outputs))


def _release_doc(record: dict) -> dict:
    i = record["inputs"]
    return {"release": i.get("name", record["name"]), "namespace": i.get("namespace"), "chart": i.get("chart"),
            "version": i.get("version"), "values": i.get("values") or {},
            "createNamespace": bool(i.get("createNamespace")), "urn": record["urn"]}


def render_from_dir(path: Path) -> Render:
    """A Render from a render directory (resources.json, outputs.json, manifests/)."""
    path = Path(path)
    records = json.loads((path / "resources.json").read_text())
    outputs = json.loads((path / "outputs.json").read_text()) if (path / "outputs.json").exists() else {}
    objects = [yaml.safe_load(p.read_text()) for p in sorted((path / "manifests").glob("*.yaml"))]
    project, stack = _project_stack(records, path.name)
    releases = [_release_doc(r) for r in records if r["type"] == "kubernetes:helm.sh/v3:Release"]
    return Render(project, stack, records, [o for o in objects if isinstance(o, dict)], releases, outputs)


def _project_stack(records: list[dict], fallback: str) -> tuple[str, str]:
    # urn:pulumi:<stack>::<project>::<type>::<name>
    for r in records:
        parts = r["urn"].split("::")
        if len(parts) >= 2:
            return parts[1], parts[0].removeprefix("urn:pulumi:")
    return "?", fallback


def _with_references(result) -> list:
    out, todo = [], [result]
    while todo:
        r = todo.pop()
        if all(r is not seen for seen in out):
            out.append(r)
            todo += list(getattr(r, "referenced", []) or [])
    return out


def findings_for_result(result) -> list[Finding]:
    """The cluster model over a render and the stacks it references (a workload render brings its
    platform render along), for the model that holds `result`."""
    renders = [render_from_result(r) for r in _with_references(result)]
    found = []
    for model in models_for(renders):
        if any(r.stack == result.stack and r.project == result.project for r in model.renders):
            found += check(model)
    return found


def find_renders(root: Path) -> list[Path]:
    """Every render directory (one holding resources.json) at or under `root`."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("resources.json")}) if root.is_dir() else []


# --------------------------------------------------------------------------- the model


def obj_id(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')} {ns}{meta.get('name', '?')}"


def labels_of(obj: dict) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def match_selector(selector: dict | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels AND every matchExpression (In, NotIn, Exists,
    DoesNotExist); an empty selector matches everything, a missing one (None) nothing
    (kubernetes/apimachinery pkg/apis/meta/v1/helpers.go, LabelSelectorAsSelector)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(match_expression(e, labels) for e in selector.get("matchExpressions") or [])


@dataclass
class Model:
    platform: Render
    workloads: list[Render] = field(default_factory=list)

    @property
    def renders(self) -> list[Render]:
        return [self.platform, *self.workloads]

    @cached_property
    def objects(self) -> list[dict]:
        return [o for r in self.renders for o in r.objects]

    def of_kind(self, *kinds: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") in kinds]

    def release(self, chart_suffix: str) -> dict | None:
        """The platform's Helm release of a chart (by chart name or OCI reference suffix)."""
        for rel in self.platform.releases:
            if str(rel.get("chart") or "").rsplit("/", 1)[-1] == chart_suffix:
                return rel
        return None

    @cached_property
    def namespaces(self) -> dict[str, dict[str, str]]:
        """Namespace -> labels, incl. the API server's automatic `kubernetes.io/metadata.name`
        (kubernetes/kubernetes@v1.34.0 pkg/registry/core/namespace/strategy.go, PrepareForCreate,
        GA since 1.22), for the namespaces we create and the ones Helm creates (createNamespace)."""
        out: dict[str, dict[str, str]] = {n: {} for n in ("default", "kube-system")}
        for rel in self.platform.releases:
            if rel.get("namespace"):
                out.setdefault(rel["namespace"], {})
        for ns in self.of_kind("Namespace"):
            out[ns["metadata"]["name"]] = labels_of(ns)
        for o in self.objects:
            ns = (o.get("metadata") or {}).get("namespace")
            if ns:
                out.setdefault(ns, {})
        return {name: {**labels, "kubernetes.io/metadata.name": name} for name, labels in out.items()}

    @cached_property
    def operator_context(self):
        from trnctl import operators
        return operators.Context.from_helm_releases(self.platform.releases)

    @cached_property
    def pods(self) -> list[dict]:
        """Every pod the workload renders make, as the controllers (built-in and operators)
        create them: `trnctl.operators.all_pods`."""
        from trnctl import operators
        return operators.all_pods(self.workload_objects_with_controllers, self.operator_context)

    @cached_property
    def workload_objects_with_controllers(self) -> list[dict]:
        """The workload objects, less those whose operator module does not exist (yet): a
        ScaledObject (trnctl.operators.keda) makes no pods of its own, it scales a Deployment."""
        from trnctl import operators
        out = []
        for obj in (o for r in self.workloads for o in r.objects):
            try:
                operators.controller_for(obj)
            except ModuleNotFoundError:
                continue
            out.append(obj)
        return out

    @cached_property
    def services(self) -> list[dict]:
        """Our Services and the ones operators create (KubeRay head, Volcano job Service)."""
        from trnctl import operators
        return [*self.platform_services, *operators.all_services(self.workload_objects_with_controllers,
                                                                  self.operator_context)]

    @property
    def platform_services(self) -> list[dict]:
        return [o for o in self.platform.objects if o.get("kind") == "Service"]


def models_for(renders: Iterable[Render]) -> list[Model]:
    """One model per platform render, with every workload render that references it (directly
    or through another workload, e.g. llm-serve -> lora-finetune -> platform)."""
    renders = list(renders)
    platforms = {r.stack: r for r in renders if r.is_platform}
    models = {name: Model(p) for name, p in platforms.items()}
    by_stack = {r.stack: r for r in renders}

    def platform_of(r: Render, seen: frozenset = frozenset()) -> str | None:
        for ref in r.references():
            stack = ref.rsplit("/", 1)[-1]
            if stack in platforms:
                return stack
            if stack in by_stack and stack not in seen:
                found = platform_of(by_stack[stack], seen | {stack})
                if found:
                    return found
        return None

    for r in renders:
        if not r.is_platform and (name := platform_of(r)):
            models[name].workloads.append(r)
    return list(models.values())


RuleFamily = Callable[[Model], list[Finding]]


def rule_families() -> list[tuple[str, RuleFamily]]:
    from trnctl.cluster import disruption, order, reachability, scheduling, waits
    return [("reachability", reachability.check), ("scheduling", scheduling.check), ("waits", waits.check),
            ("order", order.check), ("disruption", disruption.check)]


def check(model: Model) -> list[Finding]:
    findings: list[Finding] = []
    for _, family in rule_families():
        findings += family(model)
    return findings


def format_findings(findings: list[Finding]) -> str:
    if not findings:
        return "cluster model: no findings"
    lines = [f"cluster model: {len(findings)} finding(s)"]
    lines += [f"  - {f}" for f in findings]
    return "\n".join(lines)
