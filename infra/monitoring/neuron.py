"""neuron-monitor with its Prometheus exporter as a DaemonSet on every Neuron node (pure spec).

Follows the Neuron documentation at the pinned SDK (aws-neuron-sdk
`containers/tutorials/k8s-neuron-monitor.rst` and `src/k8/k8s-neuron-monitor-daemonset.yml`):
the image's entrypoint runs `neuron-monitor | neuron-monitor-prometheus.py --port <port>`;
the container is privileged to read /dev/neuron* counters (allowed for `neuron-monitor*`
in kube-system by policy/exceptions.yaml). Instead of the docs' instance-type list it
selects the accelerator pools by the label Karpenter puts on their nodes, and tolerates
the Neuron taint they carry.
"""
from __future__ import annotations

from infra.nodepools import NEURON_TAINT, POOL_LABEL

NAME = "neuron-monitor"
NAMESPACE = "kube-system"
PORT = 8000  # neuron-monitor-prometheus.py --port (its default, as in the docs' DaemonSet)
LABELS = {"app": NAME, "app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "trn-platform-monitoring"}
# checkov: the documented DaemonSet is privileged (device counters); reasons in one place.
CHECKOV_SKIPS = {
    "CKV_K8S_16": "neuron-monitor reads /dev/neuron* device counters, which needs a privileged container (Neuron docs)",
    "CKV_K8S_20": "privileged implies privilege escalation; required for the Neuron device counters",
    "CKV_K8S_23": "the Neuron tools read the devices as root inside the privileged node agent",
    "CKV_K8S_37": "capabilities cannot be dropped from a privileged container",
    "CKV_K8S_28": "capabilities (NET_RAW included) cannot be dropped from a privileged container",
}


def daemonset(*, image: str, accelerator_pools: list[str]) -> dict:
    pod_labels = dict(LABELS)
    container = {
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/opt/bin/entrypoint.sh"],
        "args": ["--port", str(PORT), "--neuron-monitor-config", "/opt/aws/neuron/bin/neuron-monitor.conf"],
        "ports": [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}],
        # The docs' requests/limits; GOMEMLIMIT keeps the Go collector under its limit.
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "env": [{"name": "GOMEMLIMIT", "value": "160MiB"}],
        "securityContext": {"privileged": True},
        "livenessProbe": {"tcpSocket": {"port": "metrics"}, "initialDelaySeconds": 30, "periodSeconds": 30},
        "readinessProbe": {"tcpSocket": {"port": "metrics"}, "periodSeconds": 15},
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
                    "containers": [container],
                },
            },
        },
    }
