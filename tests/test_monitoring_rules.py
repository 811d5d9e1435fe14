"""Alert and recording rules and dashboard queries, checked by the real Prometheus tooling:
`promtool check rules` on every rule file, `promtool test rules` with synthetic series for
every alert (firing and not firing), every dashboard query parsed by promtool, and every
metric name a query selects found in the exporters' documented names (tests/fixtures/metrics/).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from infra.config import MonitoringConfig
from infra.monitoring import dashboards, rules
from infra.monitoring.values import CLOUDWATCH_DELAY_SECONDS
from tests.platform_helpers import REPO

PROMTOOL = shutil.which("promtool")
FIXTURES = REPO / "tests" / "fixtures" / "metrics"
FSX_GIB = 1200
PRICES = {"trn1.2xlarge": 1.34375, "trn1.32xlarge": 21.5, "inf2.xlarge": 0.7582}
CFG = MonitoringConfig(alert_emails=("a@example.com",))
CLOUDWATCH_LAG_MINUTES = CLOUDWATCH_DELAY_SECONDS // 60
GROUPS = rules.rule_groups(CFG, fsx_capacity_gib=FSX_GIB, prices=PRICES)
ALERTS = {a.name: a for a in rules.alerts(CFG, fsx_capacity_gib=FSX_GIB)}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        pytest.fail("promtool not found: `make setup` installs it (Debian package prometheus)")
    return subprocess.run([PROMTOOL, *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def write_rules(tmp_path: Path, groups: list[dict], name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- check rules


def test_platform_rules_pass_promtool_check(tmp_path):
    write_rules(tmp_path, GROUPS)
    proc = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerting, recording = rules.rule_counts(GROUPS)
    assert f"SUCCESS: {alerting + recording} rules found" in proc.stdout


def test_promtool_check_rejects_a_broken_expression(tmp_path):
    """The check can fail: an expression with a syntax error is refused."""
    write_rules(tmp_path, [{"name": "bad", "rules": [{"alert": "Bad", "expr": "sum by (node (up)"}]}])
    proc = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode != 0 and "parse error" in (proc.stdout + proc.stderr)


def test_every_dashboard_query_parses_with_promtool(tmp_path):
    """promtool parses PromQL only inside rule files: each query becomes a recording rule."""
    queries = dashboards.queries(dashboards.definitions())
    assert len(queries) >= 30
    groups = [{"name": "dashboard-queries", "rules": [
        {"record": f"trn_platform:dashboard_query_{i}", "expr": q} for i, (_, _, q) in enumerate(queries)]}]
    write_rules(tmp_path, groups)
    proc = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- metric names


def documented_metrics() -> dict[str, str]:
    """metric name -> fixture file, histograms expanded to their series."""
    names: dict[str, str] = {}
    for path in sorted(FIXTURES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["sources"], f"{path.name}: name the source of these metric names"
        for name, meta in doc["metrics"].items():
            series = [f"{name}_bucket", f"{name}_sum", f"{name}_count"] if meta["type"] == "histogram" else \
                [f"{name}_total" if meta["type"] == "counter" and not name.endswith("_total") else name]
            for s in series:
                names[s] = path.name
    return names


def selected_metrics(expr: str) -> set[str]:
    found: set[str] = set()
    promql_parser.walk(promql_parser.parse(expr),
                       lambda n: found.add(n.name) if isinstance(n, promql_parser.VectorSelector) and n.name else None)
    return found


def test_metric_name_extraction_sees_every_selector():
    assert selected_metrics('sum by (n) (rate(a_total{x="1"}[5m])) / on (n) group_left () b unless vllm:c') == \
        {"a_total", "b", "vllm:c"}


def test_every_metric_used_by_rules_and_dashboards_is_documented():
    known = set(documented_metrics())
    recorded = {r["record"] for g in GROUPS for r in g["rules"] if "record" in r}
    exprs = [("rule " + (r.get("alert") or r["record"]), r["expr"]) for g in GROUPS for r in g["rules"]]
    exprs += [(f"dashboard {uid} / {title}", q) for uid, title, q in dashboards.queries(dashboards.definitions())]
    unknown = [(where, m) for where, e in exprs for m in sorted(selected_metrics(e)) if m not in known | recorded]
    assert unknown == [], "metrics not in tests/fixtures/metrics/: " + "; ".join(f"{w}: {m}" for w, m in unknown)


def cloudwatch_selectors_without_offset(expr: str) -> set[str]:
    found: set[str] = set()
    promql_parser.walk(promql_parser.parse(expr), lambda n: found.add(n.name) if (
        isinstance(n, promql_parser.VectorSelector) and n.name and n.name.startswith("aws_")
        and (n.offset is None or n.offset.total_seconds() < CLOUDWATCH_DELAY_SECONDS)) else None)
    return found


def test_cloudwatch_metrics_are_read_behind_the_exporters_delay():
    """The exporter's samples are delay_seconds old (their CloudWatch timestamps): an instant
    selector without `offset` finds none (cloudwatch_exporter@v0.16.0 README "Timestamps")."""
    exprs = [r["expr"] for g in GROUPS for r in g["rules"]] + \
        [q for _, _, q in dashboards.queries(dashboards.definitions())]
    assert any("aws_fsx_" in e for e in exprs)
    assert [e for e in exprs if cloudwatch_selectors_without_offset(e)] == []
    assert cloudwatch_selectors_without_offset("max(aws_fsx_free_data_storage_capacity_sum)") == \
        {"aws_fsx_free_data_storage_capacity_sum"}


def test_an_undocumented_metric_name_is_caught():
    assert "neuroncore_utilisation" not in documented_metrics()  # a typo of neuroncore_utilization_ratio
    assert selected_metrics("avg(neuroncore_utilisation)") - set(documented_metrics()) == {"neuroncore_utilisation"}


# --------------------------------------------------------------------------- promtool test rules

def expected_annotations(alert: rules.Alert, labels: dict[str, str], value_text: str = "") -> dict[str, str]:
    """The alert's annotations as Prometheus expands them for these labels."""
    def expand(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.([a-z_]+) \}\}", lambda m: labels.get(m.group(1), ""), text)
        return text.replace("{{ $value | humanizePercentage }}", value_text)
    return {k: expand(v) for k, v in alert.rule()["annotations"].items()}


def firing(name: str, labels: dict[str, str], value_text: str = "") -> dict:
    alert = ALERTS[name]
    all_labels = {"severity": alert.severity, "platform": "trn-platform", **labels}
    return {"exp_labels": all_labels, "exp_annotations": expected_annotations(alert, all_labels, value_text)}


NODE_LABELS = {"label_karpenter_sh_nodepool": "trn1-efa", "label_node_kubernetes_io_instance_type": "trn1.32xlarge"}


def neuron_node(node: str, minutes: int = 200, pool: str = "trn1-efa", itype: str = "trn1.32xlarge") -> list[dict]:
    """A billed Karpenter node with Neuron devices (kube-state-metrics) and, from neuron-monitor,
    NeuronCores that do nothing."""
    return [{"series": f'kube_node_status_capacity{{node="{node}", resource="aws_amazon_com_neuron", unit="integer"}}',
             "values": f"16x{minutes}"},
            {"series": f'kube_node_labels{{node="{node}", label_karpenter_sh_nodepool="{pool}", '
                       f'label_node_kubernetes_io_instance_type="{itype}"}}', "values": f"1x{minutes}"},
            {"series": f'neuroncore_utilization_ratio{{node="{node}", neuroncore="0"}}', "values": f"0x{minutes}"}]


def running_pod(node: str, pod: str, component: str, stack: str, namespace: str = "ml-shared",
                minutes: int = 200, phase: str = "Running") -> list[dict]:
    """A pod as kube-state-metrics exports it (pod-metrics.md @ v2.20.0), with the labels
    workloads/common.py labels() gives it, allowlisted in infra/monitoring/values.py."""
    ids = f'namespace="{namespace}", pod="{pod}", uid="u-{pod}"'
    return [{"series": f'kube_pod_info{{{ids}, node="{node}", created_by_kind="Job"}}', "values": f"1x{minutes}"},
            {"series": f'kube_pod_status_phase{{{ids}, phase="{phase}"}}', "values": f"1x{minutes}"},
            {"series": f'kube_pod_labels{{{ids}, label_app_kubernetes_io_component="{component}", '
                       f'label_app_kubernetes_io_instance="{stack}"}}', "values": f"1x{minutes}"}]


def vllm_histogram(name: str, workload: str, per_minute: dict[str, int], minutes: int = 60) -> list[dict]:
    """Cumulative buckets of a vLLM histogram for one workload: `per_minute` observations land in
    each bucket `le` (and every larger one) per minute."""
    return [{"series": f'{name}_bucket{{namespace="serve", workload="{workload}", model_name="m", le="{le}"}}',
             "values": f"0+{n}x{minutes}"} for le, n in per_minute.items()]

# One case per alert: synthetic series, and the alert firing for the broken thing only (and
# not yet, or not at all, for the healthy one).
CASES = {
    "NeuronHardwareErrors": {
        "input_series": [
            {"series": 'hardware_ecc_events_total{node="bad", event_type="mem_ecc_uncorrected"}',
             "values": "0 0 0 1 1 1"},
            {"series": 'hardware_ecc_events_total{node="ok", event_type="mem_ecc_corrected"}', "values": "0 1 2 3 4 5"},
            {"series": 'execution_errors_total{node="hw", error_type="hardware"}', "values": "0 0 2 2 2 2"},
            {"series": 'execution_errors_total{node="ok", error_type="numerical"}', "values": "0 3 6 9 9 9"},
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "NeuronHardwareErrors", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "NeuronHardwareErrors",
             "exp_alerts": [firing("NeuronHardwareErrors", {"node": "bad"}),
                            firing("NeuronHardwareErrors", {"node": "hw"})]},
        ],
    },
    "NeuronNodeIdle": {
        "input_series": [
            {"series": 'kube_node_status_capacity{node="idle", resource="aws_amazon_com_neuron", unit="integer"}',
             "values": "16x100"},
            {"series": 'kube_node_status_capacity{node="busy", resource="aws_amazon_com_neuron", unit="integer"}',
             "values": "16x100"},
            {"series": 'kube_node_status_capacity{node="cpu", resource="cpu", unit="core"}', "values": "8x100"},
            # neuron-monitor exports no neuroncore series at all while no Neuron runtime runs
            {"series": 'kube_node_status_capacity{node="bare", resource="aws_amazon_com_neuron", unit="integer"}',
             "values": "1x100"},
            {"series": 'kube_node_labels{node="bare", label_karpenter_sh_nodepool="inf2", '
                       'label_node_kubernetes_io_instance_type="inf2.xlarge"}', "values": "1x100"},
            {"series": 'kube_node_labels{node="idle", label_karpenter_sh_nodepool="trn1-efa", '
                       'label_node_kubernetes_io_instance_type="trn1.32xlarge"}', "values": "1x100"},
            {"series": 'kube_node_labels{node="busy", label_karpenter_sh_nodepool="trn1-efa", '
                       'label_node_kubernetes_io_instance_type="trn1.32xlarge"}', "values": "1x100"},
            {"series": 'kube_node_labels{node="cpu", label_karpenter_sh_nodepool="cpu", '
                       'label_node_kubernetes_io_instance_type="m6i.2xlarge"}', "values": "1x100"},
            {"series": 'neuroncore_utilization_ratio{node="busy", neuroncore="0"}', "values": "0.8x100"},
            {"series": 'neuroncore_utilization_ratio{node="idle", neuroncore="0"}', "values": "0x100"},
            # normal operation, quiet: a serving replica with no requests, a compile job, and both
            # nodes of a training job compiling its first step (rank 0 exports the counter at 0)
            *neuron_node("serving", 100, "inf2", "inf2.8xlarge"),
            *running_pod("serving", "llm-serve-usw2-6d4f9b7c8-a1", "serve", "llm-serve-usw2", minutes=100),
            *neuron_node("compiler", 100, "inf2", "inf2.8xlarge"),
            *running_pod("compiler", "compile-usw2-compile-x7", "compile", "compile-usw2", minutes=100),
            *neuron_node("rank0", 100), *neuron_node("rank1", 100),
            *running_pod("rank0", "nemo-usw2-launcher", "train", "nemo-usw2", minutes=100),
            *running_pod("rank1", "nemo-usw2-worker-1", "train", "nemo-usw2", minutes=100),
            {"series": 'trn_training_steps_total{namespace="ml-shared", workload="nemo-pretrain", stack="nemo-usw2", '
                       'node="rank0"}', "values": "0x100"},
            # ...but a pod that finished does not make its node busy
            *neuron_node("done", 100),
            *running_pod("done", "compile-usw2-compile-old", "compile", "compile-usw2", minutes=100, phase="Succeeded"),
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "NeuronNodeIdle", "exp_alerts": []},  # not idle long enough yet
            {"eval_time": "80m", "alertname": "NeuronNodeIdle",
             "exp_alerts": [firing("NeuronNodeIdle", {"node": "bare", "label_karpenter_sh_nodepool": "inf2",
                                                      "label_node_kubernetes_io_instance_type": "inf2.xlarge"}),
                            firing("NeuronNodeIdle", {"node": "done", **NODE_LABELS}),
                            firing("NeuronNodeIdle", {"node": "idle", **NODE_LABELS})]},
        ],
    },
    "TrainingJobStalled": {
        "input_series": [
            {"series": 'trn_training_steps_total{namespace="ml", workload="nemo", stack="s1", pod="w0"}',
             "values": "0+10x40 400x70"},
            {"series": 'trn_training_steps_total{namespace="ml", workload="ray", stack="s2", pod="w0"}',
             "values": "0+10x110"},
            # normal operation, quiet: a job still compiling its first step after 100 minutes
            {"series": 'trn_training_steps_total{namespace="ml", workload="titan", stack="s3", pod="w0"}',
             "values": "0x110"},
        ],
        "alert_rule_test": [
            {"eval_time": "50m", "alertname": "TrainingJobStalled", "exp_alerts": []},
            {"eval_time": "100m", "alertname": "TrainingJobStalled",
             "exp_alerts": [firing("TrainingJobStalled", {"namespace": "ml", "workload": "nemo", "stack": "s1"})]},
        ],
    },
    "KarpenterLaunchFailing": {
        "input_series": [
            {"series": 'karpenter_nodeclaims_created_total{nodepool="trn1-efa", reason="provisioning"}',
             "values": "0+1x60"},
            {"series": 'karpenter_nodes_created_total{nodepool="trn1-efa", zone="us-west-2d"}', "values": "0x60"},
            {"series": 'karpenter_nodeclaims_created_total{nodepool="inf2", reason="provisioning"}',
             "values": "0+1x60"},
            {"series": 'karpenter_nodes_created_total{nodepool="inf2", zone="us-west-2a"}', "values": "0+1x60"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "KarpenterLaunchFailing", "exp_alerts": []},
            {"eval_time": "50m", "alertname": "KarpenterLaunchFailing",
             "exp_alerts": [firing("KarpenterLaunchFailing", {"nodepool": "trn1-efa"})]},
        ],
    },
    # As the CloudWatch exporter stores them: each sample carries CloudWatch's timestamp,
    # delay_seconds behind the scrape (cloudwatch_exporter@v0.16.0 README "Timestamps"), so at
    # eval time T the newest sample is from T - 10m: series that end 10 minutes before the eval.
    "FsxAlmostFull": {
        "input_series": [
            {"series": 'aws_fsx_free_data_storage_capacity_sum{file_system_id="fs-full"}',
             "values": f"{FSX_GIB * 2**30 // 10}x{40 - CLOUDWATCH_LAG_MINUTES}"},
            {"series": 'aws_fsx_free_data_storage_capacity_sum{file_system_id="fs-half"}',
             "values": f"{FSX_GIB * 2**30 // 2}x{40 - CLOUDWATCH_LAG_MINUTES}"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "FsxAlmostFull", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "FsxAlmostFull",
             "exp_alerts": [firing("FsxAlmostFull", {"file_system_id": "fs-full"}, "90%")]},
        ],
    },
    "ServingTimeToFirstTokenHigh": {
        "input_series": [
            # 10 requests a minute wait 5-20 s for their first token (queueing)
            *vllm_histogram("vllm:time_to_first_token_seconds", "queued", {"1": 0, "5": 0, "20": 10, "+Inf": 10}),
            # normal operation, quiet: long outputs (end-to-end 20-60 s) with a quick first token
            *vllm_histogram("vllm:time_to_first_token_seconds", "long", {"1": 10, "5": 10, "20": 10, "+Inf": 10}),
            *vllm_histogram("vllm:e2e_request_latency_seconds", "long", {"5": 0, "20": 0, "60": 10, "+Inf": 10}),
        ],
        "alert_rule_test": [
            {"eval_time": "8m", "alertname": "ServingTimeToFirstTokenHigh", "exp_alerts": []},
            {"eval_time": "30m", "alertname": "ServingTimeToFirstTokenHigh",
             "exp_alerts": [firing("ServingTimeToFirstTokenHigh",
                                   {"namespace": "serve", "workload": "queued", "model_name": "m"})]},
        ],
    },
    "ServingTimePerOutputTokenHigh": {
        "input_series": [
            # both names of the histogram: the xla fork's (V0) and vLLM V1's
            *vllm_histogram("vllm:time_per_output_token_seconds", "slow-v0",
                            {"0.1": 0, "0.5": 0, "2.5": 10, "+Inf": 10}),
            *vllm_histogram("vllm:inter_token_latency_seconds", "slow-v1", {"0.1": 0, "0.5": 0, "2.5": 10, "+Inf": 10}),
            # normal operation, quiet: long outputs at a steady 50 ms a token
            *vllm_histogram("vllm:inter_token_latency_seconds", "long", {"0.1": 500, "0.5": 500, "2.5": 500,
                                                                         "+Inf": 500}),
            *vllm_histogram("vllm:e2e_request_latency_seconds", "long", {"5": 0, "20": 0, "60": 10, "+Inf": 10}),
        ],
        "alert_rule_test": [
            {"eval_time": "8m", "alertname": "ServingTimePerOutputTokenHigh", "exp_alerts": []},
            {"eval_time": "30m", "alertname": "ServingTimePerOutputTokenHigh",
             "exp_alerts": [firing("ServingTimePerOutputTokenHigh",
                                   {"namespace": "serve", "workload": w, "model_name": "m"})
                            for w in ("slow-v0", "slow-v1")]},
        ],
    },
}


def test_every_alert_has_a_promtool_case():
    assert set(CASES) == set(ALERTS)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_for_the_broken_thing_only(tmp_path, alert):
    write_rules(tmp_path, GROUPS)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "name": alert, **CASES[alert]}]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Normal operation that no alert may page for, each run against every alert (promtool test rules).
NORMAL_OPERATION = {
    "an idle serving replica (minReplicas, no requests) for hours": [
        *neuron_node("serving"), *running_pod("serving", "llm-serve-usw2-6d4f9b7c8-a1", "serve", "llm-serve-usw2"),
        *vllm_histogram("vllm:time_to_first_token_seconds", "llm-serve", {"1": 0, "+Inf": 0}, 200),
        *vllm_histogram("vllm:inter_token_latency_seconds", "llm-serve", {"0.1": 0, "+Inf": 0}, 200)],
    "a two-node training job compiling its first step for three hours": [
        *neuron_node("rank0"), *neuron_node("rank1"),
        *running_pod("rank0", "titan-use2-master-0", "train", "titan-use2"),
        *running_pod("rank1", "titan-use2-worker-0", "train", "titan-use2"),
        {"series": 'trn_training_steps_total{namespace="ml-shared", workload="titan-pretrain", stack="titan-use2", '
                   'node="rank0"}', "values": "0x200"}],
    "serving long outputs (end-to-end minutes, tokens quick)": [
        *vllm_histogram("vllm:e2e_request_latency_seconds", "llm", {"5": 0, "60": 0, "300": 20, "+Inf": 20}, 200),
        *vllm_histogram("vllm:time_to_first_token_seconds", "llm", {"1": 20, "+Inf": 20}, 200),
        *vllm_histogram("vllm:inter_token_latency_seconds", "llm", {"0.1": 2000, "+Inf": 2000}, 200)],
}


@pytest.mark.parametrize("scenario", sorted(NORMAL_OPERATION))
def test_normal_operation_pages_no_one(tmp_path, scenario):
    write_rules(tmp_path, GROUPS)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "name": scenario, "input_series": NORMAL_OPERATION[scenario],
        "alert_rule_test": [{"eval_time": t, "alertname": name, "exp_alerts": []}
                            for name in sorted(ALERTS) for t in ("90m", "180m")]}]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_fails_when_an_alert_does_not_fire(tmp_path):
    """The harness can fail: expecting the idle alert for the busy node is a failed test."""
    write_rules(tmp_path, GROUPS)
    case = dict(CASES["NeuronNodeIdle"], alert_rule_test=[{
        "eval_time": "80m", "alertname": "NeuronNodeIdle", "exp_alerts": [firing("NeuronNodeIdle", {"node": "busy"})]}])
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{"interval": "1m", **case}]}))
    assert promtool("test", "rules", "tests.yaml", cwd=tmp_path).returncode != 0


def test_price_rules_compute_the_fleet_cost_from_node_counts(tmp_path):
    """Two trn1.32xlarge and one inf2.xlarge Karpenter nodes: 2 x 21.5 + 0.7582 $/h."""
    write_rules(tmp_path, GROUPS)
    series = [{"series": f'kube_node_labels{{node="n{i}", label_karpenter_sh_nodepool="p", '
                         f'label_node_kubernetes_io_instance_type="{t}"}}', "values": "1x10"}
              for i, t in enumerate(["trn1.32xlarge", "trn1.32xlarge", "inf2.xlarge"])]
    series.append({"series": 'kube_node_labels{node="sys", label_node_kubernetes_io_instance_type="m6i.large"}',
                   "values": "1x10"})
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": rules.ACCELERATOR_COST_METRIC, "eval_time": "5m",
                              "exp_samples": [{"labels": rules.ACCELERATOR_COST_METRIC,
                                               "value": 2 * 21.5 + 0.7582}]}]}]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("stack", ["dev-usw2", "dev-use2"])
def test_rendered_prometheus_rule_of_each_stack_passes_promtool_check(tmp_path, stack):
    from tests.platform_helpers import rendered_platform
    [rule] = [o for _, o in rendered_platform(stack).manifests if o["kind"] == "PrometheusRule"]
    write_rules(tmp_path, rule["spec"]["groups"])
    proc = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    priced = {r["labels"]["instance_type"] for g in rule["spec"]["groups"] for r in g["rules"]
              if r.get("record") == rules.PRICE_METRIC}
    assert ("trn1.32xlarge" if stack == "dev-usw2" else "trn1n.32xlarge") in priced


# --------------------------------------------------------------------------- alert routing

# The default rules of kube-prometheus-stack 88.5.3 with `severity: info`
# (charts/kube-prometheus-stack/templates/prometheus/rules-1.14/*.yaml @ ea930bae, `dig "<alert>" "severity" "info"`).
CHART_INFO_ALERTS = ("CPUThrottlingHigh", "KubeNodeEviction", "KubeNodePressure", "KubeQuotaAlmostFull",
                     "KubeQuotaFullyUsed", "KubeletTooManyPods", "NodeCPUHighUsage")


def rendered_alertmanager_config() -> dict:
    from tests.platform_helpers import rendered_platform
    [release] = [r for r in rendered_platform("dev-usw2").by_type("kubernetes:helm.sh/v3:Release")
                 if r.inputs["name"] == "kube-prometheus-stack"]
    return release.inputs["values"]["alertmanager"]["config"]


def test_info_alerts_and_meta_alerts_never_reach_the_on_call():
    """Routed through the rendered config by Alertmanager's rule (trnctl/operators/alertmanager.py):
    the chart's info alerts and its meta alerts go to `null`, the platform's alerts to SNS."""
    from trnctl.operators.alertmanager import receivers

    route = rendered_alertmanager_config()["route"]
    for name in CHART_INFO_ALERTS:
        assert receivers(route, {"alertname": name, "severity": "info", "namespace": "ml-shared"}) == ["null"], name
    assert receivers(route, {"alertname": "Watchdog", "severity": "none"}) == ["null"]
    assert receivers(route, {"alertname": "InfoInhibitor", "severity": "none", "namespace": "x"}) == ["null"]
    for alert in ALERTS.values():
        assert receivers(route, {"alertname": alert.name, **alert.rule()["labels"]}) == ["platform-sns"], alert.name
    assert receivers(route, {"alertname": "KubePodCrashLooping", "severity": "warning"}) == ["platform-sns"]


def test_alertmanager_routing_rule_follows_upstream():
    from trnctl.operators.alertmanager import matcher_matches, receivers

    assert matcher_matches('alertname =~ "Watchdog|InfoInhibitor"', {"alertname": "Watchdog"})
    assert not matcher_matches('alertname =~ "Watch"', {"alertname": "Watchdog"})  # anchored
    assert matcher_matches('severity != "info"', {})
    tree = {"receiver": "root", "routes": [{"receiver": "a", "matchers": ['x = "1"'], "continue": True},
                                           {"receiver": "b", "matchers": ['x =~ "1|2"']},
                                           {"receiver": "c"}]}
    assert receivers(tree, {"x": "1"}) == ["a", "b"]
    assert receivers(tree, {"x": "2"}) == ["b"]
    assert receivers(tree, {"x": "3"}) == ["c"]
