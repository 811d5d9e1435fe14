"""Rule records, registration and evaluation: what every domain module builds on.

A rule is either a *resource rule* (one resource in, violations out) or a *stack rule*
(all resources and the stack outputs in: used where a check needs two resources, such as
a bucket and its public access block). Each has an id, a severity ("mandatory": the
render and `pulumi preview` fail; "advisory": reported only), what it checks, why, and
how to fix it.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable

UNKNOWN = "[unknown]"
SEVERITIES = ("mandatory", "advisory")


@dataclass(frozen=True)
class Resource:
    """One registered resource: its Pulumi type token, logical name and input properties
    (camelCase, as the provider receives them)."""
    type: str
    name: str
    props: dict[str, Any]
    urn: str = ""
    parent: str | None = None
    depends_on: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How reports name the resource: type token, logical name, and for Kubernetes
        objects their namespace/name."""
        meta = self.props.get("metadata") if is_k8s_object(self) else None
        if isinstance(meta, dict) and meta.get("name"):
            where = "/".join(str(p) for p in (meta.get("namespace"), meta.get("name")) if p)
            return f"{self.type} {self.name} ({where})"
        return f"{self.type} {self.name}"


@dataclass(frozen=True)
class Violation:
    rule: str
    severity: str  # mandatory | advisory
    resource: str  # Resource.label, or "stack outputs"
    message: str
    fix: str
    urn: str = ""


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    what: str
    why: str
    fix: str
    check: Callable[..., Iterable[str]]
    scope: str  # "resource": check(resource) | "stack": check(resources, outputs)
    types: tuple[str, ...] = ()  # resource rules: type tokens (fnmatch patterns) it looks at


RULES: list[Rule] = []


def resource_rule(id: str, severity: str, types: tuple[str, ...], *, what: str, why: str, fix: str):
    """Register `check(resource) -> iterable of messages` for resources of `types`."""
    def register(check: Callable[[Resource], Iterable[str]]):
        RULES.append(Rule(id, severity, what, why, fix, check, "resource", types))
        return check
    return register


def stack_rule(id: str, severity: str, *, what: str, why: str, fix: str):
    """Register `check(resources, outputs) -> iterable of (resource or None, message)`."""
    def register(check: Callable[[list[Resource], dict], Iterable[tuple[Resource | None, str]]]):
        RULES.append(Rule(id, severity, what, why, fix, check, "stack"))
        return check
    return register


def resources_from_records(records: Iterable[dict[str, Any]]) -> list[Resource]:
    """Resources from the render's resources.json entries
    (`{"type", "name", "urn", "inputs", "parent", "dependsOn"}`)."""
    out = []
    for rec in records:
        if rec["type"] == "pulumi:pulumi:Stack":
            continue
        out.append(Resource(type=rec["type"], name=rec["name"], props=rec.get("inputs") or {},
                            urn=rec.get("urn", ""), parent=rec.get("parent"),
                            depends_on=tuple(rec.get("dependsOn") or ())))
    return out


def rule_by_id(rule_id: str) -> Rule:
    for rule in RULES:
        if rule.id == rule_id:
            return rule
    raise KeyError(f"no policy rule {rule_id!r}; rules: {', '.join(r.id for r in RULES)}")


def applies(rule: Rule, resource_type: str) -> bool:
    return any(fnmatch.fnmatchcase(resource_type, t) for t in rule.types)


def check_resource(rule: Rule, r: Resource) -> list[Violation]:
    if not applies(rule, r.type):
        return []
    return [Violation(rule.id, rule.severity, r.label, msg, rule.fix, r.urn) for msg in rule.check(r)]


def check_stack(rule: Rule, resources: list[Resource], outputs: dict) -> list[Violation]:
    return [Violation(rule.id, rule.severity, r.label if r else "stack outputs", msg, rule.fix, r.urn if r else "")
            for r, msg in rule.check(resources, outputs)]


def evaluate(resources: list[Resource], outputs: dict[str, Any] | None = None) -> list[Violation]:
    """Every violation of every rule, mandatory first."""
    found: list[Violation] = []
    for rule in RULES:
        if rule.scope == "resource":
            for r in resources:
                found += check_resource(rule, r)
        else:
            found += check_stack(rule, resources, outputs or {})
    return sorted(found, key=lambda v: SEVERITIES.index(v.severity))


def format_report(violations: list[Violation]) -> str:
    """A readable report: one block per violation naming rule, resource, problem and fix."""
    if not violations:
        return "policy: no violations"
    counts = {s: sum(v.severity == s for v in violations) for s in SEVERITIES}
    lines = [f"policy: {counts['mandatory']} mandatory, {counts['advisory']} advisory violation(s)"]
    for v in violations:
        lines.append(f"  [{v.severity}] {v.rule}: {v.resource}")
        lines.append(f"      {v.message}")
        lines.append(f"      fix: {v.fix}")
    return "\n".join(lines)


def is_k8s_object(r: Resource) -> bool:
    """A Kubernetes object the program creates itself (not a chart, kustomization or provider)."""
    return r.type.startswith("kubernetes:") and not r.type.startswith(
        ("kubernetes:helm.sh/", "kubernetes:kustomize/", "kubernetes:yaml/", "pulumi:providers:"))
