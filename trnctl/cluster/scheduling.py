"""Schedulability: for every pod of every workload stack, a NodePool that admits it, an instance
type whose allocatable (as Karpenter computes it before launching a node) fits it next to the
DaemonSets that land on that node, pool limits that hold the whole gang at once, and one
Availability Zone for every multi-node EFA gang.

Karpenter's model (aws/karpenter-provider-aws@v1.14.1 pkg/providers/instancetype/types.go):
- memory capacity = EC2 memory minus VM_MEMORY_OVERHEAD_PERCENT (default 0.075:
  pkg/operator/options/options.go; chart settings.vmMemoryOverheadPercent, not set by infra/karpenter.py)
  until a node of that instance type and AMI has registered, after which the node's reported capacity
  is used (the instance type provider's discovered-capacity cache, keyed by type and AMI: an AMI bump
  starts over). On a fresh cluster the first node of a type is sized by this estimate;
- kube-reserved CPU 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% of the
  rest; memory 11 MiB x max pods + 255 MiB (kubeReservedResources); eviction threshold 100 Mi;
- max pods: ENI-limited on AL2023; the EKS max-pods recommendation caps it at 110 below 30 vCPUs
  and 250 above (awslabs/amazon-eks-ami templates/al2/runtime/max-pods-calculator.sh), used
  here as the bound (the larger count reserves more memory: the conservative side);
- a pod fits when its requests plus every DaemonSet pod that tolerates and selects the node fit
  the allocatable (kubernetes-sigs/karpenter@v1.14.1 pkg/controllers/provisioning/scheduling,
  daemonset overhead);
- NodePool `limits` bound the capacity of all the pool's nodes together (sum of node capacity,
  not of pod requests: kubernetes-sigs/karpenter@v1.14.1 pkg/controllers/provisioning/scheduling/
  scheduler.go, remaining resources).
EFA traffic does not cross Availability Zones (AWS EFA user guide, "EFA limitations": "EFA traffic
can't cross Availability Zones"; Karpenter v1.14 docs concepts/nodeclasses.md placementGroupSelector:
cluster placement groups are placed in a single AZ, e.g. for EFA workloads).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trnctl.operators import OWNER_ANNOTATION as OWNER
from trnctl.cluster import ADVISORY, MANDATORY, Finding, Model, labels_of, match_expression, obj_id

RULE = "scheduling"
VM_MEMORY_OVERHEAD = 0.075
EVICTION_MEMORY_MIB = 100
EFA_RESOURCE = "vpc.amazonaws.com/efa"
ZONE_KEYS = ("topology.kubernetes.io/zone", "topology.k8s.aws/zone-id")

# DaemonSets the platform installs through charts and EKS add-ons, which the render does not
# expand: requests per pod as set by our values or the pinned defaults. Where a chart/add-on sets
# no requests, a DaemonSet pod reserves nothing for the scheduler (0 here).
# - prometheus-node-exporter: infra/monitoring/values.py NODE_EXPORTER_REQUESTS (every node)
# - aws-node (VPC CNI add-on): cpu 25m (aws/amazon-vpc-cni-k8s charts/aws-vpc-cni/values.yaml resources.requests)
# - kube-proxy (EKS add-on): cpu 100m (EKS kube-proxy add-on manifest, resources.requests.cpu)
# - Neuron device plugin, EFA device plugin, FSx CSI node, pod identity agent: no requests in the
#   pinned charts' defaults as read for this model (not re-verified offline for every tag: README).
CHART_DAEMONSETS = {"aws-node": {"cpu": "25m"}, "kube-proxy": {"cpu": "100m"}}


# --------------------------------------------------------------------------- quantities


_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "": 1}


def quantity(value) -> float:
    """A Kubernetes quantity as a number (bytes, cores, devices)."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def pod_requests(pod: dict) -> dict[str, float]:
    """Effective requests: the sum over containers, or the largest init container if bigger
    (kubernetes/kubernetes@v1.34.0 pkg/api/v1/resource/helpers.go PodRequests); requests default
    to limits for extended resources."""
    total: dict[str, float] = {}
    spec = pod.get("spec") or {}
    for c in spec.get("containers") or []:
        for k, v in _container_requests(c).items():
            total[k] = total.get(k, 0) + v
    for c in spec.get("initContainers") or []:
        for k, v in _container_requests(c).items():
            total[k] = max(total.get(k, 0), v)
    return total


def _container_requests(c: dict) -> dict[str, float]:
    res = c.get("resources") or {}
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
    return {k: quantity(v) for k, v in merged.items()}


# --------------------------------------------------------------------------- Karpenter's node model


def max_pods(vcpu: int) -> int:
    return 110 if vcpu < 30 else 250


def kube_reserved_cpu(vcpu: int) -> float:
    milli, reserved = vcpu * 1000, 0.0
    for start, end, pct in ((0, 1000, 0.06), (1000, 2000, 0.01), (2000, 4000, 0.005), (4000, 1 << 31, 0.0025)):
        if milli >= start:
            reserved += (min(milli, end) - start) * pct
    return reserved / 1000


@dataclass(frozen=True)
class NodeShape:
    instance_type: str
    allocatable: dict[str, float]


def allocatable(instance_type: str, *, vm_overhead: bool = True) -> NodeShape:
    from infra import catalog
    it = catalog.instance_type(instance_type)
    mem_mib = it.memory_gib * 1024
    mem_mib -= math.ceil(mem_mib * VM_MEMORY_OVERHEAD) if vm_overhead else 0
    mem_mib -= 11 * max_pods(it.vcpu) + 255 + EVICTION_MEMORY_MIB
    alloc = {"cpu": it.vcpu - kube_reserved_cpu(it.vcpu), "memory": mem_mib * 2**20, "pods": max_pods(it.vcpu)}
    if it.neuron_devices:
        alloc["aws.amazon.com/neuron"] = it.neuron_devices
        alloc["aws.amazon.com/neuroncore"] = it.neuron_cores
    if it.efa_interfaces:
        alloc[EFA_RESOURCE] = it.efa_interfaces
    return NodeShape(instance_type, alloc)


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class Pool:
    obj: dict
    name: str
    labels: dict
    taints: list
    requirements: list
    limits: dict

    @classmethod
    def of(cls, obj: dict) -> "Pool":
        spec = obj.get("spec") or {}
        tmpl = spec.get("template") or {}
        return cls(obj, obj["metadata"]["name"], dict((tmpl.get("metadata") or {}).get("labels") or {}),
                   list((tmpl.get("spec") or {}).get("taints") or []), list((tmpl.get("spec") or {}).get("requirements") or []),
                   dict(spec.get("limits") or {}))

    def values(self, key: str) -> list[str] | None:
        for r in self.requirements:
            if r["key"] == key and r["operator"] == "In":
                return [str(v) for v in r.get("values") or []]
        return None

    @property
    def instance_types(self) -> list[str]:
        return self.values("node.kubernetes.io/instance-type") or []

    @property
    def zones(self) -> list[str]:
        for key in ZONE_KEYS:
            if self.values(key) is not None:
                return self.values(key) or []
        return []

    def node_labels(self, instance_type: str) -> dict[str, str]:
        """Labels a node of this pool carries: template labels, single-valued requirements,
        the instance type (Karpenter sets every well-known label it resolves)."""
        out = dict(self.labels)
        for r in self.requirements:
            if r["operator"] == "In" and len(r.get("values") or []) == 1:
                out.setdefault(r["key"], str(r["values"][0]))
        out["node.kubernetes.io/instance-type"] = instance_type
        return out

    def admits_labels(self, pod: dict, instance_type: str) -> bool:
        """nodeSelector and required node affinity against what a node of this pool may carry."""
        spec = pod.get("spec") or {}
        labels = self.node_labels(instance_type)
        for key, value in (spec.get("nodeSelector") or {}).items():
            if labels.get(key) != value and str(value) not in (self.values(key) or []):
                return False
        terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
        if terms and not any(all(_requirement_possible(e, labels, self) for e in t.get("matchExpressions") or [])
                             for t in terms):
            return False
        return True


def _requirement_possible(expr: dict, labels: dict, pool: Pool) -> bool:
    if expr["key"] in labels:
        return match_expression(expr, labels)
    allowed = pool.values(expr["key"])
    if allowed is not None and expr["operator"] == "In":
        return bool(set(allowed) & {str(v) for v in expr.get("values") or []})
    if allowed is not None and expr["operator"] == "Exists":
        return True
    # A label neither the template nor a requirement gives the node: only absence-operators hold.
    return expr["operator"] in ("NotIn", "DoesNotExist")


def tolerates(pod: dict, taints: list[dict]) -> bool:
    """Every NoSchedule/NoExecute taint tolerated (kubernetes/kubernetes@v1.34.0
    pkg/apis/core/v1/helper/helpers.go TolerationsTolerateTaint)."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in taints:
        if taint.get("effect") == "PreferNoSchedule":
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _tolerates(tol: dict, taint: dict) -> bool:
    if tol.get("effect") and tol["effect"] != taint.get("effect"):
        return False
    if not tol.get("key"):
        return tol.get("operator") == "Exists"
    if tol["key"] != taint.get("key"):
        return False
    return tol.get("operator", "Equal") == "Exists" or str(tol.get("value", "")) == str(taint.get("value", ""))


def zones_of(model: Model, pool: Pool) -> list[str]:
    """The zones a pool's nodes can land in. A pool of reserved capacity only with one reservation
    (ODCR or Capacity Block) lands in that reservation's AZ, whatever its zone requirement says: an EC2
    capacity reservation is in exactly one AZ (EC2 API CreateCapacityReservation, AvailabilityZone) and
    Karpenter launches reserved nodes into it (karpenter-provider-aws v1.14 website tasks/odcrs.md)."""
    if pool.values("karpenter.sh/capacity-type") == ["reserved"]:
        ref = ((pool.obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("nodeClassRef") or {}
        node_class = next((o for o in model.platform.objects if o.get("kind") == "EC2NodeClass"
                           and o["metadata"]["name"] == ref.get("name")), {})
        terms = (node_class.get("spec") or {}).get("capacityReservationSelectorTerms") or []
        if len(terms) == 1 and terms[0].get("id"):
            return [f"the AZ of reservation {terms[0]['id']}"]
    return pool.zones


def pools(model: Model) -> list[Pool]:
    return [Pool.of(o) for o in model.platform.objects if o.get("kind") == "NodePool"]


def daemonset_overhead(model: Model, pool: Pool, instance_type: str) -> dict[str, float]:
    """Requests of every DaemonSet pod that would land on a node of `pool`."""
    from infra.monitoring.values import NODE_EXPORTER_REQUESTS
    total: dict[str, float] = {}

    def add(req: dict) -> None:
        for k, v in req.items():
            total[k] = total.get(k, 0) + quantity(v)

    for ds in model.of_kind("DaemonSet"):
        template = (ds.get("spec") or {}).get("template") or {}
        pod = {"spec": template.get("spec") or {}}
        if tolerates(pod, pool.taints) and pool.admits_labels(pod, instance_type):
            for k, v in pod_requests(pod).items():
                total[k] = total.get(k, 0) + v
    add(NODE_EXPORTER_REQUESTS)
    for req in CHART_DAEMONSETS.values():
        add(req)
    return total


# --------------------------------------------------------------------------- the check


def candidate_pools(model: Model, pod: dict) -> list[Pool]:
    return [p for p in pools(model) if tolerates(pod, p.taints) and any(p.admits_labels(pod, t) for t in p.instance_types)]


def _fits(model: Model, pool: Pool, pod: dict, *, vm_overhead: bool) -> tuple[str | None, str]:
    """(an instance type that fits, the closest miss)."""
    need = pod_requests(pod)
    miss = ""
    for t in pool.instance_types:
        if not pool.admits_labels(pod, t):
            continue
        shape = allocatable(t, vm_overhead=vm_overhead)
        overhead = daemonset_overhead(model, pool, t)
        short = [f"{k} {_fmt(k, v)} requested, {_fmt(k, shape.allocatable.get(k, 0) - overhead.get(k, 0))} allocatable"
                 for k, v in need.items() if k not in ("ephemeral-storage",) and v > shape.allocatable.get(k, 0) - overhead.get(k, 0)]
        if not short:
            return t, ""
        miss = f"{t}: {'; '.join(short)}"
    return None, miss


def _fmt(key: str, value: float) -> str:
    return f"{value / 2**30:.1f}Gi" if key in ("memory", "ephemeral-storage") or key.startswith("hugepages") else f"{value:g}"


def gangs(pods: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for pod in pods:
        owner = (pod["metadata"].get("annotations") or {}).get(OWNER)
        if owner:
            out.setdefault(f"{pod['metadata'].get('namespace')}/{owner}", []).append(pod)
    return out


def pinned_to_one_zone(pod: dict) -> bool:
    spec = pod.get("spec") or {}
    if any(k in ZONE_KEYS for k in spec.get("nodeSelector") or {}):
        return True
    node_terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                  .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    if node_terms and all(any(e["key"] in ZONE_KEYS and e["operator"] == "In" and len(e.get("values") or []) == 1
                              for e in t.get("matchExpressions") or []) for t in node_terms):
        return True
    pod_affinity = ((spec.get("affinity") or {}).get("podAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []
    return any(term.get("topologyKey") in ZONE_KEYS and _selects_self(term, pod) for term in pod_affinity)


def _selects_self(term: dict, pod: dict) -> bool:
    from trnctl.cluster import match_selector
    return match_selector(term.get("labelSelector"), labels_of(pod))


def check(model: Model) -> list[Finding]:
    findings: list[Finding] = []
    for pod in model.pods:
        name = obj_id(pod)
        owner = (pod["metadata"].get("annotations") or {}).get(OWNER, name)
        cands = candidate_pools(model, pod)
        if not cands:
            sel = (pod.get("spec") or {}).get("nodeSelector")
            findings.append(Finding(f"{RULE}/no-pool", MANDATORY, (owner, name),
                                    f"no NodePool admits {name} (nodeSelector {sel}, tolerations "
                                    f"{(pod.get('spec') or {}).get('tolerations')}): it stays Pending; fix: select a pool's "
                                    f"label from the platform's nodePools output and tolerate its taints"))
            continue
        if any(_fits(model, p, pod, vm_overhead=True)[0] for p in cands):
            continue
        misses = " | ".join(f"pool {p.name}: {_fits(model, p, pod, vm_overhead=True)[1]}" for p in cands)
        # Karpenter sizes a type it has not launched yet with the VM overhead estimate; once a node of
        # the type has joined it uses the node's real capacity. Fitting only without the estimate means
        # the first launch of the type is refused: advisory (it depends on Karpenter's cache and the
        # real MemTotal, which only a cluster shows); not fitting even the EC2 total is certain.
        certain = not any(_fits(model, p, pod, vm_overhead=False)[0] for p in cands)
        findings.append(Finding(f"{RULE}/does-not-fit", MANDATORY if certain else ADVISORY, (owner, name),
                                f"{name} fits no instance type of its pools as Karpenter sizes them before a first launch "
                                f"(EC2 memory minus {VM_MEMORY_OVERHEAD:.1%} VM overhead, kube-reserved, eviction threshold, "
                                f"DaemonSets): {misses}; "
                                + ("it stays Pending" if certain else
                                   "Karpenter refuses to launch the type until a node of it has been seen")
                                + "; fix: size requests from the allocatable, not the instance's total"))
    findings += _gang_findings(model)
    return findings


def _gang_findings(model: Model) -> list[Finding]:
    from infra import catalog
    findings = []
    for gang, members in gangs(model.pods).items():
        by_pool: dict[str, tuple[Pool, list[dict]]] = {}
        for pod in members:
            cands = candidate_pools(model, pod)
            if len(cands) == 1:  # a gang pinned to one pool: its nodes all come from there
                by_pool.setdefault(cands[0].name, (cands[0], []))[1].append(pod)
        # Pool limits: the whole gang at once. Karpenter counts node capacity against limits; a pod that
        # needs most of a node gets a node of its own.
        for pool, pods_on_pool in by_pool.values():
            itype = max(pool.instance_types, key=lambda t: catalog.instance_type(t).vcpu)
            it = catalog.instance_type(itype)
            shape = allocatable(itype)
            need = pod_requests(pods_on_pool[0])
            per_node = min((int(shape.allocatable.get(k, 0) // v) for k, v in need.items()
                            if v and k in shape.allocatable), default=1) or 1
            nodes = math.ceil(len(pods_on_pool) / per_node)
            node_capacity = {"cpu": it.vcpu, "memory": it.memory_gib * 2**30, "aws.amazon.com/neuron": it.neuron_devices}
            for key, limit in pool.limits.items():
                if node_capacity.get(key) and nodes * node_capacity[key] > quantity(limit):
                    findings.append(Finding(f"{RULE}/pool-limit", MANDATORY, (gang, obj_id(pool.obj)),
                                            f"gang {gang} needs {nodes} {itype} nodes at once but NodePool {pool.name} limits "
                                            f"{key} to {limit} ({int(quantity(limit) // node_capacity[key])} nodes): the gang "
                                            f"never starts; fix: raise the pool's maxNodes in the platform stack"))
        # EFA gangs in one Availability Zone.
        efa_pods = [pod for pod in members if pod_requests(pod).get(EFA_RESOURCE)]
        if len(efa_pods) >= 2:
            efa_pools = {p.name: p for pod in efa_pods for p in candidate_pools(model, pod)}
            zones = sorted({z for p in efa_pools.values() for z in zones_of(model, p)} or {"any"})
            if len(zones) != 1 and not all(pinned_to_one_zone(pod) for pod in efa_pods):
                findings.append(Finding(f"{RULE}/efa-zones", MANDATORY, (gang, *sorted(obj_id(p.obj) for p in efa_pools.values())),
                                        f"EFA gang {gang} ({len(efa_pods)} pods) can land in zones {', '.join(zones)}: EFA "
                                        f"traffic does not cross Availability Zones; fix: one zone per multi-node EFA pool "
                                        f"(infra/network.py pool_zone_ids) or zone affinity on the gang"))
    return findings
