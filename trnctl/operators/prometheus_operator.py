"""Prometheus Operator (prometheus-operator/prometheus-operator v0.93.x, the operator of kube-prometheus-stack
88.5.3 pinned in infra/versions.py; read at tag v0.93.0, the v0.93.1 tag is not in the mirror): the scrape
config it generates for a PodMonitor, and the targets Prometheus' Kubernetes pod discovery gives it.

- Job `podMonitor/<ns>/<name>/<i>` per podMetricsEndpoint, kubernetes_sd role pod; relabelings in the
  operator's order: job -> __tmp_prometheus_job_name, drop pods in phase Failed/Succeeded (filterRunning
  default), keep by the selector's matchLabels/matchExpressions, keep the endpoint's port name, namespace /
  container / pod labels, job = `<ns>/<name>`, endpoint = port name, then the endpoint's own relabelings.
  source: prometheus-operator@v0.93.0:pkg/prometheus/promcfg.go (generatePodMonitorConfig, initRelabelings,
  generateRunningFilter).
- Pod discovery: one target per container port, `__address__` = podIP:port, meta labels
  `__meta_kubernetes_pod_*` (name, ip, phase, ready, node_name, container_name, container_port_name/number/
  protocol, label_<sanitized>, labelpresent_<sanitized>) and `__meta_kubernetes_namespace`.
  source: prometheus/prometheus@v3.x:discovery/kubernetes/pod.go (buildPod, podLabels).
The rehearsal hands Prometheus these targets as static_configs (meta labels included, which Prometheus
keeps for relabeling), so the operator's relabelings run in the real Prometheus.
"""
from __future__ import annotations

import re
from typing import Callable

from trnctl.operators import Context

KINDS = frozenset({("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "ServiceMonitor")})


def pods(obj: dict, ctx: Context) -> list[dict]:
    return []


def sanitize_label_name(name: str) -> str:
    """source: prometheus-operator@v0.93.0:pkg/prometheus/promcfg.go sanitizeLabelName ([^a-zA-Z0-9_] -> _)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _selected_namespaces(monitor: dict) -> Callable[[str], bool]:
    sel = monitor["spec"].get("namespaceSelector") or {}
    if sel.get("any"):
        return lambda ns: True
    names = sel.get("matchNames") or [monitor["metadata"].get("namespace", "default")]
    return lambda ns: ns in names


def pod_targets(pod: dict, address: str, phase: str = "Running", ready: bool = True) -> list[dict]:
    """Prometheus' pod discovery: one target per declared port of a container or an init container (a native
    sidecar's port is scraped like any other), `__meta_kubernetes_pod_container_init` saying which.
    source: prometheus/prometheus discovery/kubernetes/pod.go buildPod (containers then init containers,
    `isInit := i >= len(pod.Spec.Containers)`); docs/configuration/configuration.md, pod role."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    common = {"__meta_kubernetes_namespace": meta.get("namespace", "default"),
              "__meta_kubernetes_pod_name": meta["name"], "__meta_kubernetes_pod_ip": address,
              "__meta_kubernetes_pod_phase": phase, "__meta_kubernetes_pod_ready": str(ready).lower(),
              "__meta_kubernetes_pod_node_name": "rehearsal-node"}
    for k, v in (meta.get("labels") or {}).items():
        common[f"__meta_kubernetes_pod_label_{sanitize_label_name(k)}"] = v
        common[f"__meta_kubernetes_pod_labelpresent_{sanitize_label_name(k)}"] = "true"
    out = []
    containers = [(c, False) for c in spec.get("containers") or []] + [(c, True) for c in spec.get("initContainers") or []]
    for c, init in containers:
        for p in c.get("ports") or []:
            out.append({"targets": [f"{address}:{p['containerPort']}"],
                        "labels": {**common, "__meta_kubernetes_pod_container_name": c["name"],
                                   "__meta_kubernetes_pod_container_init": str(init).lower(),
                                   "__meta_kubernetes_pod_container_port_name": p.get("name", ""),
                                   "__meta_kubernetes_pod_container_port_number": str(p["containerPort"]),
                                   "__meta_kubernetes_pod_container_port_protocol": p.get("protocol", "TCP")}})
    return out


def _relabel(r: dict) -> dict:
    """A monitoring.coreos.com RelabelConfig as Prometheus config."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label", "separator": "separator",
            "regex": "regex", "replacement": "replacement", "modulus": "modulus"}
    out = {keys[k]: v for k, v in r.items() if k in keys}
    if "action" in r:
        out["action"] = r["action"].lower()
    return out


def pod_monitor_scrape_configs(monitor: dict, pods_: list[dict], address_of: Callable[[str], str], *,
                               interval: str | None = None) -> list[dict]:
    """Scrape configs for one PodMonitor over the rehearsal's pods (`interval` overrides the endpoints')."""
    ns_ok = _selected_namespaces(monitor)
    selector = monitor["spec"].get("selector") or {}
    targets = [t for p in pods_ if ns_ok(p["metadata"].get("namespace", "default"))
               for t in pod_targets(p, address_of(p["metadata"]["name"]))]
    ns, name = monitor["metadata"].get("namespace", "default"), monitor["metadata"]["name"]
    configs = []
    for i, ep in enumerate(monitor["spec"].get("podMetricsEndpoints") or []):
        relabel = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
                   {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}]
        for k in sorted(selector.get("matchLabels") or {}):
            s = sanitize_label_name(k)
            relabel.append({"action": "keep", "source_labels": [f"__meta_kubernetes_pod_label_{s}",
                                                                f"__meta_kubernetes_pod_labelpresent_{s}"],
                            "regex": f"({selector['matchLabels'][k]});true"})
        for exp in selector.get("matchExpressions") or []:
            s = sanitize_label_name(exp["key"])
            both = [f"__meta_kubernetes_pod_label_{s}", f"__meta_kubernetes_pod_labelpresent_{s}"]
            present = [f"__meta_kubernetes_pod_labelpresent_{s}"]
            op = exp["operator"]
            if op in ("In", "NotIn"):
                relabel.append({"action": "keep" if op == "In" else "drop", "source_labels": both,
                                "regex": f"({'|'.join(exp.get('values') or [])});true"})
            elif op in ("Exists", "DoesNotExist"):
                relabel.append({"action": "keep" if op == "Exists" else "drop", "source_labels": present,
                                "regex": "true"})
        if ep.get("port"):
            relabel.append({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                            "regex": ep["port"]})
        elif ep.get("portNumber"):
            relabel.append({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_number"],
                            "regex": str(ep["portNumber"])})
        relabel += [{"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}]
        for label in monitor["spec"].get("podTargetLabels") or []:
            relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize_label_name(label)}"],
                            "target_label": sanitize_label_name(label), "regex": "(.+)", "replacement": "${1}"})
        relabel.append({"target_label": "job", "replacement": f"{ns}/{name}"})
        if monitor["spec"].get("jobLabel"):
            relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize_label_name(monitor['spec']['jobLabel'])}"],
                            "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
        if ep.get("port"):
            relabel.append({"target_label": "endpoint", "replacement": ep["port"]})
        relabel += [_relabel(r) for r in ep.get("relabelings") or []]
        cfg = {"job_name": f"podMonitor/{ns}/{name}/{i}", "static_configs": targets, "relabel_configs": relabel}
        if interval or ep.get("interval"):
            cfg["scrape_interval"] = interval or ep["interval"]
        if ep.get("path"):
            cfg["metrics_path"] = ep["path"]
        if ep.get("scheme"):
            cfg["scheme"] = ep["scheme"]
        configs.append(cfg)
    return configs
