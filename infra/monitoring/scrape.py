"""What Prometheus scrapes: ServiceMonitors and PodMonitors (monitoring.coreos.com/v1), pure.

Selectors, namespaces and port names are those of the pinned charts (infra/versions.py):
karpenter `templates/service.yaml` (port http-metrics), kuberay-operator
`templates/service.yaml` (port http) and KubeRay's Ray pods (container port `metrics`,
ray-operator/controllers/ray/utils/constant.go MetricsPortName), volcano
`templates/scheduler.yaml` (Service volcano-scheduler-service, port metrics),
prometheus-cloudwatch-exporter `templates/service.yaml` (label app, port http).
The FSx CSI driver serves no metrics at the pinned chart (only a health port; its
NodeGetVolumeStats is unimplemented), so FSx usage comes from CloudWatch through the
exporter instead of a monitor on the driver.
"""
from __future__ import annotations

from dataclasses import dataclass

WORKLOAD_SCRAPE_LABEL = {"trn-platform/scrape": "true"}  # workload pods opt in, port name `metrics`
METRICS_PORT = "metrics"
# The number a native sidecar serves `metrics` on (the progress sidecar, workloads/progress.py; the same as
# images/trn_workloads/training_metrics.py METRICS_PORT): NetworkPolicies must admit it by number, since the EKS
# network policy controller resolves named ports among a pod's containers only (trnctl/cluster/reachability.py).
SIDECAR_METRICS_PORT = 9400
RAY_POD = {"key": "ray.io/node-type", "operator": "Exists"}  # the label KubeRay puts on head and worker pods

# Every sample carries the node it came from (dashboards and alerts join on `node`).
NODE_RELABEL = {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"}
# Workload pods carry workloads/common.py labels(): app.kubernetes.io/name (workload),
# /instance (stack) and /component.
WORKLOAD_RELABELS = [
    NODE_RELABEL,
    *({"sourceLabels": [f"__meta_kubernetes_pod_label_app_kubernetes_io_{src}"], "targetLabel": dst,
       "action": "replace"} for src, dst in (("name", "workload"), ("instance", "stack"), ("component", "component"))),
]


@dataclass(frozen=True)
class Monitor:
    kind: str  # ServiceMonitor | PodMonitor
    name: str
    namespace: str
    selector: dict
    ports: tuple[str, ...]
    namespaces: tuple[str, ...] | None = None  # None: every namespace
    interval: str = "30s"
    relabelings: tuple[dict, ...] = ()

    def manifest(self, *, monitoring_namespace: str) -> dict:
        endpoints = []
        for port in self.ports:
            endpoint = {"port": port, "interval": self.interval, "path": "/metrics"}
            if self.relabelings:
                endpoint["relabelings"] = [dict(r) for r in self.relabelings]
            endpoints.append(endpoint)
        spec: dict = {
            "selector": self.selector,
            "namespaceSelector": {"matchNames": list(self.namespaces)} if self.namespaces else {"any": True},
            ("endpoints" if self.kind == "ServiceMonitor" else "podMetricsEndpoints"): endpoints,
        }
        return {"apiVersion": "monitoring.coreos.com/v1", "kind": self.kind,
                "metadata": {"name": self.name, "namespace": monitoring_namespace,
                             "labels": {"app.kubernetes.io/part-of": "trn-platform-monitoring"}},
                "spec": spec}


def monitors(*, neuron_monitor_ports: tuple[str, ...], neuron_monitor_namespace: str, karpenter_namespace: str,
             kuberay_namespace: str, volcano_namespace: str, monitoring_namespace: str) -> list[Monitor]:
    return [
        Monitor("PodMonitor", "neuron-monitor", monitoring_namespace, {"matchLabels": {"app": "neuron-monitor"}},
                neuron_monitor_ports, (neuron_monitor_namespace,), "15s", (NODE_RELABEL,)),
        Monitor("ServiceMonitor", "karpenter", monitoring_namespace,
                {"matchLabels": {"app.kubernetes.io/name": "karpenter"}}, ("http-metrics",), (karpenter_namespace,)),
        Monitor("ServiceMonitor", "kuberay-operator", monitoring_namespace,
                {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}, ("http",), (kuberay_namespace,)),
        # KubeRay gives every Ray container a `metrics` port (Ray's metrics agent): Ray pods are
        # scraped here, with the workload labels, and left out of trn-workloads below.
        Monitor("PodMonitor", "ray", monitoring_namespace, {"matchExpressions": [RAY_POD]}, (METRICS_PORT,),
                None, "30s", tuple(WORKLOAD_RELABELS)),
        Monitor("ServiceMonitor", "volcano-scheduler", monitoring_namespace,
                {"matchLabels": {"app": "volcano-scheduler"}}, ("metrics",), (volcano_namespace,)),
        Monitor("ServiceMonitor", "fsx-cloudwatch", monitoring_namespace,
                {"matchLabels": {"app": "prometheus-cloudwatch-exporter"}}, ("http",), (monitoring_namespace,), "60s"),
        Monitor("PodMonitor", "trn-workloads", monitoring_namespace,
                {"matchLabels": dict(WORKLOAD_SCRAPE_LABEL),
                 "matchExpressions": [{**RAY_POD, "operator": "DoesNotExist"}]},
                (METRICS_PORT,), None, "15s", tuple(WORKLOAD_RELABELS)),
    ]
