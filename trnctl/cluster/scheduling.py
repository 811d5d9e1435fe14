"""Schedulability: for every pod of every workload stack, a NodePool that admits it, an instance
type whose allocatable (as Karpenter computes it before launching a node) fits it next to the
DaemonSets that land on that node, pool limits that hold the whole gang at once, and one
Availability Zone for every multi-node EFA gang.

Karpenter's node model (allocatable before a first launch, DaemonSet overhead) is
trnctl/operators/karpenter.py, the same code the platform's per-pool schedulable outputs come from;
the DaemonSets are the platform render's plus those charts and add-ons install
(infra/nodepools.py unrendered_daemonset_pods). NodePool `limits` bound the capacity of all the
pool's nodes together (sum of node capacity, not of pod requests: kubernetes-sigs/karpenter@v1.14.1
pkg/controllers/provisioning/scheduling/scheduler.go, remaining resources).
EFA traffic does not cross Availability Zones (AWS EFA user guide, "EFA limitations": "EFA traffic
can't cross Availability Zones"; Karpenter v1.14 docs concepts/nodeclasses.md placementGroupSelector:
cluster placement groups are placed in a single AZ, e.g. for EFA workloads).
"""
from __future__ import annotations

import math

from trnctl.operators import OWNER_ANNOTATION as OWNER
from trnctl.operators import karpenter
from trnctl.operators.karpenter import Pool, allocatable
from trnctl.operators.kubernetes import pod_requests, quantity, tolerates
from trnctl.cluster import MANDATORY, Finding, Model, labels_of, obj_id

RULE = "scheduling"
EFA_RESOURCE = karpenter.EFA_RESOURCE
ZONE_KEYS = ("topology.kubernetes.io/zone", "topology.k8s.aws/zone-id")


def pools(model: Model) -> list[Pool]:
    return [Pool.of(o) for o in model.platform.objects if o.get("kind") == "NodePool"]


def daemonset_pods(model: Model) -> list[dict]:
    """Pod templates of every DaemonSet of the platform: the rendered ones, and those charts and EKS
    add-ons install, which the render does not expand (infra/nodepools.py unrendered_daemonset_pods)."""
    from infra.nodepools import unrendered_daemonset_pods
    rendered = [{"spec": ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}} for ds in model.of_kind("DaemonSet")]
    return rendered + unrendered_daemonset_pods()


def largest_type(pool: Pool) -> str:
    """The pool's type the platform sizes per-node outputs from (infra/config.py NodePoolConfig.largest_instance)."""
    from infra import catalog
    return max(pool.instance_types, key=lambda t: (catalog.instance_type(t).vcpu, catalog.instance_type(t).memory_gib))


def schedulable(model: Model, pool: Pool, instance_type: str, *, vm_overhead: bool = True) -> dict[str, float]:
    return karpenter.schedulable(pool, instance_type, daemonset_pods(model), vm_overhead=vm_overhead)


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
    for key in ZONE_KEYS:
        if pool.values(key) is not None:
            return pool.values(key) or []
    return []


# --------------------------------------------------------------------------- the check


def candidate_pools(model: Model, pod: dict) -> list[Pool]:
    return [p for p in pools(model) if tolerates(pod, p.taints) and any(p.admits_labels(pod, t) for t in p.instance_types)]


def _fits(model: Model, pool: Pool, pod: dict) -> tuple[str | None, str]:
    """(an instance type of `pool` that holds `pod` next to its DaemonSets, the closest miss with numbers)."""
    need = pod_requests(pod)
    miss = ""
    for t in pool.instance_types:
        if not pool.admits_labels(pod, t):
            continue
        room = schedulable(model, pool, t)
        short = [f"{k} {_fmt(k, v)} requested, {_fmt(k, room.get(k, 0))} schedulable"
                 for k, v in need.items() if k not in ("ephemeral-storage",) and v > room.get(k, 0)]
        if not short:
            return t, ""
        miss = f"{t}: {'; '.join(short)}"
    return None, miss


def _fmt(key: str, value: float) -> str:
    if key in ("memory", "ephemeral-storage") or key.startswith("hugepages"):
        return f"{value / 2**20:.0f}Mi ({value / 2**30:.1f}Gi)"
    return f"{value:g}"


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
        if any(_fits(model, p, pod)[0] for p in cands):
            continue
        misses = " | ".join(f"pool {p.name}: {_fits(model, p, pod)[1]}" for p in cands)
        # Karpenter sizes a type it has not launched yet with the VM overhead estimate (it uses a node's
        # real capacity only once one of that type and AMI has registered): on a fresh cluster a pod sized
        # above the estimate stays Pending for good, so this is mandatory.
        findings.append(Finding(f"{RULE}/does-not-fit", MANDATORY, (owner, name),
                                f"{name} fits no instance type of its pools as Karpenter sizes them before a first launch "
                                f"(EC2 memory minus {karpenter.VM_MEMORY_OVERHEAD_PERCENT:.1%} VM overhead, kube-reserved, "
                                f"eviction threshold, DaemonSets): {misses}; it stays Pending; fix: size requests from the "
                                f"pool's schedulableMilliCpuPerNode/schedulableMemoryMiBPerNode platform outputs "
                                f"(workloads/common.py node_requests), not the instance's total"))
    findings += _gang_findings(model)
    findings += _exported_room_findings(model)
    return findings


def _exported_room_findings(model: Model) -> list[Finding]:
    """The platform's per-pool schedulable outputs, which workloads size their per-node pods from, must
    not promise more than Karpenter's first node of the pool's largest type holds next to the DaemonSets
    this render actually lands there (a DaemonSet added to the render but not to the platform's
    infra/nodepools.py rendered_daemonset_pods would otherwise make every whole-node pod unschedulable)."""
    findings = []
    exported = (model.platform.outputs or {}).get("nodePools") or {}
    for pool in pools(model):
        out = exported.get(pool.name) or {}
        if "schedulableMemoryMiBPerNode" not in out or not pool.instance_types:
            continue
        itype = largest_type(pool)
        room = schedulable(model, pool, itype)
        have = {"schedulableMilliCpuPerNode": int(room["cpu"] * 1000), "schedulableMemoryMiBPerNode": int(room["memory"] // 2**20)}
        over = [f"{k} {out[k]} > {v}" for k, v in have.items() if int(out.get(k, 0)) > v]
        if over:
            findings.append(Finding(f"{RULE}/exported-room", MANDATORY, (obj_id(pool.obj),),
                                    f"platform output nodePools.{pool.name} promises more than a {itype} node of pool "
                                    f"{pool.name} holds after the rendered DaemonSets ({'; '.join(over)}): pods sized from it "
                                    f"stay Pending; fix: count every DaemonSet of the render in infra/nodepools.py "
                                    f"rendered_daemonset_pods / unrendered_daemonset_pods"))
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
            alloc = allocatable(itype)
            need = pod_requests(pods_on_pool[0])
            per_node = min((int(alloc.get(k, 0) // v) for k, v in need.items()
                            if v and k in alloc), default=1) or 1
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
