"""Observability: kube-prometheus-stack (Prometheus, Alertmanager, Grafana), neuron-monitor on
every Neuron node, the scrape monitors, alert rules routed to SNS, and dashboards as code.

Pure builders live in the submodules (values, neuron, scrape, rules, dashboards); this
component only registers what they return. Nothing is public: every Service is ClusterIP,
reached with the port-forward commands of the `monitoring` stack output.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import iam, versions
from infra.config import MonitoringConfig
from infra.monitoring import dashboards, neuron, rules, scrape, values

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
GRAFANA_PORT = 80  # the Grafana chart's Service port (container 3000)


def outputs(cfg: MonitoringConfig) -> dict[str, str]:
    """The `monitoring` stack output: in-cluster Prometheus URL (KEDA, the Prometheus adapter)
    and how to reach each UI from a workstation."""
    ns = cfg.namespace
    return {
        "namespace": ns,
        "prometheusUrl": f"http://{values.PROMETHEUS_SERVICE}.{ns}.svc:{PROMETHEUS_PORT}",
        "alertmanagerUrl": f"http://{values.ALERTMANAGER_SERVICE}.{ns}.svc:{ALERTMANAGER_PORT}",
        "grafanaPortForward": f"kubectl -n {ns} port-forward svc/{values.GRAFANA_SERVICE} 3000:{GRAFANA_PORT}",
        "prometheusPortForward": f"kubectl -n {ns} port-forward svc/{values.PROMETHEUS_SERVICE} 9090:{PROMETHEUS_PORT}",
        "alertmanagerPortForward": f"kubectl -n {ns} port-forward svc/{values.ALERTMANAGER_SERVICE} "
                                   f"9093:{ALERTMANAGER_PORT}",
        "grafanaLogin": f"user admin; password: kubectl -n {ns} get secret {values.GRAFANA_ADMIN_SECRET} "
                                "-o jsonpath='{.data.admin-password}' | base64 -d",
    }


def storage_class() -> dict:
    """Encrypted gp3 through the EBS CSI add-on; bound where the pod lands (its AZ)."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": values.STORAGE_CLASS},
            "provisioner": "ebs.csi.aws.com", "parameters": {"type": "gp3", "encrypted": "true"},
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True, "reclaimPolicy": "Delete"}


def prometheus_rule(groups: list[dict], *, namespace: str) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "trn-platform", "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "trn-platform-monitoring"}},
            "spec": {"groups": groups}}


@dataclass
class MonitoringArgs:
    config: MonitoringConfig
    cluster_name: str
    region: str
    identity: iam.ClusterIdentity
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]
    accelerator_pools: list[str]
    fsx_file_system_id: pulumi.Input[str]
    fsx_capacity_gib: int
    accelerator_prices: dict[str, float]  # instance type -> on-demand $/h
    neuron_monitor_image: str
    karpenter_namespace: str
    kuberay_namespace: str
    volcano_namespace: str
    tags: dict[str, str]


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:Monitoring", name, None, opts)
        cfg = args.config
        ns = cfg.namespace
        child = pulumi.ResourceOptions(parent=self)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)

        self.namespace = k8s.core.v1.Namespace(f"{name}-ns", metadata={"name": ns}, opts=k8s_opts)
        after_ns = pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
            depends_on=[*args.depends_on, self.namespace]))
        sc = storage_class()
        self.storage_class = k8s.storage.v1.StorageClass(
            f"{name}-gp3", metadata=sc["metadata"], provisioner=sc["provisioner"], parameters=sc["parameters"],
            volume_binding_mode=sc["volumeBindingMode"], allow_volume_expansion=sc["allowVolumeExpansion"],
            reclaim_policy=sc["reclaimPolicy"], opts=k8s_opts)

        # Grafana's admin password: generated once, kept (encrypted) in the stack state.
        self.admin_password = random.RandomPassword(f"{name}-grafana-admin", length=32, special=False, opts=child)
        self.admin_secret = k8s.core.v1.Secret(
            f"{name}-grafana-admin", metadata={"name": values.GRAFANA_ADMIN_SECRET, "namespace": ns},
            string_data={"admin-user": "admin", "admin-password": self.admin_password.result}, opts=after_ns)

        # Alerts leave the cluster through one SNS topic: an existing one, or ours with the
        # e-mail subscriptions (each address confirms once).
        if cfg.sns_topic_arn:
            topic_arn: pulumi.Input[str] = cfg.sns_topic_arn
        else:
            self.topic = aws.sns.Topic(f"{name}-alerts", name=f"{args.cluster_name}-alerts",
                                       kms_master_key_id="alias/aws/sns", tags=args.tags, opts=child)
            for i, email in enumerate(cfg.alert_emails):
                aws.sns.TopicSubscription(f"{name}-alerts-{i}", topic=self.topic.arn, protocol="email",
                                          endpoint=email, opts=child)
            topic_arn = self.topic.arn

        role_opts = pulumi.ResourceOptions(parent=self, depends_on=args.depends_on)
        self.alertmanager_role = iam.ServiceAccountRole(
            f"{name}-alertmanager", identity=args.identity, namespace=ns,
            service_account=values.ALERTMANAGER_SERVICE_ACCOUNT,
            policy=pulumi.Output.from_input(topic_arn).apply(
                lambda arn: iam.document(iam.statement("PublishAlerts", ["sns:Publish"], [arn]))),
            opts=role_opts)
        prometheus_annotations: pulumi.Input[dict] = {}
        if cfg.remote_write_workspace_arn:
            self.prometheus_role = iam.ServiceAccountRole(
                f"{name}-prometheus", identity=args.identity, namespace=ns,
                service_account=values.PROMETHEUS_SERVICE_ACCOUNT,
                policy=iam.document(iam.statement("RemoteWrite", ["aps:RemoteWrite"], [cfg.remote_write_workspace_arn])),
                opts=role_opts)
            prometheus_annotations = self.prometheus_role.annotations
        self.cloudwatch_role = iam.ServiceAccountRole(
            f"{name}-cloudwatch-exporter", identity=args.identity, namespace=ns,
            service_account=values.CLOUDWATCH_EXPORTER_SERVICE_ACCOUNT,
            # CloudWatch reads have no resource-level permissions (Resource "*" only).
            policy=iam.document(iam.statement("ReadMetrics", ["cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics",
                                                         "cloudwatch:ListMetrics"], ["*"],
                                         {"StringEquals": {"aws:RequestedRegion": args.region}})),
            opts=role_opts)

        kps_values = pulumi.Output.all(topic_arn, prometheus_annotations, self.alertmanager_role.annotations).apply(
            lambda a: values.kube_prometheus_stack_values(
                cfg, cluster_name=args.cluster_name, region=args.region, sns_topic_arn=a[0],
                prometheus_sa_annotations=a[1], alertmanager_sa_annotations=a[2]))
        self.release = k8s.helm.v3.Release(
            f"{name}-kps", name=values.RELEASE, chart=versions.KUBE_PROMETHEUS_STACK_CHART,
            version=versions.KUBE_PROMETHEUS_STACK_VERSION, namespace=ns,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.KUBE_PROMETHEUS_STACK_CHART_REPO),
            values=kps_values, timeout=900,
            opts=pulumi.ResourceOptions.merge(after_ns, pulumi.ResourceOptions(
                depends_on=[*args.depends_on, self.namespace, self.storage_class, self.admin_secret,
                            self.alertmanager_role])))
        self.cloudwatch_exporter = k8s.helm.v3.Release(
            f"{name}-cloudwatch-exporter", name="prometheus-cloudwatch-exporter",
            chart=versions.CLOUDWATCH_EXPORTER_CHART, version=versions.CLOUDWATCH_EXPORTER_VERSION, namespace=ns,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.KUBE_PROMETHEUS_STACK_CHART_REPO),
            values=pulumi.Output.all(args.fsx_file_system_id, self.cloudwatch_role.annotations).apply(
                lambda a: values.cloudwatch_exporter_values(region=args.region, file_system_id=a[0],
                                                            service_account_annotations=a[1])),
            opts=pulumi.ResourceOptions.merge(after_ns, pulumi.ResourceOptions(
                depends_on=[*args.depends_on, self.namespace, self.cloudwatch_role])))

        if args.accelerator_pools:
            efa_script = k8s.core.v1.ConfigMap(f"{name}-efa-exporter", **_fields(neuron.efa_exporter_configmap()),
                                               opts=k8s_opts)
            self.neuron_monitor = k8s.apps.v1.DaemonSet(
                f"{name}-neuron-monitor", **_fields(neuron.daemonset(image=args.neuron_monitor_image,
                                                                     accelerator_pools=args.accelerator_pools)),
                opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
                    depends_on=[*args.depends_on, efa_script])))

        # Custom resources of the chart's CRDs: created after the release that installs them.
        after_chart = pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
            depends_on=[*args.depends_on, self.release]))
        monitors = scrape.monitors(
            neuron_monitor_ports=neuron.METRICS_PORTS, neuron_monitor_namespace=neuron.NAMESPACE,
            karpenter_namespace=args.karpenter_namespace, kuberay_namespace=args.kuberay_namespace,
            volcano_namespace=args.volcano_namespace, monitoring_namespace=ns)
        for m in monitors:
            k8s.apiextensions.CustomResource(f"{name}-{m.name}", **_custom(m.manifest(monitoring_namespace=ns)),
                                             opts=after_chart)
        self.rule_groups = rules.rule_groups(cfg, fsx_capacity_gib=args.fsx_capacity_gib,
                                             prices=args.accelerator_prices)
        k8s.apiextensions.CustomResource(f"{name}-rules", **_custom(prometheus_rule(self.rule_groups, namespace=ns)),
                                         opts=after_chart)
        for d in dashboards.definitions():
            k8s.core.v1.ConfigMap(f"{name}-dashboard-{d.uid}",
                                  **_fields(dashboards.configmap(d, namespace=ns, label=values.DASHBOARD_LABEL)),
                                  opts=after_ns)

        self.outputs = outputs(cfg)
        self.register_outputs({"prometheusUrl": self.outputs["prometheusUrl"]})


def _fields(manifest: dict) -> dict:
    """A built-in object's manifest as resource arguments (the class fixes apiVersion/kind)."""
    return {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}


def _custom(manifest: dict) -> dict:
    """A custom resource's manifest as CustomResource arguments."""
    return {"api_version": manifest["apiVersion"], "kind": manifest["kind"], "metadata": manifest["metadata"],
            "spec": manifest["spec"]}


def summary_lines(resources: list) -> list[str]:
    """The render summary's monitoring block, from recorded resources (type, inputs)."""
    releases = [r.inputs for r in resources if r.type == "kubernetes:helm.sh/v3:Release"
                and r.inputs.get("chart") in (versions.KUBE_PROMETHEUS_STACK_CHART, versions.CLOUDWATCH_EXPORTER_CHART)]
    if not releases:
        return []
    kinds = [r.inputs.get("kind") for r in resources if r.type.startswith("kubernetes:monitoring.coreos.com/")]
    groups = [g for r in resources if r.type == "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
              for g in (r.inputs.get("spec") or {}).get("groups") or []]
    alerting, recording = rules.rule_counts(groups)
    dashboards_n = sum(1 for r in resources if r.type == "kubernetes:core/v1:ConfigMap"
                       and (r.inputs.get("metadata") or {}).get("labels", {}).get("grafana_dashboard") == "1")
    return ["monitoring:",
            *(f"  {i['name']:<30} {i['chart']} {i['version']} in {i['namespace']}" for i in releases),
            f"  rules: {alerting} alerting, {recording} recording; {kinds.count('ServiceMonitor')} ServiceMonitors, "
            f"{kinds.count('PodMonitor')} PodMonitors; {dashboards_n} dashboards"]
