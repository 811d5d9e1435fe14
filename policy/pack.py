"""Adapter: each rule of policy/rules/ as a pulumi-policy policy.

The Pulumi engine hands policies proxied property bags (values unknown at preview raise
on access, secrets arrive unwrapped); `plain()` turns them into the same plain dicts the
offline render records, with "[unknown]" for unknown values, so the rules run unchanged.

Constructing a `PolicyPack` starts the analyzer server and blocks; only __main__.py does
that. Tests call the validate callables built here with real `ResourceValidationArgs`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import (EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy,
                           StackValidationArgs, StackValidationPolicy)
from pulumi_policy import proxy as policy_proxy

from policy import rules

ENFORCEMENT = {"mandatory": EnforcementLevel.MANDATORY, "advisory": EnforcementLevel.ADVISORY}
UNKNOWN_SENTINELS = frozenset((
    policy_proxy.UNKNOWN_BOOLEAN_VALUE, policy_proxy.UNKNOWN_NUMBER_VALUE, policy_proxy.UNKNOWN_STRING_VALUE,
    policy_proxy.UNKNOWN_ARRAY_VALUE, policy_proxy.UNKNOWN_ASSET_VALUE, policy_proxy.UNKNOWN_ARCHIVE_VALUE,
    policy_proxy.UNKNOWN_OBJECT_VALUE))


def plain(value: Any) -> Any:
    """Plain dicts/lists from pulumi-policy's proxies; unknown values become "[unknown]"."""
    if isinstance(value, Mapping):
        raw = value["__target"] if isinstance(value, policy_proxy._DictProxy) else value
        return {k: plain(v) for k, v in raw.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        raw = value["__target"] if isinstance(value, policy_proxy._ListProxy) else value
        return [plain(v) for v in raw]
    if isinstance(value, str) and value in UNKNOWN_SENTINELS:
        return rules.UNKNOWN
    return value


def resource_from_args(args: ResourceValidationArgs) -> rules.Resource:
    return rules.Resource(type=args.resource_type, name=args.name, props=plain(args.props), urn=args.urn,
                          parent=args.opts.parent if args.opts else None)


def resource_from_policy_resource(r) -> rules.Resource:
    """A stack-validation `PolicyResource`; its dependencies (including property
    dependencies) bind e.g. a public access block to its bucket, as in the render."""
    deps = [d.urn for d in r.dependencies or []]
    deps += [d.urn for ds in (r.property_dependencies or {}).values() for d in ds]
    return rules.Resource(type=r.resource_type, name=r.name, props=plain(r.props), urn=r.urn,
                          parent=r.parent.urn if r.parent else None, depends_on=tuple(dict.fromkeys(deps)))


def stack_outputs(resources: list) -> dict[str, Any]:
    """The root stack resource's properties are the stack outputs the engine knows of."""
    for r in resources:
        if r.resource_type == "pulumi:pulumi:Stack":
            return plain(r.props)
    return {}


def _report(report_violation: ReportViolation, v: rules.Violation, urn: str | None) -> None:
    report_violation(f"{v.message}. Fix: {v.fix}", urn)


def resource_validator(rule: rules.Rule):
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for v in rules.check_resource(rule, resource_from_args(args)):
            _report(report_violation, v, None)  # the engine attributes it to the resource validated
    return validate


def stack_validator(rule: rules.Rule):
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [resource_from_policy_resource(r) for r in args.resources
                     if r.resource_type != "pulumi:pulumi:Stack"]
        for v in rules.check_stack(rule, resources, stack_outputs(args.resources)):
            _report(report_violation, v, v.urn or None)
    return validate


def policies() -> list:
    """One pulumi-policy policy per rule, its enforcement level from the rule's severity."""
    out = []
    for rule in rules.RULES:
        common = dict(name=rule.id, description=f"{rule.what}. Why: {rule.why}",
                      enforcement_level=ENFORCEMENT[rule.severity], remediation_steps=rule.fix)
        if rule.scope == "resource":
            out.append(ResourceValidationPolicy(validate=resource_validator(rule), **common))
        else:
            out.append(StackValidationPolicy(validate=stack_validator(rule), **common))
    return out
