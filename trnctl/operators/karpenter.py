"""What Karpenter (karpenter-provider-aws v1.14.1, infra/versions.py KARPENTER_VERSION) does that the
platform depends on: the node it launches for a pod (allocatable before a first launch, DaemonSet
overhead: the platform's per-pool `schedulable*PerNode` outputs and the cluster model's scheduling rule
both come from here), and what it and EC2 do to nodes of a Capacity Block for ML as the block's end
approaches (preflight prints these times). Nothing else restates them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from trnctl.operators.kubernetes import match_expression, pod_requests, tolerates

# Karpenter marks a Capacity Block "expiring" 40 minutes before its end, whatever the instance type,
# stops launching into it and deletes the NodeClaims launched into it (drain, then terminate).
# source: aws/karpenter-provider-aws@v1.14.1:pkg/apis/v1/ec2nodeclass_status.go
#   (CapacityReservationFromEC2: capacityReservationExpirationPeriod = time.Minute * 40)
# source: aws/karpenter-provider-aws@v1.14.1:pkg/controllers/capacityreservation/expiration/controller.go
#   ("terminated 40 minutes before the capacity-block's end time, 10 minutes before EC2 begins reclaiming")
KARPENTER_BLOCK_DRAIN_BEFORE_END = timedelta(minutes=40)

# EC2 terminates the instances of a Capacity Block from 30 minutes before its end, 60 for UltraServer
# types (the EC2 user guide as quoted in aws/karpenter-provider-aws@v1.14.1:
# website/content/en/docs/tasks/odcrs.md, "Capacity Blocks").
EC2_BLOCK_RECLAIM_BEFORE_END = timedelta(minutes=30)
EC2_ULTRASERVER_BLOCK_RECLAIM_BEFORE_END = timedelta(minutes=60)

# The time Karpenter's drain leaves a pod before EC2 reclaims an ordinary instance (40 - 30 min). On
# UltraServer types EC2 reclaims 20 minutes *before* Karpenter drains, so a run there must stop itself
# with the same margin before EC2's reclaim: end - 60 - 10 = end - 70 minutes.
DRAIN_MARGIN = KARPENTER_BLOCK_DRAIN_BEFORE_END - EC2_BLOCK_RECLAIM_BEFORE_END


def ec2_reclaim_time(end: datetime, ultraserver: bool) -> datetime:
    """When EC2 starts terminating the block's instances."""
    return end - (EC2_ULTRASERVER_BLOCK_RECLAIM_BEFORE_END if ultraserver else EC2_BLOCK_RECLAIM_BEFORE_END)


def drain_time(end: datetime) -> datetime:
    """When Karpenter starts deleting the block's nodes (every instance type alike)."""
    return end - KARPENTER_BLOCK_DRAIN_BEFORE_END


def stop_by_time(end: datetime, ultraserver: bool) -> datetime:
    """When runs on the block must have checkpointed and stopped: Karpenter's drain for ordinary
    types (it precedes EC2's reclaim by DRAIN_MARGIN); DRAIN_MARGIN before EC2's reclaim for
    UltraServer types, which EC2 reclaims before Karpenter drains them."""
    if ultraserver:
        return ec2_reclaim_time(end, True) - DRAIN_MARGIN
    return drain_time(end)


def drain_precedes_reclaim(ultraserver: bool) -> bool:
    """Whether Karpenter's drain comes before EC2's reclaim (False on UltraServer types)."""
    return KARPENTER_BLOCK_DRAIN_BEFORE_END > (EC2_ULTRASERVER_BLOCK_RECLAIM_BEFORE_END if ultraserver
                                               else EC2_BLOCK_RECLAIM_BEFORE_END)


# --------------------------------------------------------------------------- the node Karpenter launches for a pod
#
# How Karpenter sizes an instance type before it launches one (aws/karpenter-provider-aws@v1.14.1,
# pkg/providers/instancetype/types.go): allocatable = capacity - kube-reserved - eviction threshold,
# where capacity.memory is EC2's memory minus VM_MEMORY_OVERHEAD_PERCENT until a node of that type and
# AMI has registered (then the node's reported capacity, cached per type and AMI: an AMI bump starts
# over). A pod fits when its requests plus every DaemonSet pod that lands on the node fit allocatable
# (kubernetes-sigs/karpenter@v1.14.1 pkg/controllers/provisioning/scheduling, daemonset overhead).
# Pods sized from `schedulable()` therefore fit the first node of a type on a fresh cluster.

# pkg/operator/options/options.go: --vm-memory-overhead-percent / VM_MEMORY_OVERHEAD_PERCENT, default
# 0.075; infra/karpenter.py sets no settings.vmMemoryOverheadPercent, so the default holds.
VM_MEMORY_OVERHEAD_PERCENT = 0.075
# types.go evictionThreshold: memory 100Mi unless the NodePool's kubelet.evictionHard sets memory.available
# (ours sets no kubelet block).
EVICTION_HARD_MEMORY_MIB = 100
# types.go kubeReservedResources: CPU millicores reserved per range of the node's millicores, each
# term truncated to an integer (int64(r * percentage)).
KUBE_RESERVED_CPU_RANGES = ((0, 1000, 0.06), (1000, 2000, 0.01), (2000, 4000, 0.005), (4000, 1 << 31, 0.0025))
EFA_RESOURCE = "vpc.amazonaws.com/efa"


def eni_limited_pods(default_card_interfaces: int, ipv4_per_interface: int) -> int:
    """types.go ENILimitedPods (no reserved ENIs, no EFA-only interfaces: our EC2NodeClasses set
    neither): interfaces of the default network card x (IPv4 addresses per interface - 1) + 2."""
    return max(default_card_interfaces, 0) * (ipv4_per_interface - 1) + 2


def max_pods(it) -> int:
    """Pods per node as Karpenter counts them for the AL2023 family (amifamily DefaultFamily
    FeatureFlags: SupportsENILimitedPodDensity and UsesENILimitedMemoryOverhead are true, and our
    NodePools set no kubelet maxPods/podsPerCore): ENI-limited. A type without recorded network
    facts (Trn3: no EC2 answer yet) falls back to the EKS max-pods recommendation's cap (110 below 30
    vCPUs, 250 above: awslabs/amazon-eks-ami templates/al2/runtime/max-pods-calculator.sh)."""
    if it.default_card_interfaces and it.ipv4_per_interface:
        return eni_limited_pods(it.default_card_interfaces, it.ipv4_per_interface)
    return 110 if it.vcpu < 30 else 250


def kube_reserved_millicpu(vcpu: int) -> int:
    """types.go kubeReservedResources, CPU: 6% of the first core, 1% of the second, 0.5% of the
    next two, 0.25% of the rest, in millicores."""
    milli, reserved = vcpu * 1000, 0
    for start, end, pct in KUBE_RESERVED_CPU_RANGES:
        if milli >= start:
            reserved += int((min(milli, end) - start) * pct)
    return reserved


def kube_reserved_memory_mib(pods: int) -> int:
    """types.go kubeReservedResources, memory: 11 MiB per pod + 255 MiB."""
    return 11 * pods + 255


def vm_memory_overhead_mib(memory_mib: int) -> int:
    """types.go memory(): ceil(memory x VM_MEMORY_OVERHEAD_PERCENT) MiB subtracted from EC2's memory."""
    return math.ceil(memory_mib * VM_MEMORY_OVERHEAD_PERCENT)


def allocatable(instance_type: str, *, vm_overhead: bool = True) -> dict[str, float]:
    """Karpenter's allocatable for a node of `instance_type` (bytes, cores, devices); without
    `vm_overhead`, the figure once a node of the type has registered and EC2's memory is known."""
    from infra import catalog
    it = catalog.instance_type(instance_type)
    pods = max_pods(it)
    mem_mib = it.memory_gib * 1024
    mem_mib -= vm_memory_overhead_mib(mem_mib) if vm_overhead else 0
    mem_mib -= kube_reserved_memory_mib(pods) + EVICTION_HARD_MEMORY_MIB
    alloc = {"cpu": (it.vcpu * 1000 - kube_reserved_millicpu(it.vcpu)) / 1000, "memory": mem_mib * 2**20, "pods": pods}
    if it.neuron_devices:
        alloc["aws.amazon.com/neuron"] = it.neuron_devices
        alloc["aws.amazon.com/neuroncore"] = it.neuron_cores
    if it.efa_interfaces:
        alloc[EFA_RESOURCE] = it.efa_interfaces
    return alloc


@dataclass(frozen=True)
class Pool:
    """A NodePool object as Karpenter reads it to decide whether a node of it could hold a pod."""
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
        if terms and not any(all(self._requirement_possible(e, labels) for e in t.get("matchExpressions") or [])
                             for t in terms):
            return False
        return True

    def _requirement_possible(self, expr: dict, labels: dict) -> bool:
        if expr["key"] in labels:
            return match_expression(expr, labels)
        allowed = self.values(expr["key"])
        if allowed is not None and expr["operator"] == "In":
            return bool(set(allowed) & {str(v) for v in expr.get("values") or []})
        if allowed is not None and expr["operator"] == "Exists":
            return True
        # A label neither the template nor a requirement gives the node: only absence-operators hold.
        return expr["operator"] in ("NotIn", "DoesNotExist")

    def lands(self, pod: dict, instance_type: str) -> bool:
        """Whether a pod (a DaemonSet's template) tolerates and selects a node of this pool."""
        return tolerates(pod, self.taints) and self.admits_labels(pod, instance_type)


def daemonset_overhead(pool: Pool, instance_type: str, daemonset_pods: Iterable[dict]) -> dict[str, float]:
    """Requests of every DaemonSet pod (given as pod templates `{"spec": ...}`) that lands on a node of `pool`."""
    total: dict[str, float] = {}
    for pod in daemonset_pods:
        if pool.lands(pod, instance_type):
            for k, v in pod_requests(pod).items():
                total[k] = total.get(k, 0) + v
    return total


def schedulable(pool: Pool, instance_type: str, daemonset_pods: Iterable[dict], *, vm_overhead: bool = True) -> dict[str, float]:
    """What one workload pod may request on a node of `pool` of `instance_type`: Karpenter's
    allocatable minus the DaemonSet pods that land there."""
    overhead = daemonset_overhead(pool, instance_type, daemonset_pods)
    return {k: v - overhead.get(k, 0) for k, v in allocatable(instance_type, vm_overhead=vm_overhead).items()}
