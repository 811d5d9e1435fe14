"""Monitoring: the config section, the pure builders (chart values, neuron-monitor, monitors,
dashboards) and the rendered platform (releases, custom resources after their CRDs, IAM
scoped to the topic and the workspace, nothing public, node repair)."""
from __future__ import annotations

import json

import pytest

from infra import config, versions
from infra.config import ConfigError, MonitoringConfig
from infra.monitoring import dashboards, neuron, outputs, scrape, values
from trnctl.render import run_program
from tests.platform_helpers import (
    assert_rejected_before_any_resource,
    project_with_stack,
    rendered_platform,
    stack_config,
)

BASE = stack_config("platform", "dev-usw2")
RELEASE = "kubernetes:helm.sh/v3:Release"
WORKSPACE = "arn:aws:aps:us-west-2:123456789012:workspace/ws-0123abcd-4567-89ef-0123-456789abcdef"


def with_monitoring(**changes) -> dict:
    cfg = json.loads(json.dumps(BASE))
    cfg["trn-platform:monitoring"] = {**cfg.get("trn-platform:monitoring", {}), **changes}
    return cfg


def parse(cfg: dict) -> config.PlatformConfig:
    raw, region = config.raw_from_bag(cfg)
    return config.parse(raw, stack="t", region=region)


def release(result, chart: str):
    return next(r for r in result.by_type(RELEASE) if r.inputs["chart"] == chart)


# --------------------------------------------------------------------------- config


def test_defaults_and_budget_emails_as_alert_destination():
    cfg = parse(with_monitoring())
    assert cfg.monitoring.enabled and cfg.monitoring.retention == "15d"
    assert cfg.monitoring.alert_emails == ("ml-platform-alerts@example.com",)  # budget.alertEmails
    assert MonitoringConfig().enabled  # on unless a stack turns it off


BAD = {
    "retention": ({"retention": "15 days"}, "monitoring.retention: must be a duration in h, d, w or y such as 15d"),
    "idle": ({"neuronIdleAfter": "1 hour"}, "monitoring.neuronIdleAfter: must be a Prometheus duration"),
    "volume": ({"prometheusStorageGiB": 2}, "monitoring.prometheusStorageGiB: must be 10 to 16384 (GiB)"),
    "ttft": ({"servingTimeToFirstTokenP99Seconds": 0},
             "monitoring.servingTimeToFirstTokenP99Seconds: must be greater than 0"),
    "tpot": ({"servingTimePerOutputTokenP99Seconds": 0},
             "monitoring.servingTimePerOutputTokenP99Seconds: must be greater than 0"),
    "end-to-end p99": ({"servingP99LatencySeconds": 10},
                       "monitoring.servingP99LatencySeconds: replaced by servingTimeToFirstTokenP99Seconds"),
    "topic": ({"snsTopicArn": "alerts"}, "monitoring.snsTopicArn: must be an SNS topic ARN"),
    "workspace": ({"remoteWriteWorkspaceArn": "ws-1"},
                  "monitoring.remoteWriteWorkspaceArn: must be an Amazon Managed Service for Prometheus workspace ARN"),
    "workspace region": ({"remoteWriteWorkspaceArn": WORKSPACE.replace("us-west-2", "eu-west-1")},
                         "monitoring.remoteWriteWorkspaceArn: the workspace is in eu-west-1, the stack in us-west-2"),
    "email": ({"alertEmails": ["not-an-address"]}, "monitoring.alertEmails[0]: 'not-an-address' is not an e-mail"),
    "unknown key": ({"retentionDays": 3}, "monitoring.retentionDays: unknown key; did you mean retention? known keys:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_monitoring_config_names_the_key(case):
    changes, expected = BAD[case]
    with pytest.raises(ConfigError) as err:
        parse(with_monitoring(**changes))
    assert expected in str(err.value)


def test_alerts_without_destination_fail_before_any_resource(tmp_path):
    cfg = with_monitoring()
    del cfg["trn-platform:budget"]
    assert_rejected_before_any_resource(tmp_path, "platform", cfg, "monitoring: alerts need a destination", ConfigError)


# --------------------------------------------------------------------------- chart values


def kps(**kw) -> dict:
    cfg = MonitoringConfig(alert_emails=("a@example.com",), **kw)
    return values.kube_prometheus_stack_values(cfg, cluster_name="c", region="us-west-2", sns_topic_arn="arn:topic",
                                               prometheus_sa_annotations={}, alertmanager_sa_annotations={})


def test_nothing_public_and_grafana_login_from_a_secret():
    v = kps()
    for component in ("prometheus", "alertmanager", "grafana"):
        assert v[component]["service"]["type"] == "ClusterIP"
        assert v[component]["ingress"] == {"enabled": False}
    assert v["grafana"]["grafana.ini"]["auth.anonymous"] == {"enabled": False}
    assert v["grafana"]["admin"]["existingSecret"] == values.GRAFANA_ADMIN_SECRET
    assert "adminPassword" not in v["grafana"]


def test_stack_on_system_nodes_with_gp3_volumes_and_retention():
    v = kps(retention="30d", prometheus_storage_gib=80)
    spec = v["prometheus"]["prometheusSpec"]
    assert spec["retention"] == "30d"
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == values.STORAGE_CLASS and claim["resources"]["requests"]["storage"] == "80Gi"
    for placed in (spec, v["alertmanager"]["alertmanagerSpec"], v["grafana"], v["prometheusOperator"],
                   v["kube-state-metrics"]):
        assert placed["nodeSelector"] == {"trn-platform/pool": "system"}
    assert v["prometheus-node-exporter"]["tolerations"] == [{"operator": "Exists"}]  # Neuron nodes too
    assert "remoteWrite" not in spec


def test_remote_write_to_the_workspace_signed_with_sigv4():
    spec = kps(remote_write_workspace_arn=WORKSPACE)["prometheus"]["prometheusSpec"]
    assert spec["remoteWrite"] == [{
        "url": "https://aps-workspaces.us-west-2.amazonaws.com/workspaces/ws-0123abcd-4567-89ef-0123-456789abcdef"
               "/api/v1/remote_write", "sigv4": {"region": "us-west-2"}}]


def test_alertmanager_routes_every_alert_to_the_sns_topic():
    am = kps()["alertmanager"]["config"]
    assert am["route"]["receiver"] == "platform-sns"
    [sns] = next(r for r in am["receivers"] if r["name"] == "platform-sns")["sns_configs"]
    assert sns["topic_arn"] == "arn:topic" and sns["sigv4"] == {"region": "us-west-2"}


# --------------------------------------------------------------------------- neuron-monitor, monitors


def test_neuron_monitor_runs_on_accelerator_pools_only_tolerating_the_taint():
    ds = neuron.daemonset(image=versions.neuron_monitor_image(), accelerator_pools=["trn1-efa", "inf2"])
    pod = ds["spec"]["template"]["spec"]
    [term] = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "trn-platform/pool", "operator": "In", "values": ["inf2", "trn1-efa"]} in term["matchExpressions"]
    assert pod["tolerations"] == [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]
    c, efa = pod["containers"]
    assert c["image"] == efa["image"] == "public.ecr.aws/neuron/neuron-monitor:1.3.0"
    # the PodMonitor scrapes this namespace and port
    monitor = next(m for m in scrape.monitors(neuron_monitor_ports=neuron.METRICS_PORTS,
                                              neuron_monitor_namespace=neuron.NAMESPACE, karpenter_namespace="k",
                                              kuberay_namespace="r", volcano_namespace="v", monitoring_namespace="m")
                   if m.name == "neuron-monitor")
    assert monitor.namespaces == (ds["metadata"]["namespace"],)
    assert monitor.ports == (c["ports"][0]["name"], efa["ports"][0]["name"])
    assert set(monitor.selector["matchLabels"].items()) <= set(ds["spec"]["template"]["metadata"]["labels"].items())


def test_neuron_monitor_image_follows_the_sdk_pin():
    assert versions.neuron_monitor_image() == versions.NEURON_MONITOR_IMAGES[versions.neuron_sdk()["neuron_sdk"]]
    with pytest.raises(KeyError, match="NEURON_MONITOR_IMAGES has no neuron-monitor image for Neuron SDK 9.9.9"):
        versions.neuron_monitor_image("9.9.9")


def test_workload_pods_are_scraped_by_label_and_port_name():
    m = next(m for m in scrape.monitors(neuron_monitor_ports=("metrics",), neuron_monitor_namespace="a",
                                        karpenter_namespace="k", kuberay_namespace="r",
                                        volcano_namespace="v", monitoring_namespace="m") if m.name == "trn-workloads")
    spec = m.manifest(monitoring_namespace="m")["spec"]
    assert spec["selector"] == {"matchLabels": {"trn-platform/scrape": "true"},  # Ray pods: the ray PodMonitor
                                "matchExpressions": [{"key": "ray.io/node-type", "operator": "DoesNotExist"}]}
    assert spec["namespaceSelector"] == {"any": True}
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"node", "workload", "stack", "component"}


def test_dashboards_are_grafana_models_with_prometheus_targets():
    for d in dashboards.definitions():
        model = dashboards.build(d)
        assert model["uid"] == d.uid and model["title"] == d.title
        assert len(model["panels"]) == len(d.panels)
        positions = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in model["panels"]}
        assert len(positions) == len(d.panels)  # laid out, not stacked on each other
        for p in model["panels"]:
            assert p["targets"] and all(t["datasource"]["uid"] == "prometheus" and t["expr"] for t in p["targets"])


# --------------------------------------------------------------------------- rendered platform


def test_platform_renders_the_monitoring_stack():
    result = rendered_platform("dev-usw2")
    kps_release = release(result, versions.KUBE_PROMETHEUS_STACK_CHART)
    assert kps_release.inputs["version"] == versions.KUBE_PROMETHEUS_STACK_VERSION
    assert kps_release.inputs["repositoryOpts"]["repo"] == versions.KUBE_PROMETHEUS_STACK_CHART_REPO
    assert release(result, versions.CLOUDWATCH_EXPORTER_CHART).inputs["version"] == versions.CLOUDWATCH_EXPORTER_VERSION
    custom = [r for r in result.resources if r.type.startswith("kubernetes:monitoring.coreos.com/")]
    assert {r.inputs["kind"] for r in custom} == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert all(kps_release.urn in r.depends_on for r in custom)  # after the chart that installs the CRDs
    kinds = {(o["kind"], o["metadata"]["name"]) for _, o in result.manifests}
    assert ("DaemonSet", "neuron-monitor") in kinds and ("StorageClass", values.STORAGE_CLASS) in kinds
    assert sum(1 for k, n in kinds if k == "ConfigMap" and n.startswith("dashboard-")) == 5
    assert result.outputs["monitoring"] == outputs(config.load_stack_file(".", "dev-usw2").monitoring)
    assert result.outputs["monitoring"]["prometheusUrl"] == "http://kps-prometheus.monitoring.svc:9090"


def test_grafana_password_is_a_secret_and_never_in_chart_values():
    result = rendered_platform("dev-usw2")
    secret = next(o for _, o in result.manifests if o["kind"] == "Secret" and o["metadata"]["name"] == "grafana-admin")
    assert secret["stringData"]["admin-password"] == "[secret]"
    assert "render-placeholder" not in json.dumps(release(result, versions.KUBE_PROMETHEUS_STACK_CHART).inputs)


def test_alertmanager_may_publish_to_its_topic_only():
    result = rendered_platform("dev-usw2")
    topic = next(r for r in result.resources if r.type == "aws:sns/topic:Topic")
    subs = [r for r in result.resources if r.type == "aws:sns/topicSubscription:TopicSubscription"]
    assert [s.inputs["endpoint"] for s in subs] == ["ml-platform-alerts@example.com"]
    policies = [json.loads(r.inputs["policy"]) for r in result.resources if r.type == "aws:iam/rolePolicy:RolePolicy"]
    publish = [s for p in policies for s in p["Statement"] if "sns:Publish" in s["Action"]]
    assert publish == [{"Sid": "PublishAlerts", "Effect": "Allow", "Action": ["sns:Publish"],
                        "Resource": [f"arn:aws:sns:us-west-2:123456789012:{topic.inputs['name']}"]}]


def test_node_repair_gate_and_node_monitoring_agent():
    result = rendered_platform("dev-usw2")
    karpenter = next(r for r in result.by_type(RELEASE) if r.inputs["name"] == "karpenter")
    assert karpenter.inputs["values"]["settings"]["featureGates"] == {"nodeRepair": True}
    agent = next(r for r in result.resources if r.type == "aws:eks/addon:Addon"
                 and r.inputs["addonName"] == "eks-node-monitoring-agent")
    assert agent.inputs["addonVersion"] == versions.EKS_ADDONS["eks-node-monitoring-agent"]


def test_remote_write_role_is_scoped_to_the_workspace(tmp_path):
    project = project_with_stack(tmp_path, "platform", "rw", with_monitoring(remoteWriteWorkspaceArn=WORKSPACE))
    result = run_program(project, "rw")
    spec = release(result, versions.KUBE_PROMETHEUS_STACK_CHART).inputs["values"]["prometheus"]["prometheusSpec"]
    assert spec["remoteWrite"][0]["url"].endswith(f"/workspaces/{WORKSPACE.rsplit('/', 1)[1]}/api/v1/remote_write")
    policies = [json.loads(r.inputs["policy"]) for r in result.resources if r.type == "aws:iam/rolePolicy:RolePolicy"]
    [remote_write] = [s for p in policies for s in p["Statement"] if "aps:RemoteWrite" in s["Action"]]
    assert remote_write["Action"] == ["aps:RemoteWrite"] and remote_write["Resource"] == [WORKSPACE]
    assoc = [r.inputs["serviceAccount"] for r in result.resources
             if r.type == "aws:eks/podIdentityAssociation:PodIdentityAssociation"]
    assert values.PROMETHEUS_SERVICE_ACCOUNT in assoc and values.ALERTMANAGER_SERVICE_ACCOUNT in assoc


def test_monitoring_off_creates_nothing_of_it(tmp_path):
    project = project_with_stack(tmp_path, "platform", "off", with_monitoring(enabled=False))
    result = run_program(project, "off")
    assert "monitoring" not in result.outputs
    assert not [r for r in result.resources if "monitoring" in r.type or r.type == "trn:platform:Monitoring"]


def test_readme_lists_every_alert_and_dashboard():
    from infra.monitoring import rules
    from tests.platform_helpers import REPO
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Monitoring"):readme.index("## Operations")]
    for alert in rules.alerts(MonitoringConfig(alert_emails=("a@b.c",)), fsx_capacity_gib=1200):
        assert f"| `{alert.name}`" in section
    for d in dashboards.definitions():
        assert f"| {d.title} |" in section


def test_monitoring_custom_resources_are_validated_against_their_crd_schemas():
    from trnctl.validation import validate_dir
    from tests.platform_helpers import REPO
    ok = validate_dir(REPO / "tests/fixtures/k8s/monitoring.yaml", "1.34")
    assert ok.issues == [] and {"monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor",
                                "monitoring.coreos.com/v1/PrometheusRule"} <= set(ok.checked)
    bad = validate_dir(REPO / "tests/fixtures/k8s/invalid/servicemonitor-typo.yaml", "1.34")
    assert any("unknown field(s) ['endpoint']" in i.message for i in bad.issues)


def test_schemas_are_from_the_pinned_operator_release():
    from trnctl.validation import SCHEMA_DIR
    for path in sorted(SCHEMA_DIR.glob("monitoring.coreos.com_*.json")):
        source = json.loads(path.read_text())["x-source"]
        assert f"@ kube-prometheus-stack-{versions.KUBE_PROMETHEUS_STACK_VERSION} " in source
        assert f"prometheus-operator {versions.PROMETHEUS_OPERATOR_VERSION}" in source


def test_policy_catches_a_public_or_anonymous_grafana_in_the_real_render():
    from policy.rules import evaluate, resources_from_records
    result = rendered_platform("dev-usw2")
    records = json.loads(json.dumps([r.to_json() for r in result.resources]))
    kps_values = next(r for r in records if r["type"] == RELEASE
                      and r["inputs"]["chart"] == versions.KUBE_PROMETHEUS_STACK_CHART)["inputs"]["values"]
    assert [v for v in evaluate(resources_from_records(records), result.masked_outputs())
            if v.rule == "k8s-monitoring-private"] == []
    kps_values["grafana"]["service"]["type"] = "LoadBalancer"
    kps_values["grafana"]["grafana.ini"]["auth.anonymous"]["enabled"] = True
    found = {v.message for v in evaluate(resources_from_records(records), result.masked_outputs())
             if v.rule == "k8s-monitoring-private"}
    assert found == {"grafana.service.type LoadBalancer exposes it outside the cluster",
                     "grafana.grafana.ini auth.anonymous.enabled: anyone reaching Grafana is logged in"}


def test_cost_estimate_shows_the_monitoring_stack_only_when_enabled():
    from trnctl import cost
    on = cost.estimate_platform(parse(with_monitoring()))
    off = cost.estimate_platform(parse(with_monitoring(enabled=False)))
    items = {i.name: i for i in on.always_on}
    assert items["monitoring volumes gp3"].quantity == 65 and "0.95 vCPU" in items["monitoring volumes gp3"].note
    assert on.always_on_per_hour - off.always_on_per_hour == pytest.approx(65 * 0.08 / 730 + 0.0036)
    assert not [i for i in off.always_on if "monitoring" in i.name or "CloudWatch" in i.name]


def test_render_summary_lists_the_releases_and_rule_counts():
    from trnctl.render import summary
    text = summary(rendered_platform("dev-usw2"))
    block = text[text.index("monitoring:"):]
    assert f"kube-prometheus-stack {versions.KUBE_PROMETHEUS_STACK_VERSION}" in block
    assert f"prometheus-cloudwatch-exporter {versions.CLOUDWATCH_EXPORTER_VERSION}" in block
    assert "rules: 7 alerting, 5 recording; 4 ServiceMonitors, 3 PodMonitors; 5 dashboards" in block


# --------------------------------------------------------------------------- values vs the pinned charts

def chart_keys(name: str) -> dict[str, str]:
    import yaml
    from tests.platform_helpers import REPO
    return yaml.safe_load((REPO / "tests/fixtures/charts" / f"{name}.yaml").read_text())["keys"]


USER_MAPS = {"nodeSelector", "annotations", "labels", "podLabels", "podAnnotations", "resources"}  # any keys


def unknown_value_paths(given: dict, keys: dict[str, str], *, free_form: frozenset = frozenset(), prefix: str = ""):
    """Paths we set that the chart's values.yaml does not have. Below an empty map, a list or a
    scalar default the chart takes any content (nodeSelector, resources, storageSpec, ...)."""
    for key, value in given.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path in free_form or key in USER_MAPS:
            continue
        kind = keys.get(path)
        if kind is None:
            yield path
        elif kind == "map" and isinstance(value, dict):
            yield from unknown_value_paths(value, keys, free_form=free_form, prefix=path)


def with_subcharts(parent: str, subcharts: dict[str, str]) -> dict[str, str]:
    keys = dict(chart_keys(parent))
    for prefix, chart in subcharts.items():
        keys.update({f"{prefix}.{k}" if k != "." else prefix: v for k, v in chart_keys(chart).items()})
        keys[prefix] = "map"
    return keys


KPS_KEYS = with_subcharts("kube-prometheus-stack-88.5.3", {
    "grafana": "grafana-12.11.1", "kube-state-metrics": "kube-state-metrics-8.4.0",
    "prometheus-node-exporter": "prometheus-node-exporter-4.56.1"})
GRAFANA_INI = frozenset({"grafana.grafana.ini"})  # Grafana's own config file, any section


def test_chart_values_use_only_keys_of_the_pinned_charts():
    v = kps(remote_write_workspace_arn=WORKSPACE)
    assert list(unknown_value_paths(v, KPS_KEYS, free_form=GRAFANA_INI)) == []
    cw = values.cloudwatch_exporter_values(region="us-west-2", file_system_id="fs-1", service_account_annotations={})
    assert list(unknown_value_paths(cw, chart_keys("prometheus-cloudwatch-exporter-0.28.1"))) == []
    from infra import karpenter
    kv = karpenter.controller_values(cluster_name="c", region="us-west-2", queue_name="q",
                                     service_account_annotations={})
    assert list(unknown_value_paths(kv, chart_keys("karpenter-1.14.1"))) == []


def test_a_misspelt_chart_key_is_caught():
    v = kps()
    v["prometheus"]["prometheusSpec"]["retentionTime"] = "15d"
    v["grafana"]["adminn"] = {}
    assert sorted(unknown_value_paths(v, KPS_KEYS, free_form=GRAFANA_INI)) == [
        "grafana.adminn", "prometheus.prometheusSpec.retentionTime"]


# --------------------------------------------------------------------------- EFA exporter


def fake_sysfs(root, devices: dict[str, dict[str, int]]):
    for device, counters in devices.items():
        hw = root / "class" / "infiniband" / device / "ports" / "1" / "hw_counters"
        hw.mkdir(parents=True)
        for name, value in counters.items():
            (hw / name).write_text(f"{value}\n")
    return root


def test_efa_exporter_serves_every_documented_counter_over_http(tmp_path):
    import urllib.request

    import yaml
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    from infra.monitoring import efa_exporter
    from tests.platform_helpers import REPO
    sysfs = fake_sysfs(tmp_path, {"rdmap16s27": {name: i * 1000 for i, name in enumerate(efa_exporter.COUNTERS)},
                                  "rdmap32s27": {"rx_bytes": 7, "tx_bytes": 9}})  # an older driver: fewer files
    registry = CollectorRegistry()
    registry.register(efa_exporter.EfaCollector(sysfs))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    samples = {(s.name, s.labels["device"]): s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name.startswith("efa_") and s.name.endswith("_total")}
    documented = yaml.safe_load((REPO / "tests/fixtures/metrics/efa-exporter.yaml").read_text())["metrics"]
    assert {name for name, _ in samples} == {f"{m}_total" for m in documented}
    assert samples[("efa_tx_bytes_total", "rdmap16s27")] == 1000 * list(efa_exporter.COUNTERS).index("tx_bytes")
    assert samples[("efa_rx_bytes_total", "rdmap32s27")] == 7
    assert ("efa_rdma_read_bytes_total", "rdmap32s27") not in samples


def test_efa_exporter_on_a_node_without_efa_exports_nothing(tmp_path):
    from infra.monitoring import efa_exporter
    assert efa_exporter.read_counters(tmp_path) == {}
    families = list(efa_exporter.EfaCollector(tmp_path).collect())
    assert families and all(f.samples == [] for f in families)


def test_efa_exporter_ships_in_a_configmap_mounted_by_its_container():
    cm = neuron.efa_exporter_configmap()
    ds = neuron.daemonset(image=versions.neuron_monitor_image(), accelerator_pools=["trn1-efa"])
    efa = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "efa-exporter")
    script = efa["command"][1]
    mount = next(m for m in efa["volumeMounts"] if script.startswith(m["mountPath"]))
    volume = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["data"][script.rsplit("/", 1)[1]] == neuron.EFA_EXPORTER.read_text()
    assert all(m["readOnly"] for m in efa["volumeMounts"]) and "privileged" not in efa["securityContext"]


def test_irsa_annotates_the_chart_service_accounts_with_their_roles(tmp_path):
    cfg = with_monitoring(remoteWriteWorkspaceArn=WORKSPACE)
    cfg["trn-platform:identity"] = "irsa"
    result = run_program(project_with_stack(tmp_path, "platform", "irsa", cfg), "irsa")
    v = release(result, versions.KUBE_PROMETHEUS_STACK_CHART).inputs["values"]
    cw = release(result, versions.CLOUDWATCH_EXPORTER_CHART).inputs["values"]
    for sa in (v["prometheus"]["serviceAccount"], v["alertmanager"]["serviceAccount"], cw["serviceAccount"]):
        assert sa["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::123456789012:role/")
