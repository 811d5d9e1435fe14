"""Karpenter NodePools and EC2NodeClasses for trn1/trn1n/trn2 (EFA), inf2 and CPU.

Pure functions build the specs; the scheduling facts a workload needs (node selector,
tolerations, devices per node) come from `pool_scheduling`, the same function that
labels and taints the NodePool, and are exported as stack outputs — so workload
selectors can never drift from the labels nodes carry.

Trn2/Trn3 pools run at one Logical NeuronCore (LNC) setting, written on each node the way
the Neuron EKS docs show; the cores per node a workload sizes itself from are the logical
ones at that setting. Capacity Blocks for ML are Karpenter `reserved` capacity restricted
to reservations of type `capacity-block`.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import catalog, versions
from infra.config import NodePoolConfig
from trnctl.operators import karpenter

POOL_LABEL = "trn-platform/pool"
FAMILY_LABEL = "trn-platform/family"
EFA_LABEL = "trn-platform/efa"
NEURON_TAINT = {"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}
# Karpenter `startupTaints` (aws/karpenter-provider-aws@v1.14.1 pkg/apis/crds/karpenter.sh_nodepools.yaml,
# spec.template.spec.startupTaints: applied at startup, "expected to be removed automatically ... typically
# by a DaemonSet that tolerates the taint"; ignored for provisioning, so pods need not tolerate them).
# Only the burn-in DaemonSet (infra/burnin.py) tolerates it and removes it once the node passes.
BURN_IN_TAINT = {"key": "trn-platform/burn-in", "value": "pending", "effect": "NoSchedule"}
NEURON_RESOURCE = "aws.amazon.com/neuron"
EFA_RESOURCE = "vpc.amazonaws.com/efa"

# Root volume defaults (GiB): Neuron images are large (10-20 GB) and compile caches grow.
DEFAULT_ROOT_GIB = {"trn1": 200, "trn1n": 200, "trn2": 500, "trn3": 500, "inf2": 150, "cpu": 100}

# Karpenter's capacity types (karpenter-provider-aws v1.14 website/content/en/v1.14/tasks/odcrs.md):
# ODCRs and Capacity Blocks are both `reserved`; nodes in a block carry this label.
CAPACITY_TYPE_KEY = "karpenter.sh/capacity-type"
RESERVATION_TYPE_KEY = "karpenter.k8s.aws/capacity-reservation-type"
KARPENTER_CAPACITY_TYPE = {"on-demand": "on-demand", "spot": "spot", "reserved": "reserved",
                           "capacity-block": "reserved"}

# Where the Neuron runtime on an EKS node reads its LNC setting: Neuron docs
# (aws-neuron/aws-neuron-sdk@81ce03ae deploy/eks/prerequisites.rst, "Trn2 LNC configuration")
# set it from the node's user data in /opt/aws/neuron/logical_nc_config (the Neuron device
# plugin DaemonSet mounts the host's /opt/aws: neuron-helm-chart values.yaml, devicePlugin.volumes
# "aws-config"). Karpenter itself models aws.amazon.com/neuroncore as the physical count
# (karpenter-provider-aws v1.14.1 pkg/providers/instancetype/types.go, awsNeuronCores), so
# workloads size themselves from the exported logical count, not from Karpenter's.
LNC_CONFIG_FILE = "/opt/aws/neuron/logical_nc_config"


# DaemonSets the platform installs through charts and EKS add-ons, which the render does not expand, as
# the pod templates Karpenter counts against each node (their tolerations and requests as set by our
# values or the pinned defaults; a DaemonSet without requests reserves nothing for the scheduler):
# - prometheus-node-exporter: tolerates everything, infra/monitoring/values.py NODE_EXPORTER_REQUESTS
#   (counted on every pool even with monitoring off: the conservative side);
# - aws-node (VPC CNI add-on): cpu 25m (aws/amazon-vpc-cni-k8s charts/aws-vpc-cni/values.yaml resources.requests);
# - kube-proxy (EKS add-on): cpu 100m (EKS kube-proxy add-on manifest, resources.requests.cpu);
# - Neuron device plugin, EFA device plugin, FSx CSI node, pod identity agent: no requests in the pinned
#   charts' defaults as read for the cluster model (not re-verified offline for every tag: README).
def unrendered_daemonset_pods() -> list[dict]:
    from infra.monitoring.values import NODE_EXPORTER_REQUESTS  # infra.monitoring imports this module
    return [{"spec": {"tolerations": [{"operator": "Exists"}], "containers": [{"name": name, "resources": {"requests": req}}]}}
            for name, req in (("node-exporter", NODE_EXPORTER_REQUESTS), ("aws-node", {"cpu": "25m"}),
                              ("kube-proxy", {"cpu": "100m"}))]


def rendered_daemonset_pods(cfg) -> list[dict]:
    """Pod templates of the DaemonSets the platform renders itself: neuron-monitor on the accelerator
    pools when monitoring is on, and the burn-in agent on the pools it gates (it stays on the node
    after the taint is gone). The same pure specs infra/monitoring and infra/burnin register."""
    from infra import burnin  # imports this module
    from infra.monitoring import neuron
    pods = [ds["spec"]["template"] for ds in burnin.manifests(cfg.node_pools) if ds["kind"] == "DaemonSet"]
    if cfg.monitoring.enabled and cfg.accelerator_pools:
        ds = neuron.daemonset(image=versions.neuron_monitor_image(), accelerator_pools=[p.name for p in cfg.accelerator_pools])
        pods.append(ds["spec"]["template"])
    return pods


def schedulable_per_node(pool: NodePoolConfig, daemonset_pods: list[dict], zone_ids: list[str] = ()) -> dict:
    """What one workload pod may request on a node of the pool's largest type, as Karpenter sizes
    that type before it has launched one (trnctl/operators/karpenter.py schedulable): its allocatable
    minus the rendered DaemonSets (`daemonset_pods`, pod templates) and the unrendered ones that land
    there. Workloads size their per-node pods from these outputs; the cluster model checks them
    against the render."""
    obj = {"metadata": {"name": pool.name}, "spec": nodepool_spec(pool, zone_ids=list(zone_ids))}
    room = karpenter.schedulable(karpenter.Pool.of(obj), pool.largest_instance.name,
                                 [*daemonset_pods, *unrendered_daemonset_pods()])
    return {"schedulableMilliCpuPerNode": int(room["cpu"] * 1000), "schedulableMemoryMiBPerNode": int(room["memory"] // 2**20)}


def pool_track(pool: NodePoolConfig) -> str | None:
    """The Neuron software track (images/neuron-sdk.json) whose images run on this pool."""
    return versions.neuron_track_for_family(pool.family) if pool.is_accelerator else None


def pool_scheduling(pool: NodePoolConfig, *, daemonset_pods: list[dict], zone_ids: list[str] = ()) -> dict:
    """What a pod needs to land on this pool, and what one node of it offers.

    `neuronCoresPerNode` is what the Neuron runtime exposes at the pool's LNC (64 on a
    trn2.48xlarge at LNC=2); `physicalNeuronCoresPerNode` is the hardware count.
    `vcpuPerNode`/`memoryGiBPerNode` are the instance's; `schedulableMilliCpuPerNode` and
    `schedulableMemoryMiBPerNode` are what a workload pod may request there (schedulable_per_node).
    """
    big = pool.largest_instance
    tolerations = [{"key": NEURON_TAINT["key"], "operator": "Exists", "effect": NEURON_TAINT["effect"]}] \
        if pool.is_accelerator else []
    return {
        "nodeSelector": {POOL_LABEL: pool.name},
        "tolerations": tolerations,
        "instanceTypes": list(pool.instance_types),
        "neuronDevicesPerNode": big.neuron_devices,
        "neuronCoresPerNode": big.neuron_cores_at(pool.lnc),
        "physicalNeuronCoresPerNode": big.neuron_cores,
        "lnc": pool.lnc,
        "track": pool_track(pool),
        "efaPerNode": big.efa_interfaces if pool.efa else 0,
        "vcpuPerNode": big.vcpu,
        "memoryGiBPerNode": big.memory_gib,
        "maxNodes": pool.max_nodes,
        "capacityTypes": list(pool.capacity_types),
        **schedulable_per_node(pool, daemonset_pods, zone_ids),
    }


def node_labels(pool: NodePoolConfig) -> dict[str, str]:
    labels = {POOL_LABEL: pool.name, FAMILY_LABEL: pool.family}
    if pool.efa:
        labels[EFA_LABEL] = "true"
    return labels


def _uses_instance_store(pool: NodePoolConfig) -> bool:
    return all(catalog.instance_type(t).instance_store_gib > 0 for t in pool.instance_types)


def ec2_nodeclass_spec(pool: NodePoolConfig, *, cluster_name: str, node_role_name: str,
                       cluster_security_group_id: str, tags: dict[str, str]) -> dict:
    """EC2NodeClass: pinned AL2023 alias (Neuron variant picked for trn/inf), IMDSv2 only,
    encrypted gp3 root, RAID0 of the NVMe instance store where every type has one."""
    root_gib = pool.root_volume_gib or DEFAULT_ROOT_GIB[pool.family]
    spec: dict = {
        "role": node_role_name,
        "amiSelectorTerms": [{"alias": versions.AL2023_AMI_ALIAS}],
        "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": cluster_name}}],
        "securityGroupSelectorTerms": [{"tags": {"karpenter.sh/discovery": cluster_name}},
                                       {"id": cluster_security_group_id}],
        "metadataOptions": {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled",
                            "httpPutResponseHopLimit": 1, "httpTokens": "required"},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {
            "volumeSize": f"{root_gib}Gi", "volumeType": "gp3", "encrypted": True, "deleteOnTermination": True,
            "iops": 3000, "throughput": 250 if pool.is_accelerator else 125}}],
        "tags": {**tags, POOL_LABEL: pool.name},
    }
    if _uses_instance_store(pool):
        # trn1.32xlarge has 4 x 1.9 TB NVMe: kubelet and containerd state go there.
        spec["instanceStorePolicy"] = "RAID0"
    reservations = pool.capacity_reservation_ids + pool.capacity_block_ids
    if reservations:
        # Capacity Blocks are selected like any ODCR, by id (Karpenter v1.14 odcrs.md).
        spec["capacityReservationSelectorTerms"] = [{"id": rid} for rid in reservations]
    if pool.lnc:
        spec["userData"] = lnc_user_data(pool.lnc)
    return spec


def lnc_user_data(lnc: int) -> str:
    """A shell part Karpenter merges with its AL2023 NodeConfig (Karpenter v1.14
    concepts/nodeclasses.md, spec.userData, AL2023): the node's Neuron runtime default LNC."""
    return ("#!/bin/bash\n"
            "# Logical NeuronCore configuration of this pool, read by the Neuron runtime\n"
            "set -euo pipefail\n"
            f"install -d -m 0755 {LNC_CONFIG_FILE.rsplit('/', 1)[0]}\n"
            f"echo 'NEURON_LOGICAL_NC_CONFIG={lnc}' > {LNC_CONFIG_FILE}\n")


def capacity_requirements(pool: NodePoolConfig) -> list[dict]:
    """Karpenter capacity types of the pool. A Capacity-Block-only pool also requires the
    block label: only reserved nodes carry it, so a pool with an on-demand fallback must not."""
    karpenter_types = list(dict.fromkeys(KARPENTER_CAPACITY_TYPE[c] for c in pool.capacity_types))
    reqs = [{"key": CAPACITY_TYPE_KEY, "operator": "In", "values": karpenter_types}]
    if set(pool.capacity_types) == {"capacity-block"}:
        reqs.append({"key": RESERVATION_TYPE_KEY, "operator": "In", "values": ["capacity-block"]})
    return reqs


def nodepool_spec(pool: NodePoolConfig, *, zone_ids: list[str]) -> dict:
    """NodePool: labels/taints from `pool_scheduling`, explicit limits, zero minimum.

    Accelerator pools consolidate only when empty and never disrupt a busy node for drift
    or underutilization: a training job keeps its nodes until it ends.
    """
    requirements = [
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(pool.instance_types)},
        *capacity_requirements(pool),
        {"key": "topology.k8s.aws/zone-id", "operator": "In", "values": list(zone_ids)},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]
    template_spec: dict = {
        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": pool.name},
        "requirements": requirements,
        "expireAfter": "Never" if pool.is_accelerator else "720h",
    }
    if pool.is_accelerator:
        template_spec["taints"] = [dict(NEURON_TAINT)]
        if pool.burn_in.enabled:
            template_spec["startupTaints"] = [dict(BURN_IN_TAINT)]
        disruption = {
            "consolidationPolicy": "WhenEmpty",
            "consolidateAfter": pool.consolidate_after,
            "budgets": [{"nodes": pool.disruption_budget_nodes, "reasons": ["Empty"]},
                        {"nodes": "0", "reasons": ["Drifted", "Underutilized"]}],
        }
    else:
        disruption = {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": pool.consolidate_after,
                      "budgets": [{"nodes": pool.disruption_budget_nodes}]}
    return {
        "template": {"metadata": {"labels": node_labels(pool)}, "spec": template_spec},
        "disruption": disruption,
        "limits": pool.limits,
        # Prefer reserved capacity pools over on-demand ones for the same pods.
        "weight": 50 if pool.uses_reservations else 10,
    }


def neuron_tracks(pools: tuple[NodePoolConfig, ...]) -> dict[str, list[str]]:
    """{track: the accelerator pools its images run on}, every track named (maybe empty)."""
    out: dict[str, list[str]] = {name: [] for name in versions.NEURON_TRACKS}
    for pool in pools:
        track = pool_track(pool)
        if track:
            out[track].append(pool.name)
    return out


@dataclass
class NodePoolsArgs:
    pools: tuple[NodePoolConfig, ...]
    pool_zone_ids: dict[str, list[str]]
    cluster_name: str
    node_role_name: pulumi.Input[str]
    cluster_security_group_id: pulumi.Input[str]
    tags: dict[str, str]
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]


class NodePools(pulumi.ComponentResource):
    """One EC2NodeClass + NodePool per configured pool."""

    def __init__(self, name: str, args: NodePoolsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:NodePools", name, None, opts)
        crd_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        self.node_classes: dict[str, k8s.apiextensions.CustomResource] = {}
        self.node_pools: dict[str, k8s.apiextensions.CustomResource] = {}
        for pool in args.pools:
            spec = pulumi.Output.all(args.node_role_name, args.cluster_security_group_id).apply(
                lambda a, p=pool: ec2_nodeclass_spec(p, cluster_name=args.cluster_name, node_role_name=a[0],
                                                     cluster_security_group_id=a[1], tags=args.tags))
            nc = k8s.apiextensions.CustomResource(
                f"{name}-{pool.name}-class", api_version="karpenter.k8s.aws/v1", kind="EC2NodeClass",
                metadata={"name": pool.name}, spec=spec, opts=crd_opts)
            np_ = k8s.apiextensions.CustomResource(
                f"{name}-{pool.name}", api_version="karpenter.sh/v1", kind="NodePool",
                metadata={"name": pool.name}, spec=nodepool_spec(pool, zone_ids=args.pool_zone_ids[pool.name]),
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[*args.depends_on, nc]))
            self.node_classes[pool.name] = nc
            self.node_pools[pool.name] = np_
        self.tracks = neuron_tracks(args.pools)
        self.register_outputs({"pools": list(self.node_pools)})
