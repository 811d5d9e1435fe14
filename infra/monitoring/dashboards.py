"""Grafana dashboards as code (grafana-foundation-sdk), provisioned by the chart's sidecar.

Why grafana-foundation-sdk: it is Grafana's own, generated from the dashboard schema and
released with Grafana (grafanalib's last release is from January 2024 and targets the old
panel model). Each dashboard is built here and JSON-encoded at render time into a
ConfigMap labelled `grafana_dashboard: "1"`. Every query is a plain PromQL string listed by
`queries()` so tests parse each with promtool and check its metric names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from infra.monitoring import rules
from infra.monitoring.values import (
    CLOUDWATCH_OFFSET,  # CloudWatch samples carry CloudWatch's timestamps, delay_seconds old
    CLOUDWATCH_PERIOD_SECONDS,  # CloudWatch sums per period: / period = per second
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # the chart's default datasource uid
POOL = rules.NODEPOOL_LABEL
CAPACITY = "label_karpenter_sh_capacity_type"
PER_SECOND = f" / {CLOUDWATCH_PERIOD_SECONDS}"  # CloudWatch sums per period -> per second
FSX_OPERATIONS = (f"aws_fsx_data_read_operations_sum {CLOUDWATCH_OFFSET} + aws_fsx_data_write_operations_sum "
                  f"{CLOUDWATCH_OFFSET} + aws_fsx_metadata_operations_sum {CLOUDWATCH_OFFSET}")


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str  # what it shows (README)
    panels: tuple[Panel, ...]


def _panel(title: str, unit: str, *queries: tuple[str, str], kind: str = "timeseries", description: str = "") -> Panel:
    return Panel(title, tuple(queries), unit, kind, description)


def _by_node(metric: str, legend: str = "{{node}}", how: str = "sum") -> tuple[str, str]:
    return f"{how} by (node) ({metric})", legend


def fleet() -> Dashboard:
    karpenter_nodes = f'kube_node_labels{{{POOL}!=""}}'
    return Dashboard("trn-fleet", "trn-platform / Fleet", (
        "nodes per pool and capacity type, accelerator $/h right now (node counts x on-demand list prices from "
        "infra/data/prices.json), Karpenter NodeClaims vs nodes joined, launch failures, pool usage vs limits"), (
        _panel("Accelerator $/h now (on-demand list price)", "currencyUSD", (rules.ACCELERATOR_COST_METRIC, "$/h"),
               kind="stat", description="Spot nodes are billed less: this is an upper bound."),
        _panel("Nodes per pool and capacity type", "short",
               (f"count by ({POOL}, {CAPACITY}) ({karpenter_nodes})", f"{{{{{POOL}}}}} {{{{{CAPACITY}}}}}")),
        _panel("Accelerator $/h per instance type", "currencyUSD",
               (rules.cost_by_instance_type(), f"{{{{{rules.NODE_TYPE_LABEL}}}}}")),
        _panel("NodeClaims created / nodes joined per pool (1h)", "short",
               ("sum by (nodepool) (increase(karpenter_nodeclaims_created_total[1h]))", "claims {{nodepool}}"),
               ("sum by (nodepool) (increase(karpenter_nodes_created_total[1h]))", "nodes {{nodepool}}")),
        _panel("Launch failures by reason (1h)", "short",
               ("sum by (reason, capacity_type) (increase(karpenter_cloudprovider_instance_launch_failures_total[1h]))",
                "{{reason}} {{capacity_type}}")),
        _panel("Pool usage vs limit", "short",
               ("sum by (nodepool, resource_type) (karpenter_nodepools_usage)", "used {{nodepool}} {{resource_type}}"),
               ("sum by (nodepool, resource_type) (karpenter_nodepools_limit)",
                "limit {{nodepool}} {{resource_type}}")),
    ))


def neuron() -> Dashboard:
    return Dashboard("trn-neuron", "trn-platform / Neuron", (
        "NeuronCore utilization per node, device memory used, execution status and errors, hardware ECC events, "
        "EFA traffic and errors per node"), (
        _panel("NeuronCore utilization per node", "percentunit", _by_node("neuroncore_utilization_ratio", how="avg")),
        _panel("Busy NeuronCores", "short", ("count(neuroncore_utilization_ratio > 0)", "busy cores"), kind="stat"),
        _panel("Neuron runtime memory used", "bytes",
               ("sum by (node, memory_location) (neuron_runtime_memory_used_bytes)", "{{node}} {{memory_location}}")),
        _panel("Device memory by use (tensors, model code, scratchpad)", "bytes",
               _by_node("neuroncore_memory_usage_tensors", "tensors {{node}}"),
               _by_node("neuroncore_memory_usage_model_code", "model code {{node}}"),
               _by_node("neuroncore_memory_usage_model_shared_scratchpad", "scratchpad {{node}}")),
        _panel("Executions by status (/s)", "ops",
               ("sum by (status_type) (rate(execution_status_total[5m]))", "{{status_type}}")),
        _panel("Execution errors by type (/s)", "ops",
               ("sum by (node, error_type) (rate(execution_errors_total[5m]))", "{{node}} {{error_type}}")),
        _panel("Hardware ECC events (1h)", "short",
               ("sum by (node, event_type) (increase(hardware_ecc_events_total[1h]))", "{{node}} {{event_type}}")),
        _panel("Execution latency p99", "s", _by_node('execution_latency_seconds{percentile="p99"}', how="max")),
        _panel("EFA traffic per node", "Bps",
               _by_node("rate(efa_rx_bytes_total[5m])", "rx {{node}}"),
               _by_node("rate(efa_tx_bytes_total[5m])", "tx {{node}}")),
        _panel("EFA RDMA read / write per node", "Bps",
               _by_node("rate(efa_rdma_read_bytes_total[5m])", "read {{node}}"),
               _by_node("rate(efa_rdma_write_bytes_total[5m])", "write {{node}}")),
        _panel("EFA drops, retransmits, unresponsive peers (1h)", "short",
               _by_node("increase(efa_rx_drops_total[1h])", "rx drops {{node}}"),
               _by_node("increase(efa_retrans_pkts_total[1h])", "retransmits {{node}}"),
               _by_node("increase(efa_unresponsive_remote_events_total[1h])", "unresponsive peers {{node}}")),
    ))


def training() -> Dashboard:
    def per_job(expr: str, how: str = "max") -> tuple[str, str]:
        return f"{how} by (workload, stack) ({expr})", "{{workload}} {{stack}}"
    return Dashboard("trn-training", "trn-platform / Training", (
        "per job (workload, stack): tokens/s, loss, step time and steps done, from the metrics the training pods "
        "expose on their `metrics` port"), (
        _panel("Tokens/s per job", "short", per_job("rate(trn_training_tokens_total[5m])", "sum")),
        _panel("Loss", "short", per_job("trn_training_loss")),
        _panel("Step time", "s", per_job("trn_training_step_duration_seconds")),
        _panel("Steps done", "short", per_job("trn_training_steps_total")),
    ))


def serving() -> Dashboard:
    def quantile(q: float, *histograms: str) -> str:
        rates = " or ".join(f"rate({h}_bucket[5m])" for h in histograms)
        return f"histogram_quantile({q}, sum by (le, workload) ({rates}))"
    return Dashboard("trn-serving", "trn-platform / Serving", (
        "vLLM: request latency p50/p99, time to first token and time per output token p99 (what the alerts "
        "watch), requests running and waiting, tokens/s"), (
        _panel("End-to-end latency p50 / p99", "s",
               (quantile(0.5, "vllm:e2e_request_latency_seconds"), "p50 {{workload}}"),
               (quantile(0.99, "vllm:e2e_request_latency_seconds"), "p99 {{workload}}")),
        _panel("Time to first token p99", "s", (quantile(0.99, *rules.TIME_TO_FIRST_TOKEN), "{{workload}}")),
        _panel("Time per output token p99", "s", (quantile(0.99, *rules.TIME_PER_OUTPUT_TOKEN), "{{workload}}")),
        _panel("Requests running / waiting", "short",
               ("sum by (workload) (vllm:num_requests_running)", "running {{workload}}"),
               ("sum by (workload) (vllm:num_requests_waiting)", "waiting {{workload}}")),
        _panel("Generated tokens/s", "short",
               ("sum by (workload) (rate(vllm:generation_tokens_total[5m]))", "{{workload}}")),
    ))


def storage() -> Dashboard:
    def per_fs(expr: str, legend: str = "{{file_system_id}}") -> tuple[str, str]:
        return f"sum by (file_system_id) ({expr}){PER_SECOND}", legend
    return Dashboard("trn-storage", "trn-platform / Storage", (
        "FSx for Lustre: free capacity, read and write throughput, operations (CloudWatch through the exporter, "
        "about 10 minutes behind)"), (
        _panel("FSx free capacity", "bytes",
               (f"max by (file_system_id) (aws_fsx_free_data_storage_capacity_sum {CLOUDWATCH_OFFSET})",
                "{{file_system_id}}")),
        _panel("FSx throughput", "Bps", per_fs(f"aws_fsx_data_read_bytes_sum {CLOUDWATCH_OFFSET}", "read {{file_system_id}}"),
               per_fs(f"aws_fsx_data_write_bytes_sum {CLOUDWATCH_OFFSET}", "write {{file_system_id}}")),
        _panel("FSx operations/s", "ops", per_fs(FSX_OPERATIONS)),
    ))


def definitions() -> list[Dashboard]:
    return [fleet(), neuron(), training(), serving(), storage()]


def queries(dashboards: list[Dashboard]) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every query of every panel."""
    return [(d.uid, p.title, q) for d in dashboards for p in d.panels for q, _ in p.queries]


def build(d: Dashboard) -> dict:
    """The dashboard JSON model as Grafana provisions it."""
    board = (dashboard.Dashboard(d.title).uid(d.uid).description(d.description).tags(["trn-platform"])
             .editable().refresh("1m").time("now-6h", "now").timezone("utc"))
    for p in d.panels:
        builder = (stat.Panel() if p.kind == "stat" else timeseries.Panel()).title(p.title).unit(p.unit)
        builder = builder.datasource(DATASOURCE).description(p.description).height(8).span(12)
        for j, (expr, legend) in enumerate(p.queries):
            builder = builder.with_target(prometheus.Dataquery().expr(expr).legend_format(legend)
                                          .ref_id(chr(ord("A") + j)).datasource(DATASOURCE))
        board = board.with_panel(builder)
    return json.loads(JSONEncoder(sort_keys=True).encode(board.build()))


def configmap(d: Dashboard, *, namespace: str, label: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"dashboard-{d.uid}", "namespace": namespace,
                         "labels": {**label, "app.kubernetes.io/part-of": "trn-platform-monitoring"}},
            "data": {f"{d.uid}.json": json.dumps(build(d), sort_keys=True)}}
