"""Security and cost guardrails as plain functions over resource records.

The offline render (`python -m infra.render`) and `pulumi preview --policy-pack policy`
run exactly these functions: the render builds `Resource` records from what its mock
runtime recorded, the policy pack (policy/pack.py) from what the Pulumi engine sends.

    violations = evaluate(resources, outputs)
    print(format_report(violations))

A rule is either a *resource rule* (one resource in, violations out) or a *stack rule*
(all resources and the stack outputs in: used where a check needs two resources, such as
a bucket and its public access block). Each rule has an id, a severity ("mandatory":
the render and `pulumi preview` fail; "advisory": reported only), what it checks, why,
and how to fix it; policy/README.md lists them. Allowed exceptions, each with its reason,
live in policy/exceptions.yaml.

Values that are not known before deployment (IDs, ARNs at preview) arrive as the string
"[unknown]"; rules treat them as "set, value unknown" and never fail on them.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

POLICY_DIR = Path(__file__).resolve().parent
EXCEPTIONS_FILE = POLICY_DIR / "exceptions.yaml"

UNKNOWN = "[unknown]"
SECRET_MASK = "[secret]"
SEVERITIES = ("mandatory", "advisory")


# --------------------------------------------------------------------------- records


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


# --------------------------------------------------------------------------- exceptions


@dataclass(frozen=True)
class WriteOnAnyResource:
    actions: tuple[str, ...]
    condition_key_prefixes: tuple[str, ...]  # the statement must carry one of these keys
    reason: str


@dataclass(frozen=True)
class PrivilegedWorkload:
    name: str  # fnmatch pattern on metadata.name
    namespace: str
    allows: tuple[str, ...]  # subset of PRIVILEGE_FEATURES
    reason: str


@dataclass(frozen=True)
class Exceptions:
    read_only_verbs: tuple[str, ...]
    write_on_any_resource: tuple[WriteOnAnyResource, ...]
    privileged_workloads: tuple[PrivilegedWorkload, ...]


PRIVILEGE_FEATURES = ("privileged", "hostPath", "hostNetwork", "hostPID", "hostIPC")


class ExceptionsError(ValueError):
    pass


def parse_exceptions(doc: Any, source: str = str(EXCEPTIONS_FILE)) -> Exceptions:
    """Validate the exceptions file: every entry needs a reason, and names only known keys."""
    problems: list[str] = []

    def need(entry: dict, key: str, where: str, typ: type) -> Any:
        value = entry.get(key)
        if not isinstance(value, typ) or not value:
            problems.append(f"{source}: {where}.{key}: required, a non-empty {typ.__name__}")
            return typ()
        return value

    if not isinstance(doc, dict):
        raise ExceptionsError(f"{source}: expected a mapping with keys iam, privilegedWorkloads")
    iam = doc.get("iam") or {}
    verbs = need(iam, "readOnlyVerbs", "iam", list)
    need(iam, "readOnlyReason", "iam", str)
    writes = []
    for i, e in enumerate(iam.get("writeOnAnyResource") or []):
        where = f"iam.writeOnAnyResource[{i}]"
        writes.append(WriteOnAnyResource(tuple(need(e, "actions", where, list)),
                                         tuple(need(e, "conditionKeyPrefixes", where, list)),
                                         need(e, "reason", where, str)))
    pods = []
    for i, e in enumerate(doc.get("privilegedWorkloads") or []):
        where = f"privilegedWorkloads[{i}]"
        allows = tuple(need(e, "allows", where, list))
        for a in allows:
            if a not in PRIVILEGE_FEATURES:
                problems.append(f"{source}: {where}.allows: {a!r} is not allowed; allowed values: {', '.join(PRIVILEGE_FEATURES)}")
        pods.append(PrivilegedWorkload(need(e, "name", where, str), need(e, "namespace", where, str), allows,
                                       need(e, "reason", where, str)))
    if problems:
        raise ExceptionsError("invalid policy exceptions:\n  - " + "\n  - ".join(problems))
    return Exceptions(tuple(verbs), tuple(writes), tuple(pods))


@functools.lru_cache(maxsize=None)
def exceptions() -> Exceptions:
    return parse_exceptions(yaml.safe_load(EXCEPTIONS_FILE.read_text()))


# --------------------------------------------------------------------------- helpers


def is_unknown(value: Any) -> bool:
    return value == UNKNOWN


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def truthy(value: Any) -> bool:
    """Booleans as providers take them: true, "true" (launch templates use strings)."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


NEURON_INSTANCE = re.compile(r"^(trn|inf)\d+[a-z]*\.")
NEURON_FAMILY = re.compile(r"^(trn|inf)\d+[a-z]*$")


def is_neuron_instance_type(name: str) -> bool:
    return bool(NEURON_INSTANCE.match(name))


def is_k8s_object(r: Resource) -> bool:
    """A Kubernetes object the program creates itself (not a chart, kustomization or provider)."""
    return r.type.startswith("kubernetes:") and not r.type.startswith(
        ("kubernetes:helm.sh/", "kubernetes:kustomize/", "kubernetes:yaml/", "pulumi:providers:"))


def kind_of(r: Resource) -> str:
    return r.props.get("kind") or r.type.rsplit(":", 1)[-1]


def policy_document(value: Any) -> dict | None:
    """An IAM policy document from a JSON string or dict; None while unknown."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or is_unknown(value) or not value.strip():
        return None
    try:
        doc = json.loads(value)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def statements(doc: dict | None) -> list[dict]:
    if not doc:
        return []
    return [s for s in as_list(doc.get("Statement")) if isinstance(s, dict)]


def refers_to_bucket(child: Resource, bucket: Resource) -> bool:
    """`child` (a public access block, policy...) belongs to `bucket`: it depends on it
    (its `bucket` input is the bucket's output), or names the bucket's explicit name."""
    if bucket.urn and bucket.urn in child.depends_on:
        return True
    ref, name = child.props.get("bucket"), bucket.props.get("bucket")
    return bool(ref) and not is_unknown(ref) and ref == name


def pod_specs(obj: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every pod spec inside a Kubernetes object, whatever the kind (Deployment, Job,
    MPIJob replica specs, RayCluster head and worker groups...): a mapping with `containers`."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield path or "spec", obj
        for k, v in obj.items():
            if k not in ("containers", "initContainers"):
                yield from pod_specs(v, f"{path}.{k}" if path else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from pod_specs(v, f"{path}[{i}]")


def containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            if isinstance(c, dict):
                yield f"{key}[{i}] ({c.get('name', '?')})", c


def metadata(r: Resource) -> dict:
    meta = r.props.get("metadata")
    return meta if isinstance(meta, dict) else {}


# --------------------------------------------------------------------------- nodes

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ASG = "aws:autoscaling/group:Group"
NEURON_TAINT = "aws.amazon.com/neuron"


def _node_class_spec(r: Resource) -> dict:
    return r.props if r.type == LAUNCH_TEMPLATE else (r.props.get("spec") or {})


@resource_rule("nodes-imdsv2", "mandatory", (LAUNCH_TEMPLATE, NODE_CLASS),
               what="every launch template and EC2NodeClass requires IMDSv2 (metadataOptions.httpTokens: required)",
               why="IMDSv1 answers any request from the node, so an SSRF in a pod can read the node role's credentials",
               fix="set metadataOptions.httpTokens to 'required' (and httpPutResponseHopLimit 1 so pods cannot reach IMDS)")
def check_imdsv2(r: Resource) -> Iterator[str]:
    tokens = (_node_class_spec(r).get("metadataOptions") or {}).get("httpTokens")
    if tokens != "required" and not is_unknown(tokens):
        yield f"metadataOptions.httpTokens is {tokens!r}; IMDSv1 stays enabled unless it is 'required'"


@resource_rule("nodes-encrypted-root", "mandatory", (LAUNCH_TEMPLATE, NODE_CLASS),
               what="every node volume declared by a launch template or EC2NodeClass is EBS-encrypted",
               why="node disks hold images, checkpoints and the compile cache; unencrypted volumes and snapshots leak them",
               fix="declare blockDeviceMappings for the root volume with ebs.encrypted: true")
def check_encrypted_root(r: Resource) -> Iterator[str]:
    mappings = _node_class_spec(r).get("blockDeviceMappings")
    if is_unknown(mappings):
        return
    if not mappings:
        yield "no blockDeviceMappings: the root volume takes the AMI default, which is not necessarily encrypted"
        return
    for i, m in enumerate(mappings):
        ebs = m.get("ebs") or {}
        if not truthy(ebs.get("encrypted")) and not is_unknown(ebs.get("encrypted")):
            yield f"blockDeviceMappings[{i}] ({m.get('deviceName', '?')}): ebs.encrypted is {ebs.get('encrypted')!r}"


# Requirement keys that decide which instance types a NodePool may launch.
INSTANCE_SELECTORS = ("node.kubernetes.io/instance-type", "karpenter.k8s.aws/instance-family",
                      "karpenter.k8s.aws/instance-category")


def _is_neuron_value(key: str, value: str) -> bool:
    if key == "node.kubernetes.io/instance-type":
        return is_neuron_instance_type(value)
    if key == "karpenter.k8s.aws/instance-family":
        return bool(NEURON_FAMILY.match(value))
    return value in ("trn", "inf")  # instance-category


def pool_selects_neuron(spec: dict) -> bool | None:
    """True if the NodePool may launch trn/inf instances, False if its requirements rule
    them out, None if nothing restricts the instance types (it may launch anything)."""
    reqs = ((spec.get("template") or {}).get("spec") or {}).get("requirements") or []
    restricted = False
    for q in reqs:
        key, op, values = q.get("key"), q.get("operator"), [str(v) for v in q.get("values") or []]
        if key not in INSTANCE_SELECTORS:
            continue
        if op == "In":
            restricted = True
            if any(_is_neuron_value(key, v) for v in values):
                return True
        elif op == "NotIn" and key == "karpenter.k8s.aws/instance-category" and {"trn", "inf"} <= set(values):
            restricted = True
    return False if restricted else None


def _pool_spec(r: Resource) -> dict:
    return r.props.get("spec") or {}


@resource_rule("nodes-accelerator-pool-limits", "mandatory", (NODE_POOL,),
               what="NodePools that may launch trn/inf instances have `limits` and can scale to zero nodes",
               why="accelerator nodes cost $1-$25 per hour each; a pool without limits can grow without bound, "
                   "and one that never removes empty nodes keeps paying for idle accelerators",
               fix="set spec.limits (cpu, memory, aws.amazon.com/neuron = max nodes x per-node), no spec.replicas, "
                   "consolidateAfter other than Never and a disruption budget that lets empty nodes go")
def check_accelerator_pool_limits(r: Resource) -> Iterator[str]:
    spec = _pool_spec(r)
    if not pool_selects_neuron(spec):
        return
    limits = spec.get("limits") or {}
    if not limits:
        yield "no spec.limits: the pool can launch accelerator nodes without bound"
    elif not any(k in limits for k in ("cpu", NEURON_TAINT)):
        yield f"spec.limits {limits} bounds neither cpu nor {NEURON_TAINT}"
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas > 0:
        yield f"spec.replicas is {replicas}: static capacity keeps {replicas} accelerator node(s) running while idle"
    disruption = spec.get("disruption") or {}
    if disruption.get("consolidateAfter") == "Never":
        yield "disruption.consolidateAfter is Never: empty accelerator nodes are never removed"
    for i, b in enumerate(disruption.get("budgets") or []):
        reasons = b.get("reasons")
        if str(b.get("nodes")) in ("0", "0%") and not b.get("schedule") and (not reasons or "Empty" in reasons):
            yield f"disruption.budgets[{i}] allows 0 nodes for {'all reasons' if not reasons else 'Empty'} at all times: " \
                  f"empty accelerator nodes are never removed"


@resource_rule("nodes-pool-instance-types", "advisory", (NODE_POOL,),
               what="every NodePool restricts the instance types it may launch",
               why="Karpenter picks any instance type that fits a pod when nothing restricts it, trn/inf included, "
                   "and such a pool carries no Neuron taint",
               fix="add a requirement on node.kubernetes.io/instance-type or karpenter.k8s.aws/instance-family")
def check_pool_restricted(r: Resource) -> Iterator[str]:
    if pool_selects_neuron(_pool_spec(r)) is None:
        yield "no requirement on instance type, family or category: the pool may launch any instance type"


@resource_rule("nodes-neuron-taint", "mandatory", (NODE_POOL, NODE_GROUP),
               what="node pools and node groups of trn/inf instances carry the taint aws.amazon.com/neuron:NoSchedule",
               why="without the taint, ordinary pods land on accelerator nodes and keep them from scaling to zero",
               fix="add the taint {key: aws.amazon.com/neuron, effect: NoSchedule}; Neuron pods tolerate it")
def check_neuron_taint(r: Resource) -> Iterator[str]:
    if r.type == NODE_POOL:
        spec = _pool_spec(r)
        if not pool_selects_neuron(spec):
            return
        taints = ((spec.get("template") or {}).get("spec") or {}).get("taints") or []
        effect = "NoSchedule"
    else:
        if not any(is_neuron_instance_type(t) for t in r.props.get("instanceTypes") or []):
            return
        taints = r.props.get("taints") or []
        effect = "NO_SCHEDULE"
    if not any(t.get("key") == NEURON_TAINT and t.get("effect") == effect for t in taints):
        yield f"selects trn/inf instance types but has no taint {NEURON_TAINT}:{effect}"


@stack_rule("nodes-no-static-accelerators", "mandatory",
            what="no managed node group or auto scaling group keeps trn/inf instances running (min/desired > 0)",
            why="accelerator capacity belongs to Karpenter pools that scale to zero; static groups bill 24/7",
            fix="set minSize and desiredSize to 0, or move the instance types to a Karpenter NodePool")
def check_no_static_accelerators(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    neuron_templates = [r for r in resources if r.type == LAUNCH_TEMPLATE
                        and is_neuron_instance_type(str(r.props.get("instanceType") or ""))]
    for r in resources:
        if r.type == NODE_GROUP:
            types = [t for t in r.props.get("instanceTypes") or [] if is_neuron_instance_type(t)]
            scaling = r.props.get("scalingConfig") or {}
            low = {k: scaling.get(k) for k in ("minSize", "desiredSize")}
        elif r.type == ASG:
            overrides = (((r.props.get("mixedInstancesPolicy") or {}).get("launchTemplate") or {})
                         .get("overrides") or [])
            types = [o.get("instanceType") for o in overrides if is_neuron_instance_type(str(o.get("instanceType") or ""))]
            types += [lt.props["instanceType"] for lt in neuron_templates if lt.urn in r.depends_on]
            low = {k: r.props.get(k) for k in ("minSize", "desiredCapacity")}
        else:
            continue
        static = {k: v for k, v in low.items() if isinstance(v, int) and v > 0}
        if types and static:
            yield r, f"{', '.join(sorted(set(types)))} with {', '.join(f'{k}={v}' for k, v in static.items())}"


# --------------------------------------------------------------------------- IAM

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


# --------------------------------------------------------------------------- data

BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
SSE_CONFIGS = ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
               "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2")
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
PUBLIC_ACLS = ("public-read", "public-read-write", "authenticated-read")
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def _bound(resources: list[Resource], types: tuple[str, ...], bucket: Resource) -> list[Resource]:
    return [r for r in resources if r.type in types and refers_to_bucket(r, bucket)]


@stack_rule("s3-private", "mandatory",
            what="every bucket has a public access block with all four settings true and no public ACL",
            why="artifacts, checkpoints and datasets are private; one public policy or ACL exposes all of them",
            fix="add aws.s3.BucketPublicAccessBlock(bucket=..., block_public_acls=True, block_public_policy=True, "
                "ignore_public_acls=True, restrict_public_buckets=True)")
def check_s3_private(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    for bucket in (r for r in resources if r.type in BUCKETS):
        if bucket.props.get("acl") in PUBLIC_ACLS:
            yield bucket, f"acl is {bucket.props['acl']!r}"
        blocks = _bound(resources, (PUBLIC_ACCESS_BLOCK,), bucket)
        if not blocks:
            yield bucket, "no BucketPublicAccessBlock refers to this bucket"
        for b in blocks:
            off = [f for f in PUBLIC_ACCESS_FLAGS if not truthy(b.props.get(f))]
            if off:
                yield bucket, f"BucketPublicAccessBlock {b.name}: {', '.join(off)} not true"


def _sse_algorithms(rules: Any) -> list[str]:
    return [((rule or {}).get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm", "")
            for rule in as_list(rules)]


@stack_rule("s3-encrypted", "mandatory",
            what="every bucket has a default server-side encryption configuration (aws:kms or AES256)",
            why="an explicit configuration states which key protects the data and survives account default changes",
            fix="add aws.s3.BucketServerSideEncryptionConfiguration with sse_algorithm 'aws:kms' and the platform key")
def check_s3_encrypted(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    for bucket in (r for r in resources if r.type in BUCKETS):
        inline = (bucket.props.get("serverSideEncryptionConfiguration") or {}).get("rule")
        algorithms = _sse_algorithms(inline) if inline else []
        for cfg in _bound(resources, SSE_CONFIGS, bucket):
            algorithms += _sse_algorithms(cfg.props.get("rules"))
        if not any(a in ("aws:kms", "aws:kms:dsse", "AES256") for a in algorithms):
            yield bucket, "no server-side encryption configuration refers to this bucket"


def denies_insecure_transport(doc: dict | None) -> bool:
    for s in statements(doc):
        cond = (s.get("Condition") or {}).get("Bool") or {}
        actions = as_list(s.get("Action"))
        everyone = s.get("Principal") == "*" or "*" in _principals(s, "AWS")
        if (s.get("Effect") == "Deny" and str(cond.get("aws:SecureTransport")).lower() == "false"
                and everyone and ("s3:*" in actions or "*" in actions)):
            return True
    return False


@stack_rule("s3-tls-only", "mandatory",
            what="every bucket policy denies s3:* to everyone when aws:SecureTransport is false",
            why="without it, clients may read and write artifacts over plain HTTP",
            fix="add a BucketPolicy statement {Effect: Deny, Principal: '*', Action: 's3:*', Resource: [bucket, bucket/*], "
                "Condition: {Bool: {aws:SecureTransport: 'false'}}}")
def check_s3_tls_only(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    for bucket in (r for r in resources if r.type in BUCKETS):
        docs = [policy_document(bucket.props.get("policy"))]
        docs += [policy_document(p.props.get("policy")) for p in _bound(resources, (BUCKET_POLICY,), bucket)]
        if any(is_unknown(p.props.get("policy")) for p in _bound(resources, (BUCKET_POLICY,), bucket)):
            continue
        if not any(denies_insecure_transport(d) for d in docs):
            yield bucket, "no bucket policy denies requests with aws:SecureTransport false"


@resource_rule("sqs-encrypted", "mandatory", ("aws:sqs/queue:Queue",),
               what="SQS queues are encrypted at rest (SQS-managed SSE or a KMS key)",
               why="queue messages (e.g. Karpenter interruption events) name instances and accounts",
               fix="set sqs_managed_sse_enabled=True or kms_master_key_id")
def check_sqs_encrypted(r: Resource) -> Iterator[str]:
    if not truthy(r.props.get("sqsManagedSseEnabled")) and not r.props.get("kmsMasterKeyId"):
        yield "neither sqsManagedSseEnabled nor kmsMasterKeyId is set"


@resource_rule("fsx-encrypted", "mandatory", ("aws:fsx/lustreFileSystem:LustreFileSystem",),
               what="persistent FSx for Lustre file systems encrypt at rest with a customer-managed KMS key (scratch ones always use an FSx-managed key)",
               why="the shared file system holds datasets, checkpoints and model weights; a key you own can be "
                   "audited and revoked",
               fix="set kms_key_id to the platform's KMS key (PERSISTENT_1/PERSISTENT_2 deployment types)")
def check_fsx_encrypted(r: Resource) -> Iterator[str]:
    # Every FSx for Lustre file system is encrypted at rest; scratch ones only ever with an
    # FSx-managed key (they take no kmsKeyId), so the rule applies to persistent ones.
    dtype = str(r.props.get("deploymentType") or "SCRATCH_1")
    if dtype.startswith("PERSISTENT") and not r.props.get("kmsKeyId"):
        yield f"{dtype} without kmsKeyId: data is encrypted with the AWS-managed key only"


EKS_CLUSTERS = ("eks:index:Cluster", "aws:eks/cluster:Cluster")
REQUIRED_LOG_TYPES = ("api", "audit", "authenticator")


@resource_rule("eks-secrets-encrypted", "mandatory", EKS_CLUSTERS,
               what="the EKS cluster envelope-encrypts Kubernetes Secrets with a KMS key",
               why="Secrets (Hugging Face tokens, credentials) are otherwise only protected by etcd's disk encryption",
               fix="eks.Cluster(encryption_config_key_arn=key.arn)")
def check_eks_secrets(r: Resource) -> Iterator[str]:
    if r.type == "eks:index:Cluster":
        key = r.props.get("encryptionConfigKeyArn")
    else:
        key = next((((c.get("provider") or {}).get("keyArn")) for c in as_list(r.props.get("encryptionConfig"))
                    if "secrets" in (c.get("resources") or [])), None)
    if not key:
        yield "no KMS key for secrets encryption"


@resource_rule("eks-control-plane-logging", "mandatory", EKS_CLUSTERS,
               what="control-plane logs include api, audit and authenticator",
               why="without audit and authenticator logs there is no record of who did what in the cluster",
               fix="enabled_cluster_log_types=['api', 'audit', 'authenticator', ...]")
def check_eks_logging(r: Resource) -> Iterator[str]:
    enabled = r.props.get("enabledClusterLogTypes")
    if is_unknown(enabled):
        return
    missing = [t for t in REQUIRED_LOG_TYPES if t not in (enabled or [])]
    if missing:
        yield f"enabledClusterLogTypes lacks {', '.join(missing)}"


OPEN_CIDRS = ("0.0.0.0/0", "::/0")


@resource_rule("eks-public-endpoint", "mandatory", EKS_CLUSTERS,
               what="the public API endpoint is off, or limited to configured CIDR blocks (never 0.0.0.0/0)",
               why="an API endpoint open to the internet exposes the cluster to credential stuffing and API exploits",
               fix="set endpoint.publicAccess: false, or endpoint.publicAccessCidrs to your office/VPN ranges")
def check_eks_endpoint(r: Resource) -> Iterator[str]:
    props = r.props if r.type == "eks:index:Cluster" else (r.props.get("vpcConfig") or {})
    public = props.get("endpointPublicAccess")
    if public is False or (isinstance(public, str) and public.lower() == "false"):
        return
    cidrs = props.get("publicAccessCidrs")
    if is_unknown(cidrs):
        return
    if not cidrs:
        yield "public endpoint on (the default) with no publicAccessCidrs: open to 0.0.0.0/0"
    elif any(c in OPEN_CIDRS for c in cidrs):
        yield f"publicAccessCidrs {cidrs} include an open range"


@resource_rule("ecr-immutable-tags", "mandatory", ("aws:ecr/repository:Repository",),
               what="ECR repositories have immutable tags",
               why="the image pinning rule trusts exact version tags; a mutable tag can be overwritten under a running workload",
               fix="image_tag_mutability='IMMUTABLE'")
def check_ecr_immutable(r: Resource) -> Iterator[str]:
    if r.props.get("imageTagMutability") != "IMMUTABLE":
        yield f"imageTagMutability is {r.props.get('imageTagMutability', 'MUTABLE (default)')!r}"


@resource_rule("ecr-scan-on-push", "advisory", ("aws:ecr/repository:Repository",),
               what="ECR repositories scan images on push",
               why="basic scanning flags known CVEs in the Neuron/PyTorch base layers at no cost",
               fix="image_scanning_configuration={'scan_on_push': True}")
def check_ecr_scan(r: Resource) -> Iterator[str]:
    if not truthy((r.props.get("imageScanningConfiguration") or {}).get("scanOnPush")):
        yield "imageScanningConfiguration.scanOnPush is not true"


@resource_rule("kms-key-rotation", "advisory", ("aws:kms/key:Key",),
               what="symmetric KMS keys rotate yearly",
               why="rotation limits how much data one key version protects; AWS does it transparently",
               fix="enable_key_rotation=True")
def check_kms_rotation(r: Resource) -> Iterator[str]:
    if r.props.get("customerMasterKeySpec", "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT" and \
            not truthy(r.props.get("enableKeyRotation")):
        yield "enableKeyRotation is not true"


# --------------------------------------------------------------------------- Kubernetes

# An image is pinned by digest, or by a tag carrying at least major.minor.patch (an
# optional leading `v`, and a suffix after `-`, `+`, `.` or `_` such as
# `2.26.1-neuronx-py310-ubuntu22.04` or `v1.21.1-eksbuild.1`). `latest`, no tag, and
# floating tags like `0.8`, `v1` or `stable` are refused: they change under a running workload.
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-+._][0-9A-Za-z][0-9A-Za-z._+-]*)?$")


def image_pin_problem(image: str) -> str | None:
    """Why `image` is not pinned, or None if it is."""
    if DIGEST.search(image):
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (pulls :latest)"
    tag = last.rsplit(":", 1)[1]
    if not EXACT_TAG.match(tag):
        return f"image {image!r}: tag {tag!r} is not an exact version (major.minor.patch) or a digest"
    return None


def tag_pin_problem(where: str, tag: str) -> str | None:
    if tag == "" or is_unknown(tag) or EXACT_TAG.match(tag) or re.match(r"^sha256:[0-9a-f]{64}$", tag):
        return None  # empty: the chart's own pinned appVersion
    return f"{where}: tag {tag!r} is not an exact version (major.minor.patch) or a digest"


def helm_image_problems(values: Any, path: str = "values") -> Iterator[str]:
    """Image references in Helm values: `image: repo:tag` strings and `...tag` keys."""
    if isinstance(values, dict):
        for k, v in values.items():
            p = f"{path}.{k}"
            if isinstance(v, str) and k == "image" and not is_unknown(v):
                problem = image_pin_problem(v)
                if problem:
                    yield f"{p}: {problem}"
            elif isinstance(v, str) and (k.lower().endswith("tag") or k.lower().endswith("tag_version")):
                problem = tag_pin_problem(p, v)
                if problem:
                    yield problem
            else:
                yield from helm_image_problems(v, p)
    elif isinstance(values, list):
        for i, v in enumerate(values):
            yield from helm_image_problems(v, f"{path}[{i}]")


REMOTE_REF = re.compile(r"[?&]ref=([^&]+)")


def kustomization_problems(directory: str) -> Iterator[str]:
    path = Path(directory) / "kustomization.yaml"
    if not path.exists():
        yield f"{path} not found: cannot check the images it deploys"
        return
    doc = yaml.safe_load(path.read_text()) or {}
    for i, res in enumerate(doc.get("resources") or []):
        if isinstance(res, str) and res.startswith(("http://", "https://", "github.com/")):
            m = REMOTE_REF.search(res)
            if not m or not EXACT_TAG.match(m.group(1)):
                yield f"{path}: resources[{i}] {res!r} is not pinned to an exact ?ref=<version>"
    for i, img in enumerate(doc.get("images") or []):
        if img.get("digest"):
            continue
        problem = tag_pin_problem(f"{path}: images[{i}] ({img.get('name')}).newTag", str(img.get("newTag", "")))
        if problem or "newTag" not in img:
            yield problem or f"{path}: images[{i}] ({img.get('name')}) sets neither newTag nor digest"


@resource_rule("k8s-images-pinned", "mandatory", ("kubernetes:*",),
               what="every container image is pinned: a digest or an exact major.minor.patch tag "
                    "(manifests, Helm values, kustomizations)",
               why="`latest`, tag-less and floating tags (`:0.8`, `:v1`) change under a running workload and "
                   "make rollbacks and audits impossible",
               fix="use image:<exact version> (e.g. :2.26.1) or image@sha256:<digest>")
def check_images_pinned(r: Resource) -> Iterator[str]:
    if r.type.startswith("kubernetes:helm.sh/"):
        yield from helm_image_problems(r.props.get("values") or {})
    elif r.type.startswith("kubernetes:kustomize/"):
        directory = r.props.get("directory")
        if isinstance(directory, str) and not directory.startswith(("http://", "https://")):
            yield from kustomization_problems(directory)
    elif is_k8s_object(r):
        for path, spec in pod_specs(r.props):
            for where, c in containers(spec):
                image = c.get("image")
                if not isinstance(image, str) or not image:
                    yield f"{path}.{where}: no image"
                elif not is_unknown(image):
                    problem = image_pin_problem(image)
                    if problem:
                        yield f"{path}.{where}: {problem}"


@resource_rule("k8s-charts-pinned", "mandatory", ("kubernetes:helm.sh/*",),
               what="every Helm release pins an exact chart version",
               why="without a version Helm installs whatever the repository serves today",
               fix="set version='<major.minor.patch>' on the Release")
def check_chart_pinned(r: Resource) -> Iterator[str]:
    version = str(r.props.get("version") or "")
    if not EXACT_TAG.match(version):
        yield f"chart {r.props.get('chart')!r}: version {version or '(none)'!r} is not an exact major.minor.patch"


RESOURCE_KEYS = ("cpu", "memory")


@resource_rule("k8s-requests-limits", "mandatory", ("kubernetes:*",),
               what="every workload container sets requests and limits for cpu and memory",
               why="without requests the scheduler packs pods blindly and Karpenter sizes nodes wrong; without limits "
                   "one runaway process starves the Neuron runtime on the node",
               fix="resources: {requests: {cpu, memory}, limits: {cpu, memory}} on every container and init container")
def check_requests_limits(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    for path, spec in pod_specs(r.props):
        for where, c in containers(spec):
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                missing = [k for k in RESOURCE_KEYS if k not in (res.get(kind) or {})]
                if missing:
                    yield f"{path}.{where}: resources.{kind} lacks {', '.join(missing)}"


def privilege_features(spec: dict) -> list[tuple[str, str]]:
    """(feature, where) for each privileged setting of a pod spec."""
    found = [(f, f) for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f) is True]
    found += [("hostPath", f"volumes[{i}] ({v.get('name')})") for i, v in enumerate(spec.get("volumes") or [])
              if isinstance(v, dict) and "hostPath" in v]
    for where, c in containers(spec):
        sc = c.get("securityContext") or {}
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if sc.get("privileged") is True:
            found.append(("privileged", f"{where} securityContext.privileged"))
        elif added & {"SYS_ADMIN", "ALL"}:
            found.append(("privileged", f"{where} capabilities.add {sorted(added & {'SYS_ADMIN', 'ALL'})}"))
    return found


def privileged_exception(r: Resource, feature: str) -> PrivilegedWorkload | None:
    meta = metadata(r)
    for e in exceptions().privileged_workloads:
        if (meta.get("namespace") == e.namespace and fnmatch.fnmatchcase(str(meta.get("name", "")), e.name)
                and feature in e.allows):
            return e
    return None


@resource_rule("k8s-no-privileged-pods", "mandatory", ("kubernetes:*",),
               what="no privileged containers, hostPath volumes or host namespaces, except the device plugins and "
                    "CSI drivers allow-listed in policy/exceptions.yaml",
               why="a privileged or hostPath pod owns the node: its kubelet credentials, the node role and other pods",
               fix="drop privileged/hostPath; Neuron devices come from the device plugin via aws.amazon.com/neuron "
                   "requests, shared data from the FSx PVC")
def check_no_privileged(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    for path, spec in pod_specs(r.props):
        for feature, where in privilege_features(spec):
            if not privileged_exception(r, feature):
                yield f"{path}: {feature} ({where})"


DASHBOARD = re.compile(r"tensorboard|ray|grafana|dashboard|prometheus|kibana|jupyter", re.I)
DASHBOARD_PORTS = {6006: "TensorBoard", 8265: "Ray dashboard", 3000: "Grafana", 9090: "Prometheus", 8888: "Jupyter"}
EXPOSED_TYPES = ("LoadBalancer", "NodePort")


def _service_names(r: Resource) -> list[str]:
    meta = metadata(r)
    spec = r.props.get("spec") or {}
    return ([str(meta.get("name", ""))] + [str(v) for v in (meta.get("labels") or {}).values()]
            + [str(v) for v in (spec.get("selector") or {}).values()]
            + [str(p.get("name", "")) for p in spec.get("ports") or []])


@resource_rule("k8s-no-exposed-dashboards", "mandatory", ("kubernetes:*",),
               what="no LoadBalancer or NodePort Service (or RayCluster serviceType) exposes a dashboard: "
                    "TensorBoard, Ray, Grafana, Prometheus, Jupyter",
               why="these dashboards have no authentication; Ray's accepts job submissions, i.e. remote code execution",
               fix="use type: ClusterIP and `kubectl port-forward`, or an authenticated ingress")
def check_no_exposed_dashboards(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    kind = kind_of(r)
    spec = r.props.get("spec") or {}
    if kind == "Service" and spec.get("type") in EXPOSED_TYPES:
        named = [n for n in _service_names(r) if DASHBOARD.search(n)]
        ports = [DASHBOARD_PORTS[p.get(k)] for p in spec.get("ports") or [] for k in ("port", "targetPort")
                 if p.get(k) in DASHBOARD_PORTS]
        if named or ports:
            yield f"Service type {spec['type']} exposes {', '.join(sorted(set(named + ports)))}"
    for key, head in (("headGroupSpec", spec.get("headGroupSpec")),
                      ("rayClusterSpec.headGroupSpec", (spec.get("rayClusterSpec") or {}).get("headGroupSpec"))):
        if isinstance(head, dict) and head.get("serviceType") in EXPOSED_TYPES:
            yield f"spec.{key}.serviceType {head['serviceType']} exposes the Ray dashboard and job API"


SECRET_ENV_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIALS?)(_|$)", re.I)


@resource_rule("k8s-no-secret-env-values", "mandatory", ("kubernetes:*",),
               what="no container env variable named like a secret (TOKEN, SECRET, PASSWORD, KEY, CREDENTIALS) "
                    "has a literal `value`",
               why="literal env values are stored in the manifest, the Pulumi state and `kubectl get -o yaml` output",
               fix="put the value in a Kubernetes Secret (from `pulumi config set --secret`) and use "
                   "env[].valueFrom.secretKeyRef, or mount it as a file")
def check_no_secret_env(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    for path, spec in pod_specs(r.props):
        for where, c in containers(spec):
            for e in c.get("env") or []:
                if isinstance(e, dict) and "value" in e and e.get("value") not in ("", None) \
                        and SECRET_ENV_NAME.search(str(e.get("name", ""))):
                    yield f"{path}.{where}: env {e['name']} has a literal value"


# Shapes of well-known credentials, and output names that say "this is a secret".
TOKEN_PATTERNS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(ghp|gho|ghs|ghu)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{40,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "API secret key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
}
SECRET_OUTPUT_NAME = re.compile(r"(token|secret|password|passwd|credentials?)$", re.I)


def secret_output_problems(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from secret_output_problems(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from secret_output_problems(v, f"{path}[{i}]")
    elif isinstance(value, str) and value not in (SECRET_MASK, "", UNKNOWN):
        for what, pattern in TOKEN_PATTERNS.items():
            if pattern.search(value):
                yield f"output {path} holds what looks like a {what}, unmasked"
                return
        last = re.split(r"[.\[]", path)[-1]
        if SECRET_OUTPUT_NAME.search(last):
            yield f"output {path} is named like a secret and is not marked secret"


@stack_rule("outputs-no-secrets", "mandatory",
            what="stack outputs never carry a credential unmasked",
            why="stack outputs are shown by `pulumi stack output` and readable by every StackReference",
            fix="export it with pulumi.Output.secret(...) (or do not export it at all)")
def check_outputs_no_secrets(resources: list[Resource], outputs: dict) -> Iterator[tuple[None, str]]:
    for problem in secret_output_problems(outputs or {}, ""):
        yield None, problem


# --------------------------------------------------------------------------- evaluation


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
