"""Helm values for kube-prometheus-stack and the CloudWatch exporter (pure functions).

Keys are those of the pinned charts (sources in infra/versions.py):
kube-prometheus-stack `charts/kube-prometheus-stack/values.yaml`, its Grafana subchart
(grafana-community/helm-charts `charts/grafana/values.yaml` @ grafana-12.11.1) and
prometheus-cloudwatch-exporter `charts/prometheus-cloudwatch-exporter/values.yaml`.
"""
from __future__ import annotations

import yaml

from infra.cluster import SYSTEM_POOL_LABEL
from infra.config import MonitoringConfig

RELEASE = "kube-prometheus-stack"
FULLNAME = "kps"  # fullnameOverride: short, stable Service and ServiceAccount names
PROMETHEUS_SERVICE = f"{FULLNAME}-prometheus"
ALERTMANAGER_SERVICE = f"{FULLNAME}-alertmanager"
GRAFANA_SERVICE = "grafana"
PROMETHEUS_SERVICE_ACCOUNT = f"{FULLNAME}-prometheus"
ALERTMANAGER_SERVICE_ACCOUNT = f"{FULLNAME}-alertmanager"
CLOUDWATCH_EXPORTER_SERVICE_ACCOUNT = "cloudwatch-exporter"
GRAFANA_ADMIN_SECRET = "grafana-admin"
STORAGE_CLASS = "gp3-encrypted"
DASHBOARD_LABEL = {"grafana_dashboard": "1"}  # the Grafana sidecar's default label (grafana.sidecar.dashboards)
SERVICE_TYPE = "ClusterIP"  # nothing public: port-forward (stack output `monitoring`)

ON_SYSTEM_NODES = {"nodeSelector": SYSTEM_POOL_LABEL,
                   "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}

# Node labels kube-state-metrics exports on kube_node_labels (label_<sanitized key>): the
# fleet dashboard and the idle-node alert group nodes by pool, capacity type and type.
NODE_LABELS_EXPORTED = ("karpenter.sh/nodepool", "karpenter.sh/capacity-type",
                        "node.kubernetes.io/instance-type", "trn-platform/pool")

# Pod labels kube-state-metrics exports on kube_pod_labels: the idle-node alert leaves out nodes
# of serving and compile pods and of training jobs that have not stepped yet (rules.py).
POD_LABELS_EXPORTED = ("app.kubernetes.io/component", "app.kubernetes.io/instance")

# Requests of the always-on pods this stack puts on the system nodes (also what the cost
# estimate reports). node-exporter runs on every node and is counted per node.
SYSTEM_REQUESTS = {
    "prometheus": {"cpu": "500m", "memory": "2Gi"},
    "alertmanager": {"cpu": "50m", "memory": "128Mi"},
    "grafana": {"cpu": "100m", "memory": "256Mi"},
    "operator": {"cpu": "100m", "memory": "256Mi"},
    "kube-state-metrics": {"cpu": "50m", "memory": "128Mi"},
    "cloudwatch-exporter": {"cpu": "50m", "memory": "256Mi"},
}
NODE_EXPORTER_REQUESTS = {"cpu": "50m", "memory": "64Mi"}


def _resources(requests: dict[str, str]) -> dict:
    return {"requests": dict(requests), "limits": {"memory": requests["memory"]}}


def _pvc(storage_gib: int) -> dict:
    return {"volumeClaimTemplate": {"spec": {"storageClassName": STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                                             "resources": {"requests": {"storage": f"{storage_gib}Gi"}}}}}


def remote_write_url(region: str, workspace_id: str) -> str:
    """Amazon Managed Service for Prometheus remote write endpoint (AMP user guide,
    "Ingest Prometheus metrics to the workspace")."""
    return f"https://aps-workspaces.{region}.amazonaws.com/workspaces/{workspace_id}/api/v1/remote_write"


def alertmanager_config(*, sns_topic_arn: str, region: str) -> dict:
    """Every warning and critical alert to one SNS topic (its subscriptions are the e-mail
    addresses); Alertmanager signs with SigV4 using its service account's role. Watchdog and
    InfoInhibitor (the chart's always-firing meta alerts) and every `severity: info` alert go
    nowhere: this config replaces the chart's (Helm replaces lists), whose inhibit_rules hide info
    alerts through InfoInhibitor (kube-prometheus-stack 88.5.3 values.yaml alertmanager.config);
    routing them to `null` keeps the chart's info rules (CPUThrottlingHigh, KubeQuotaAlmostFull,
    NodeCPUHighUsage, ...) off the on-call's mail without depending on that inhibition."""
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "platform-sns",
            "group_by": ["alertname", "nodepool", "node", "namespace"],
            "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
            "routes": [{"receiver": "null", "matchers": ['alertname =~ "Watchdog|InfoInhibitor"']},
                       {"receiver": "null", "matchers": ['severity = "info"']}],
        },
        "receivers": [
            {"name": "null"},
            {"name": "platform-sns", "sns_configs": [{
                "topic_arn": sns_topic_arn, "sigv4": {"region": region}, "send_resolved": True,
                "subject": '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }}'}]},
        ],
        "inhibit_rules": [{"source_matchers": ['severity = "critical"'], "target_matchers": ['severity = "warning"'],
                           "equal": ["alertname", "node"]}],
    }


def kube_prometheus_stack_values(cfg: MonitoringConfig, *, cluster_name: str, region: str, sns_topic_arn: str,
                                 prometheus_sa_annotations: dict, alertmanager_sa_annotations: dict) -> dict:
    """Prometheus, Alertmanager, Grafana and the operator on the system nodes, persistent
    gp3 volumes, every Service ClusterIP, Grafana admin from a Secret, anonymous access off."""
    prometheus_spec: dict = {
        **ON_SYSTEM_NODES,
        "retention": cfg.retention,
        "storageSpec": _pvc(cfg.prometheus_storage_gib),
        "resources": _resources(SYSTEM_REQUESTS["prometheus"]),
        # Select every ServiceMonitor/PodMonitor/PrometheusRule, not only the chart's own.
        "serviceMonitorSelectorNilUsesHelmValues": False,
        "podMonitorSelectorNilUsesHelmValues": False,
        "ruleSelectorNilUsesHelmValues": False,
        "externalLabels": {"cluster": cluster_name},  # tells clusters apart in a shared AMP workspace
    }
    if cfg.remote_write_workspace_id:
        prometheus_spec["remoteWrite"] = [{"url": remote_write_url(region, cfg.remote_write_workspace_id),
                                           "sigv4": {"region": region}}]
    return {
        "fullnameOverride": FULLNAME,
        "crds": {"enabled": True},
        # EKS runs the control plane: these targets are not reachable from the cluster.
        "kubeControllerManager": {"enabled": False},
        "kubeScheduler": {"enabled": False},
        "kubeEtcd": {"enabled": False},
        "kubeProxy": {"enabled": False},
        "defaultRules": {"create": True, "rules": {"etcd": False, "kubeControllerManager": False,
                                                   "kubeSchedulerAlerting": False, "kubeSchedulerRecording": False,
                                                   "kubeProxy": False}},
        "prometheusOperator": {
            **ON_SYSTEM_NODES, "resources": _resources(SYSTEM_REQUESTS["operator"]),
            "admissionWebhooks": {"patch": {**ON_SYSTEM_NODES}, "deployment": {"enabled": False}},
        },
        "prometheus": {
            "service": {"type": SERVICE_TYPE},
            "ingress": {"enabled": False},
            "serviceAccount": {"create": True, "name": PROMETHEUS_SERVICE_ACCOUNT,
                               "annotations": prometheus_sa_annotations},
            "prometheusSpec": prometheus_spec,
        },
        "alertmanager": {
            "service": {"type": SERVICE_TYPE},
            "ingress": {"enabled": False},
            "serviceAccount": {"create": True, "name": ALERTMANAGER_SERVICE_ACCOUNT,
                               "annotations": alertmanager_sa_annotations},
            "config": alertmanager_config(sns_topic_arn=sns_topic_arn, region=region),
            "alertmanagerSpec": {**ON_SYSTEM_NODES, "storage": _pvc(cfg.alertmanager_storage_gib),
                                 "resources": _resources(SYSTEM_REQUESTS["alertmanager"])},
        },
        "grafana": {
            **ON_SYSTEM_NODES,
            "fullnameOverride": GRAFANA_SERVICE,
            "service": {"type": SERVICE_TYPE},
            "ingress": {"enabled": False},
            "admin": {"existingSecret": GRAFANA_ADMIN_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
            "persistence": {"enabled": True, "type": "pvc", "storageClassName": STORAGE_CLASS,
                            "accessModes": ["ReadWriteOnce"], "size": f"{cfg.grafana_storage_gib}Gi"},
            "resources": _resources(SYSTEM_REQUESTS["grafana"]),
            "grafana.ini": {"auth.anonymous": {"enabled": False}, "users": {"allow_sign_up": False},
                            "analytics": {"check_for_updates": False, "reporting_enabled": False}},
            # Our dashboards arrive as ConfigMaps with this label (infra/monitoring/dashboards.py).
            "sidecar": {"dashboards": {"enabled": True, "label": next(iter(DASHBOARD_LABEL)),
                                       "labelValue": DASHBOARD_LABEL["grafana_dashboard"],
                                       "searchNamespace": cfg.namespace}},
        },
        "kube-state-metrics": {**ON_SYSTEM_NODES, "resources": _resources(SYSTEM_REQUESTS["kube-state-metrics"]),
                               "metricLabelsAllowlist": [f"nodes=[{','.join(NODE_LABELS_EXPORTED)}]",
                                                         f"pods=[{','.join(POD_LABELS_EXPORTED)}]"]},
        # node-exporter on every node, Neuron nodes included (EFA counters: infiniband collector).
        "prometheus-node-exporter": {"tolerations": [{"operator": "Exists"}],
                                     "resources": _resources(NODE_EXPORTER_REQUESTS)},
    }


# FSx for Lustre CloudWatch metrics (FSx for Lustre user guide, "FSx for Lustre metrics and
# dimensions"): the CSI driver exposes none (NodeGetVolumeStats is unimplemented at the pinned
# chart), so usage and throughput come from CloudWatch.
FSX_CLOUDWATCH_METRICS = (("FreeDataStorageCapacity", "Sum"), ("DataReadBytes", "Sum"), ("DataWriteBytes", "Sum"),
                          ("DataReadOperations", "Sum"), ("DataWriteOperations", "Sum"), ("MetadataOperations", "Sum"))
CLOUDWATCH_PERIOD_SECONDS = 60
# The exporter asks CloudWatch for data at least delay_seconds old and exposes each sample with
# CloudWatch's own timestamp, so an instant query at "now" finds nothing; rules and dashboards
# read it `offset` by the delay (prometheus/cloudwatch_exporter@v0.16.0 README.md "Timestamps").
CLOUDWATCH_DELAY_SECONDS = 600
CLOUDWATCH_OFFSET = f"offset {CLOUDWATCH_DELAY_SECONDS // 60}m"


def cloudwatch_exporter_values(*, region: str, file_system_id: str, service_account_annotations: dict) -> dict:
    config = {
        "region": region, "period_seconds": CLOUDWATCH_PERIOD_SECONDS, "delay_seconds": CLOUDWATCH_DELAY_SECONDS,
        "metrics": [{"aws_namespace": "AWS/FSx", "aws_metric_name": name, "aws_dimensions": ["FileSystemId"],
                     "aws_dimension_select": {"FileSystemId": [file_system_id]}, "aws_statistics": [stat]}
                    for name, stat in FSX_CLOUDWATCH_METRICS],
    }
    return {
        **ON_SYSTEM_NODES,
        "service": {"type": SERVICE_TYPE, "port": 9106, "portName": "http"},
        "serviceAccount": {"create": True, "name": CLOUDWATCH_EXPORTER_SERVICE_ACCOUNT,
                           "annotations": service_account_annotations},
        "resources": _resources(SYSTEM_REQUESTS["cloudwatch-exporter"]),
        "serviceMonitor": {"enabled": False},  # ours: infra/monitoring/scrape.py
        "config": yaml.safe_dump(config, sort_keys=False),
    }


def volume_gib(cfg: MonitoringConfig) -> dict[str, int]:
    """The stack's persistent gp3 volumes (always on, billed per GiB-month)."""
    return {"prometheus": cfg.prometheus_storage_gib, "alertmanager": cfg.alertmanager_storage_gib,
            "grafana": cfg.grafana_storage_gib}


def _cpu_cores(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _memory_gib(q: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1.0}
    return float(q[:-2]) * units[q[-2:]]


def system_requests(system_nodes: int) -> tuple[float, float]:
    """(vCPU, GiB) the stack requests on the system nodes: its pods plus node-exporter on each."""
    pods = list(SYSTEM_REQUESTS.values()) + [NODE_EXPORTER_REQUESTS] * system_nodes
    return sum(_cpu_cores(r["cpu"]) for r in pods), sum(_memory_gib(r["memory"]) for r in pods)
