"""The platform program: parse the stack config once, compose one component per concern,
export what workload stacks need.

Dependency order (and so `pulumi destroy` order, reversed): network -> cluster -> system
nodes -> Karpenter -> NodePools, add-ons, storage. Destroy removes NodePools (Karpenter
drains and terminates their nodes, the EC2NodeClass finalizer waits for that) before the
Karpenter controller, add-ons and cluster go, and the VPC last.
"""
import sys
from pathlib import Path

# Pulumi runs this file with infra/ as the working program directory; the package
# imports below need the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi  # noqa: E402

from infra import catalog, config, network, versions  # noqa: E402
from infra.addons import KUBERAY_NAMESPACE, Addons, AddonsArgs, default_queue_spec  # noqa: E402
from infra.burnin import BurnIn, BurnInArgs  # noqa: E402
from infra.cluster import Cluster, ClusterArgs  # noqa: E402
from infra.karpenter import NAMESPACE as karpenter_namespace  # noqa: E402
from infra.karpenter import Karpenter, KarpenterArgs  # noqa: E402
from infra.monitoring import Monitoring, MonitoringArgs  # noqa: E402
from infra.monitoring import values as monitoring_values  # noqa: E402
from infra.monitoring.hang import HangWatchdog, HangWatchdogArgs  # noqa: E402
from infra.nodepools import NodePools, NodePoolsArgs, pool_scheduling, rendered_daemonset_pods  # noqa: E402
from infra.prices import has_prices, load_prices  # noqa: E402
from infra.registry import Registry, RegistryArgs  # noqa: E402
from infra.storage import SharedStorage, SharedStorageArgs  # noqa: E402

cfg = config.from_pulumi(pulumi.get_stack())
tags = {"trn-platform/cluster": cfg.cluster_name, "trn-platform/environment": cfg.environment,
        "managed-by": "pulumi", **cfg.tags}

# -- network: AZ IDs that offer the pools' instance types ---------------------------------
offerings = network.fetch_offerings([t for p in cfg.node_pools for t in p.instance_types])
az_ids = network.choose_az_ids(offerings, cfg.node_pools, cfg.network, list(catalog.zone_ids(cfg.region)))
pool_zone_ids = {p.name: network.pool_zone_ids(p, offerings, az_ids) for p in cfg.node_pools}
net = network.Network("network", network.NetworkArgs(cluster_name=cfg.cluster_name, config=cfg.network,
                                                     az_ids=az_ids, region=cfg.region, tags=tags))

# -- cluster and system nodes -------------------------------------------------------------
cluster = Cluster("cluster", ClusterArgs(config=cfg, vpc_id=net.vpc_id, private_subnet_ids=net.private_subnet_ids,
                                         public_subnet_ids=net.public_subnet_ids, tags=tags))
on_system_nodes = [cluster.system_nodes, cluster.pod_identity_agent]

# -- Karpenter and its pools --------------------------------------------------------------
karpenter = Karpenter("karpenter", KarpenterArgs(
    cluster_name=cfg.cluster_name, cluster_ready=cluster.identity.cluster_name, region=cfg.region,
    identity=cluster.identity, provider=cluster.provider, depends_on=on_system_nodes, tags=tags))
pools = NodePools("pools", NodePoolsArgs(
    pools=cfg.node_pools, pool_zone_ids=pool_zone_ids, cluster_name=cfg.cluster_name,
    node_role_name=karpenter.node_role.name, cluster_security_group_id=cluster.cluster_security_group_id,
    tags=tags, provider=cluster.provider, depends_on=[karpenter.release, karpenter.crds, karpenter.node_access]))

# New accelerator nodes take pods only after the burn-in removes their startup taint.
burn_in = BurnIn("burnin", BurnInArgs(pools=cfg.node_pools, provider=cluster.provider, depends_on=on_system_nodes))

# -- shared storage, operators, registry --------------------------------------------------
accel_azs = [az for az in az_ids if any(az in pool_zone_ids[p.name] for p in cfg.accelerator_pools)] or az_ids
storage = SharedStorage("storage", SharedStorageArgs(
    config=cfg.fsx, cluster_name=cfg.cluster_name, vpc_id=net.vpc_id, vpc_cidr=cfg.network.vpc_cidr,
    subnet_id=net.private_subnet_ids[az_ids.index(accel_azs[0])],
    node_security_group_id=cluster.node_security_group.id, monitoring_namespace=cfg.monitoring.namespace,
    kuberay_namespace=KUBERAY_NAMESPACE, provider=cluster.provider, depends_on=on_system_nodes, tags=tags))
accel_limits = [p.limits for p in cfg.accelerator_pools]
addons = Addons("addons", AddonsArgs(
    provider=cluster.provider, depends_on=on_system_nodes, region=cfg.region,
    kubernetes_version=cfg.kubernetes_version, queue_capability=default_queue_spec(
        cpu_limit=sum(int(lim["cpu"]) for lim in accel_limits),
        memory_gib_limit=sum(int(lim["memory"].removesuffix("Gi")) for lim in accel_limits),
        neuron_limit=sum(int(lim.get("aws.amazon.com/neuron", 0)) for lim in accel_limits))))
# -- observability: metrics, Neuron monitor, dashboards, alerts -----------------------------
if cfg.monitoring.enabled:
    # A region without list prices (infra/data/prices.json) gets no $/h recording rules; Trn3 has no
    # list price yet (no EC2 type either, infra/data/instance_types.json): the $/h rules and dashboard
    # leave unpriced types out, and say so here.
    prices = load_prices(cfg.region) if has_prices(cfg.region) else None
    unpriced = sorted({t for p in cfg.accelerator_pools for t in p.instance_types} - set(prices.ec2_per_hour)) if prices else []
    if unpriced:
        pulumi.log.warn(f"no on-demand price for {', '.join(unpriced)} in {cfg.region} (infra/data/prices.json): "
                        "the accelerator $/h rules and dashboard leave them out")
    monitoring = Monitoring("monitoring", MonitoringArgs(
        config=cfg.monitoring, cluster_name=cfg.cluster_name, region=cfg.region, identity=cluster.identity,
        provider=cluster.provider, depends_on=[*on_system_nodes, cluster.ebs_csi],
        accelerator_pools=[p.name for p in cfg.accelerator_pools], fsx_file_system_id=storage.file_system.id,
        fsx_capacity_gib=cfg.fsx.storage_capacity_gib,
        accelerator_prices={t: prices.instance(t) for p in cfg.accelerator_pools for t in p.instance_types
                            if t not in unpriced} if prices else {},
        neuron_monitor_image=versions.neuron_monitor_image(), karpenter_namespace=karpenter_namespace,
        kuberay_namespace=KUBERAY_NAMESPACE, volcano_namespace="volcano-system", tags=tags))
    pulumi.export("monitoring", monitoring.outputs)
    # Restarts training gangs whose step counter stopped (TrainingGangHung) from their newest checkpoint.
    HangWatchdog("hang-watchdog", HangWatchdogArgs(
        config=cfg.monitoring, image=versions.neuron_monitor_image(), prometheus_url=monitoring.outputs["prometheusUrl"],
        workload_namespace=storage.pvc_namespace, on_system_nodes=monitoring_values.ON_SYSTEM_NODES,
        provider=cluster.provider, depends_on=[*on_system_nodes, monitoring, storage]))

registry = Registry("registry", RegistryArgs(cluster_name=cfg.cluster_name, repositories=cfg.ecr_repositories,
                                             force_destroy=cfg.environment != "prod", budget=cfg.budget, tags=tags))

# -- what workload stacks read through their StackReference --------------------------------
pulumi.export("clusterName", cfg.cluster_name)
pulumi.export("region", cfg.region)
pulumi.export("kubernetesVersion", cfg.kubernetes_version)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("identityMode", cfg.identity)
pulumi.export("oidcProviderArn", cluster.identity.oidc_provider_arn)
pulumi.export("oidcIssuer", cluster.identity.oidc_issuer)
pulumi.export("availabilityZoneIds", az_ids)
pulumi.export("nodePools", {p.name: pool_scheduling(p, daemonset_pods=rendered_daemonset_pods(cfg),
                                                     zone_ids=pool_zone_ids[p.name]) for p in cfg.node_pools})
pulumi.export("neuronTracks", pools.tracks)
pulumi.export("sharedStorage", {"pvcName": storage.pvc_name, "namespace": storage.pvc_namespace,
                                "mountPath": storage.mount_path, "fileSystemId": storage.file_system.id})
pulumi.export("workloadNamespace", storage.pvc_namespace)
pulumi.export("ecrRepositories", {name: repo.repository_url for name, repo in registry.repositories.items()})
pulumi.export("artifactsBucket", registry.bucket.bucket)
pulumi.export("artifactsBucketArn", registry.bucket.arn)
pulumi.export("volcanoQueue", addons.queue_name)
pulumi.export("neuronSchedulerName", versions.NEURON_SCHEDULER_NAME)
pulumi.export("neuronSdkVersion", versions.neuron_sdk()["neuron_sdk"])
