"""Cluster add-ons for ML: Neuron device plugin + scheduler extension, EFA device plugin,
MPI operator, KubeRay (Volcano as batch scheduler), Volcano with a default Queue, and KEDA
(autoscaling on workload metrics such as vLLM's waiting requests).

Every chart and manifest is pinned in infra/versions.py. Helm values are pure functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from infra import catalog, versions
from infra.config import FAMILIES
from infra.cluster import SYSTEM_POOL_LABEL
from infra.nodepools import EFA_LABEL, NEURON_TAINT

ON_SYSTEM_NODES = {"nodeSelector": SYSTEM_POOL_LABEL,
                   "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}
TOLERATE_NEURON = [{"key": NEURON_TAINT["key"], "operator": "Exists", "effect": NEURON_TAINT["effect"]}]
MPI_OPERATOR_KUSTOMIZATION = Path(__file__).resolve().parent / "manifests" / "mpi-operator"
VOLCANO_QUEUE = "ml-default"
KUBERAY_NAMESPACE = "kuberay-system"
# Pod labels of the operators that open connections into workload pods (NetworkPolicy peers in
# infra/storage.py; trnctl/cluster/reachability.py): kuberay-operator chart
# (ray-project/kuberay@v1.7.0 helm-chart/kuberay-operator/templates/deployment.yaml, template labels
# app.kubernetes.io/name = chart name "kuberay-operator"); keda chart (kedacore/charts keda/templates/
# manager/deployment.yaml at 2.20.2, pod label app.kubernetes.io/name "keda-operator").
KUBERAY_OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}
KEDA_OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "keda-operator"}


# The chart's Neuron node problem detector and recovery (values `npd`, chart 1.9.0 at
# aws-neuron/neuron-helm-charts@b77a6f90 charts/neuron-helm-chart/values.yaml, the last chart source
# readable here; 1.10.0 is pinned): the detector (node-problem-detector with a kmsg monitor) sets
# the node condition `NeuronHealth` on uncorrectable SRAM/NC/HBM and DMA errors; the recovery
# container (`npd.nodeRecovery`, off by default) replaces a node by marking its EC2 Auto Scaling
# instance unhealthy (autoscaling:SetInstanceHealth on the node group's ASG: aws-neuron-sdk@81ce03ae
# deploy/infrastructure/problem-detector-irsa.rst). Karpenter's nodes belong to no Auto Scaling
# group, so that recovery has nothing to act on here, and on these nodes the same Neuron errors
# already reach Karpenter: the EKS node monitoring agent (versions.EKS_ADDONS) sets
# AcceleratedHardwareReady=False, which Karpenter's node repair replaces after 10 minutes
# (aws/karpenter-provider-aws@v1.14.1 pkg/cloudprovider/cloudprovider.go RepairPolicies; it has no
# policy for NeuronHealth). So Karpenter wins: the detector runs for its condition (what `kubectl
# describe node` shows, what an operator reads), recovery stays off, and exactly one component acts.
# The detector goes to kube-system (`namespaceOverride`; the chart's default namespace
# neuron-healthcheck-system is created by no template of 1.9.0) and binds the built-in
# system:node-problem-detector ClusterRole (`clusterRole.create: false`, the chart default).
NPD_VALUES = {"enabled": True, "namespaceOverride": "kube-system", "nodeRecovery": {"enabled": False}}


def neuron_instance_types() -> list[str]:
    """Every Neuron instance type a pool can launch (the catalog) plus the chart's own list."""
    accelerated = [t for f in FAMILIES for t in catalog.instance_types_of(f)
                   if catalog.instance_type(t).neuron_devices]
    return sorted({*accelerated, *versions.NEURON_CHART_INSTANCES})


def efa_instance_types() -> list[str]:
    """Every instance type with EFA interfaces in the catalog (the EFA pools' candidates) plus
    the Trainium types of the chart's own list."""
    with_efa = [t for f in FAMILIES for t in catalog.instance_types_of(f) if catalog.instance_type(t).efa_interfaces]
    return sorted({*with_efa, *versions.EFA_CHART_TRAINIUM_INSTANCES})


def neuron_values(*, kubernetes_version: str, instance_types: list[str]) -> dict:
    """Device plugin on Neuron nodes (affinity from `neuronInstances`, see versions.py); the
    scheduler extension and its second kube-scheduler on the system nodes — the chart's default
    targets control-plane nodes, which EKS does not expose — with a kube-scheduler of the
    cluster's own minor version; the node problem detector without its recovery (NPD_VALUES)."""
    return {
        "neuronInstances": list(instance_types),
        "devicePlugin": {"enabled": True},
        "npd": NPD_VALUES,
        "scheduler": {"enabled": True, **ON_SYSTEM_NODES,
                      "customScheduler": {"enabled": True, **ON_SYSTEM_NODES, "image": {
                          "repository": versions.EKS_DISTRO_KUBE_SCHEDULER_IMAGE,
                          "tag": versions.kube_scheduler_image_tag(kubernetes_version)}}},
    }


def efa_values(*, region: str, instance_types: list[str]) -> dict:
    """Only on EFA pools' nodes, tolerating the Neuron taint they carry; the plugin image from
    the stack region's EKS registry (the chart's default is us-west-2's in every region) and a
    node affinity listing our EFA instance types (the chart's list lacks trn3)."""
    return {
        "image": {"repository": f"{versions.eks_image_registry(region)}/eks/aws-efa-k8s-device-plugin",
                  "tag": versions.EFA_PLUGIN_IMAGE_TAG},
        "supportedInstanceLabels": {"keys": ["node.kubernetes.io/instance-type"], "values": list(instance_types)},
        "nodeSelector": {EFA_LABEL: "true"}, "tolerations": TOLERATE_NEURON,
    }


def kuberay_values() -> dict:
    return {"batchScheduler": {"name": "volcano"}, **ON_SYSTEM_NODES,
            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}


def volcano_values() -> dict:
    """Volcano chart values (keys of installer/helm/chart/volcano/values.yaml at v1.15.1):
    images pinned to the chart's release instead of the chart's floating default tag."""
    return {
        "basic": {"image_tag_version": f"v{versions.VOLCANO_VERSION}", "image_pull_policy": "IfNotPresent"},
        "custom": {"default_ns": SYSTEM_POOL_LABEL,
                   "default_tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                   "leader_elect_enable": True},
    }


def keda_values() -> dict:
    """KEDA operator, metrics API server and webhooks on the system nodes (top-level
    nodeSelector/tolerations apply to all three: keda/values.yaml at chart 2.20.2)."""
    return {**ON_SYSTEM_NODES, "crds": {"install": True}}


def default_queue_spec(cpu_limit: int, memory_gib_limit: int, neuron_limit: int) -> dict:
    """A Queue whose capability covers every accelerator pool at its limit."""
    capability = {"cpu": str(cpu_limit), "memory": f"{memory_gib_limit}Gi"}
    if neuron_limit:
        capability["aws.amazon.com/neuron"] = str(neuron_limit)
    return {"weight": 1, "reclaimable": False, "capability": capability}


@dataclass
class AddonsArgs:
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]
    queue_capability: dict  # from default_queue_spec
    region: str
    kubernetes_version: str


class Addons(pulumi.ComponentResource):
    def __init__(self, name: str, args: AddonsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:Addons", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)

        self.neuron = k8s.helm.v3.Release(
            f"{name}-neuron", name="neuron", chart=versions.NEURON_HELM_CHART,
            version=versions.NEURON_HELM_CHART_VERSION, namespace="kube-system",
            values=neuron_values(kubernetes_version=args.kubernetes_version, instance_types=neuron_instance_types()),
            opts=k8s_opts)
        self.efa = k8s.helm.v3.Release(
            f"{name}-efa", name="aws-efa-k8s-device-plugin", chart=versions.EFA_CHART,
            version=versions.EFA_CHART_VERSION, namespace="kube-system",
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.EFA_CHART_REPO),
            values=efa_values(region=args.region, instance_types=efa_instance_types()),
            opts=k8s_opts)
        self.volcano = k8s.helm.v3.Release(
            f"{name}-volcano", name="volcano", chart=versions.VOLCANO_CHART, version=versions.VOLCANO_VERSION,
            namespace="volcano-system", create_namespace=True,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.VOLCANO_CHART_REPO), values=volcano_values(),
            opts=k8s_opts)
        self.kuberay = k8s.helm.v3.Release(
            f"{name}-kuberay", name="kuberay-operator", chart=versions.KUBERAY_CHART, version=versions.KUBERAY_VERSION,
            namespace=KUBERAY_NAMESPACE, create_namespace=True,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.KUBERAY_CHART_REPO), values=kuberay_values(),
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[*args.depends_on, self.volcano])))
        self.keda = k8s.helm.v3.Release(
            f"{name}-keda", name="keda", chart=versions.KEDA_CHART, version=versions.KEDA_VERSION,
            namespace="keda", create_namespace=True,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.KEDA_CHART_REPO), values=keda_values(),
            opts=k8s_opts)
        # No chart upstream: our kustomization pins the release's manifests and image.
        self.mpi_operator = k8s.kustomize.v2.Directory(
            f"{name}-mpi-operator", directory=str(MPI_OPERATOR_KUSTOMIZATION), opts=k8s_opts)
        self.default_queue = k8s.apiextensions.CustomResource(
            f"{name}-queue", api_version="scheduling.volcano.sh/v1beta1", kind="Queue",
            metadata={"name": VOLCANO_QUEUE}, spec=args.queue_capability,
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[*args.depends_on, self.volcano])))
        self.queue_name = VOLCANO_QUEUE
        self.register_outputs({})
