"""neuron-monitor with its Prometheus exporter as a DaemonSet on every Neuron node (pure spec),
with the EFA counter exporter (infra/monitoring/efa_exporter.py) as a second container.

Follows the Neuron documentation at the pinned SDK (aws-neuron-sdk
`containers/tutorials/k8s-neuron-monitor.rst` and `src/k8/k8s-neuron-monitor-daemonset.yml`):
the image's entrypoint runs `neuron-monitor | neuron-monitor-prometheus.py --port <port>`;
the container is privileged to read /dev/neuron* counters (allowed for `neuron-monitor*`
in kube-system by policy/exceptions.yaml). Instead of the docs' instance-type list it
selects the accelerator pools by the label Karpenter puts on their nodes, and tolerates
the Neuron taint they carry.
"""
from __future__ import annotations

from pathlib import Path

from infra.nodepools import NEURON_TAINT, POOL_LABEL

NAME = "neuron-monitor"
NAMESPACE = "kube-system"
PORT = 8000  # neuron-monitor-prometheus.py --port (its default, as in the docs' DaemonSet)
EFA_PORT = 8001
EFA_EXPORTER = Path(__file__).resolve().parent / "efa_exporter.py"
EFA_CONFIGMAP = "neuron-monitor-efa-exporter"
METRICS_PORTS = ("metrics", "efa-metrics")  # neuron-monitor, EFA hw_counters (infra/monitoring/efa_exporter.py)
LABELS = {"app": NAME, "app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "trn-platform-monitoring"}
# checkov: the documented DaemonSet is privileged (device counters); reasons in one place.
CHECKOV_SKIPS = {
    "CKV_K8S_16": "neuron-monitor reads /dev/neuron* device counters, which needs a privileged container (Neuron docs)",
    "CKV_K8S_20": "privileged implies privilege escalation; required for the Neuron device counters",
    "CKV_K8S_23": "the Neuron tools read the devices as root inside the privileged node agent",
    "CKV_K8S_37": "capabilities cannot be dropped from a privileged container",
    "CKV_K8S_28": "capabilities (NET_RAW included) cannot be dropped from a privileged container",
}


def efa_exporter_configmap() -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": EFA_CONFIGMAP, "namespace": NAMESPACE, "labels": dict(LABELS)},
            "data": {EFA_EXPORTER.name: EFA_EXPORTER.read_text()}}


def daemonset(*, image: str, accelerator_pools: list[str]) -> dict:
    pod_labels = dict(LABELS)
    container = {
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/opt/bin/entrypoint.sh"],
        "args": ["--port", str(PORT), "--neuron-monitor-config", "/opt/aws/neuron/bin/neuron-monitor.conf"],
        "ports": [{"name": METRICS_PORTS[0], "containerPort": PORT, "protocol": "TCP"}],
        # The docs' requests/limits; GOMEMLIMIT keeps the Go collector under its limit.
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "env": [{"name": "GOMEMLIMIT", "value": "160MiB"}],
        "securityContext": {"privileged": True},
        "livenessProbe": {"tcpSocket": {"port": "metrics"}, "initialDelaySeconds": 30, "periodSeconds": 30},
        "readinessProbe": {"tcpSocket": {"port": "metrics"}, "periodSeconds": 15},
    }
    # EFA counters from sysfs (read-only, unprivileged); no output on nodes without EFA.
    efa = {
        "name": "efa-exporter",
        "image": image,  # Python 3 + prometheus_client, as neuron-monitor-prometheus.py needs
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", f"/opt/trn-platform/{EFA_EXPORTER.name}", "--port", str(EFA_PORT),
                    "--sysfs", "/host/sys"],
        "ports": [{"name": METRICS_PORTS[1], "containerPort": EFA_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"cpu": "100m", "memory": "96Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "sys", "mountPath": "/host/sys", "readOnly": True},
                         {"name": "efa-exporter", "mountPath": "/opt/trn-platform", "readOnly": True}],
        "livenessProbe": {"tcpSocket": {"port": METRICS_PORTS[1]}, "initialDelaySeconds": 15, "periodSeconds": 30},
        "readinessProbe": {"tcpSocket": {"port": METRICS_PORTS[1]}, "periodSeconds": 15},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": dict(LABELS),
                     "annotations": {f"checkov.io/skip{i + 1}": f"{cid}={why}"
                                     for i, (cid, why) in enumerate(CHECKOV_SKIPS.items())}},
        "spec": {
            "selector": {"matchLabels": {"app": NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [
                            {"key": POOL_LABEL, "operator": "In", "values": sorted(accelerator_pools)},
                            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
                    "tolerations": [{"key": NEURON_TAINT["key"], "operator": "Exists",
                                     "effect": NEURON_TAINT["effect"]}],
                    "priorityClassName": "system-node-critical",
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container, efa],
                    "volumes": [{"name": "sys", "hostPath": {"path": "/sys", "type": "Directory"}},
                                {"name": "efa-exporter", "configMap": {"name": EFA_CONFIGMAP}}],
                },
            },
        },
    }
