"""Node rules: IMDSv2, encrypted roots, accelerator pools that scale to zero behind the Neuron taint."""
from __future__ import annotations

from typing import Iterator

from policy.rules.base import Resource, resource_rule, stack_rule
from policy.rules.helpers import (
    NEURON_FAMILY,
    is_neuron_instance_type,
    is_unknown,
    truthy,
)

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
