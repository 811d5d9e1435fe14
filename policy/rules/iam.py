"""IAM rules: no wildcard actions, no writes on any resource, no admin policies, one service account per role."""
from __future__ import annotations

import re
from typing import Iterator

from policy.rules.base import Resource, resource_rule, stack_rule
from policy.rules.exceptions import Exceptions, WriteOnAnyResource, exceptions
from policy.rules.helpers import as_list, policy_document, statements

POLICY_DOC_TYPES = ("aws:iam/policy:Policy", "aws:iam/rolePolicy:RolePolicy", "aws:iam/userPolicy:UserPolicy",
                    "aws:iam/groupPolicy:GroupPolicy")
ROLE = "aws:iam/role:Role"
POD_IDENTITY_ASSOCIATION = "aws:eks/podIdentityAssociation:PodIdentityAssociation"


def permission_documents(r: Resource) -> list[tuple[str, dict]]:
    """(where, document) for every permissions policy a resource carries."""
    if r.type in POLICY_DOC_TYPES:
        doc = policy_document(r.props.get("policy"))
        return [("policy", doc)] if doc else []
    if r.type == ROLE:
        out = []
        for i, p in enumerate(r.props.get("inlinePolicies") or []):
            doc = policy_document(p.get("policy"))
            if doc:
                out.append((f"inlinePolicies[{i}] ({p.get('name', '?')})", doc))
        return out
    return []


def allow_statements(r: Resource) -> Iterator[tuple[str, dict]]:
    for where, doc in permission_documents(r):
        for i, s in enumerate(statements(doc)):
            if s.get("Effect") == "Allow":
                yield f"{where} Statement[{i}]{' (' + s['Sid'] + ')' if s.get('Sid') else ''}", s


@resource_rule("iam-no-wildcard-actions", "mandatory", POLICY_DOC_TYPES + (ROLE,),
               what="no Allow statement grants `*`, `<service>:*` or NotAction",
               why="wildcard actions grant every current and future API of a service, including IAM and data deletion",
               fix="list the actions the workload calls, e.g. s3:GetObject, s3:PutObject")
def check_wildcard_actions(r: Resource) -> Iterator[str]:
    for where, s in allow_statements(r):
        if "NotAction" in s:
            yield f"{where}: Allow with NotAction grants everything except the listed actions"
        for a in as_list(s.get("Action")):
            if a == "*" or (isinstance(a, str) and a.endswith(":*")):
                yield f"{where}: grants {a!r}"


def is_read_only(action: str, verbs: tuple[str, ...]) -> bool:
    _, _, name = action.partition(":")
    return any(name.startswith(v) for v in verbs)


def _condition_keys(s: dict) -> set[str]:
    return {k for block in (s.get("Condition") or {}).values() if isinstance(block, dict) for k in block}


def write_exception_for(action: str, s: dict, exc: Exceptions) -> WriteOnAnyResource | None:
    keys = _condition_keys(s)
    for e in exc.write_on_any_resource:
        if action in e.actions and any(k.startswith(p) for k in keys for p in e.condition_key_prefixes):
            return e
    return None


@resource_rule("iam-no-write-on-any-resource", "mandatory", POLICY_DOC_TYPES + (ROLE,),
               what="write actions are scoped to resource ARNs; `Resource: *` only for reads and the exceptions "
                    "in policy/exceptions.yaml (with the condition keys listed there)",
               why="a write on `*` reaches every bucket, queue, instance or key in the account, not just this platform's",
               fix="name the ARNs (bucket/prefix, queue, role); if AWS has no resource-level permission for the action, "
                   "add it to policy/exceptions.yaml with its reason and scope it with condition keys")
def check_write_on_any_resource(r: Resource) -> Iterator[str]:
    exc = exceptions()
    for where, s in allow_statements(r):
        if "NotResource" in s:
            yield f"{where}: Allow with NotResource applies to every resource except those listed"
            continue
        if "*" not in as_list(s.get("Resource")):
            continue
        for a in as_list(s.get("Action")):
            if isinstance(a, str) and not is_read_only(a, exc.read_only_verbs) and not write_exception_for(a, s, exc):
                yield f"{where}: write action {a!r} on Resource '*'"


ADMIN_POLICY = re.compile(r":policy/(AdministratorAccess|PowerUserAccess|IAMFullAccess|[A-Za-z0-9]*FullAccess)$")


@resource_rule("iam-no-admin-managed-policies", "mandatory", ("aws:iam/rolePolicyAttachment:RolePolicyAttachment", ROLE),
               what="no role gets AdministratorAccess, PowerUserAccess or a *FullAccess managed policy",
               why="these grant far more than any node, controller or workload of the platform needs",
               fix="attach the narrow AWS managed policy (e.g. AmazonEKSWorkerNodePolicy) or an inline policy with named actions")
def check_admin_policies(r: Resource) -> Iterator[str]:
    arns = as_list(r.props.get("policyArn")) + as_list(r.props.get("managedPolicyArns"))
    for arn in arns:
        if isinstance(arn, str) and ADMIN_POLICY.search(arn):
            yield f"attaches {arn}"


SERVICE_ACCOUNT_SUB = re.compile(r"^system:serviceaccount:[a-z0-9]([-a-z0-9]*[a-z0-9])?:[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")


def _principals(s: dict, kind: str) -> list[str]:
    p = s.get("Principal")
    if p == "*":
        return ["*"]
    return [str(v) for v in as_list((p or {}).get(kind))] if isinstance(p, dict) else []


def trust_problems(doc: dict) -> Iterator[str]:
    """IRSA trust: each web-identity statement pins `<issuer>:sub` with StringEquals to one
    `system:serviceaccount:<ns>:<sa>`; no statement trusts everyone."""
    for i, s in enumerate(statements(doc)):
        if s.get("Effect") != "Allow":
            continue
        if s.get("Principal") == "*" or "*" in _principals(s, "AWS"):
            yield f"Statement[{i}]: trusts Principal '*' (any AWS account)"
        if not any("oidc-provider/" in f for f in _principals(s, "Federated")):
            continue
        cond = s.get("Condition") or {}
        subs = {k: v for k, v in (cond.get("StringEquals") or {}).items() if k.endswith(":sub")}
        loose = [k for op, block in cond.items() if op != "StringEquals" and isinstance(block, dict)
                 for k in block if k.endswith(":sub")]
        if loose:
            yield f"Statement[{i}]: the :sub condition uses an operator other than StringEquals"
        if not subs:
            yield f"Statement[{i}]: web identity without a StringEquals condition on <issuer>:sub " \
                  f"(any service account of the cluster could assume the role)"
        for key, value in subs.items():
            values = as_list(value)
            if len(values) != 1 or not SERVICE_ACCOUNT_SUB.match(str(values[0])):
                yield f"Statement[{i}]: {key} is {value!r}; expected exactly one system:serviceaccount:<namespace>:<name>"


def trusts_pod_identity(doc: dict) -> bool:
    return any("pods.eks.amazonaws.com" in _principals(s, "Service") for s in statements(doc)
               if s.get("Effect") == "Allow")


@stack_rule("iam-service-account-trust", "mandatory",
            what="service-account roles trust exactly one namespace/service account: IRSA by a StringEquals "
                 "condition on <issuer>:sub, Pod Identity by exactly one PodIdentityAssociation",
            why="a role any pod can assume hands its S3/EC2 permissions to every workload in the cluster",
            fix="IRSA: Condition StringEquals {'<issuer>:sub': 'system:serviceaccount:<ns>:<sa>'}; Pod Identity: "
                "one aws.eks.PodIdentityAssociation per role with its namespace and serviceAccount")
def check_service_account_trust(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    associations = [r for r in resources if r.type == POD_IDENTITY_ASSOCIATION]
    for role in (r for r in resources if r.type == ROLE):
        doc = policy_document(role.props.get("assumeRolePolicy"))
        if doc is None:
            continue
        for problem in trust_problems(doc):
            yield role, problem
        if not trusts_pod_identity(doc):
            continue
        name = role.props.get("name")
        bound = [a for a in associations if role.urn in a.depends_on
                 or (name and str(a.props.get("roleArn", "")).endswith(f":role/{name}"))]
        if len(bound) != 1:
            yield role, f"trusts pods.eks.amazonaws.com and is bound by {len(bound)} PodIdentityAssociations " \
                        f"(expected exactly one)"
        for a in bound:
            for key in ("namespace", "serviceAccount"):
                value = a.props.get(key)
                if not value or (isinstance(value, str) and any(c in value for c in "*?")):
                    yield role, f"PodIdentityAssociation {a.name}: {key} is {value!r}"
