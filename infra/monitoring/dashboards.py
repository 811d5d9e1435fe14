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

DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # the chart's default datasource uid
POOL = rules.NODEPOOL_LABEL
CAPACITY = "label_karpenter_sh_capacity_type"


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


def definitions() -> list[Dashboard]:
    return [
        Dashboard("trn-fleet", "trn-platform / Fleet",
                  "nodes per pool and capacity type, accelerator $/h right now (node counts x on-demand list prices "
                  "from infra/data/prices.json), Karpenter NodeClaims vs nodes joined, launch failures, pool usage vs limits", (
                      Panel("Accelerator $/h now (on-demand list price)", ((rules.ACCELERATOR_COST_METRIC, "$/h"),),
                            "currencyUSD", "stat", "Spot nodes are billed less: this is an upper bound."),
                      Panel("Nodes per pool and capacity type",
                            ((f"count by ({POOL}, {CAPACITY}) (kube_node_labels{{{POOL}!=\"\"}})",
                              f"{{{{{POOL}}}}} {{{{{CAPACITY}}}}}"),)),
                      Panel("Accelerator $/h per instance type",
                            ((f"count by ({rules.NODE_TYPE_LABEL}) (kube_node_labels{{{POOL}!=\"\"}})"
                              f" * on ({rules.NODE_TYPE_LABEL}) group_left () label_replace({rules.PRICE_METRIC}, "
                              f"\"{rules.NODE_TYPE_LABEL}\", \"$1\", \"instance_type\", \"(.*)\")",
                              f"{{{{{rules.NODE_TYPE_LABEL}}}}}"),), "currencyUSD"),
                      Panel("NodeClaims created / nodes joined per pool (1h)",
                            (("sum by (nodepool) (increase(karpenter_nodeclaims_created_total[1h]))", "claims {{nodepool}}"),
                             ("sum by (nodepool) (increase(karpenter_nodes_created_total[1h]))", "nodes {{nodepool}}"))),
                      Panel("Launch failures by reason (1h)",
                            (("sum by (reason, capacity_type) (increase(karpenter_cloudprovider_instance_launch_failures_total[1h]))",
                              "{{reason}} {{capacity_type}}"),)),
                      Panel("Pool usage vs limit",
                            (("sum by (nodepool, resource_type) (karpenter_nodepools_usage)", "used {{nodepool}} {{resource_type}}"),
                             ("sum by (nodepool, resource_type) (karpenter_nodepools_limit)", "limit {{nodepool}} {{resource_type}}"))),
                  )),
        Dashboard("trn-neuron", "trn-platform / Neuron",
                  "NeuronCore utilization per node, device memory used, execution status and errors, hardware ECC "
                  "events, EFA traffic and errors per node", (
                      Panel("NeuronCore utilization per node", (("avg by (node) (neuroncore_utilization_ratio)", "{{node}}"),),
                            "percentunit"),
                      Panel("Busy NeuronCores", (("count(neuroncore_utilization_ratio > 0)", "busy cores"),), "short", "stat"),
                      Panel("Neuron runtime memory used",
                            (("sum by (node, memory_location) (neuron_runtime_memory_used_bytes)", "{{node}} {{memory_location}}"),),
                            "bytes"),
                      Panel("Device memory by use (tensors, model code, scratchpad)",
                            (("sum by (node) (neuroncore_memory_usage_tensors)", "tensors {{node}}"),
                             ("sum by (node) (neuroncore_memory_usage_model_code)", "model code {{node}}"),
                             ("sum by (node) (neuroncore_memory_usage_model_shared_scratchpad)", "scratchpad {{node}}")),
                            "bytes"),
                      Panel("Executions by status (/s)",
                            (("sum by (status_type) (rate(execution_status_total[5m]))", "{{status_type}}"),), "ops"),
                      Panel("Execution errors by type (/s)",
                            (("sum by (node, error_type) (rate(execution_errors_total[5m]))", "{{node}} {{error_type}}"),), "ops"),
                      Panel("Hardware ECC events (1h)",
                            (("sum by (node, event_type) (increase(hardware_ecc_events_total[1h]))", "{{node}} {{event_type}}"),)),
                      Panel("Execution latency p99",
                            (('max by (node) (execution_latency_seconds{percentile="p99"})', "{{node}}"),), "s"),
                      Panel("EFA traffic per node",
                            (("sum by (node) (rate(node_infiniband_port_data_received_bytes_total[5m]))", "rx {{node}}"),
                             ("sum by (node) (rate(node_infiniband_port_data_transmitted_bytes_total[5m]))", "tx {{node}}")),
                            "Bps"),
                      Panel("EFA receive errors (1h)",
                            (("sum by (node) (increase(node_infiniband_port_errors_received_total[1h]))", "{{node}}"),)),
                  )),
        Dashboard("trn-training", "trn-platform / Training",
                  "per job (workload, stack): tokens/s, loss, step time and steps done, from the metrics the training "
                  "pods expose on their `metrics` port", (
                      Panel("Tokens/s per job", (("sum by (workload, stack) (rate(trn_training_tokens_total[5m]))",
                                                  "{{workload}} {{stack}}"),), "short"),
                      Panel("Loss", (("max by (workload, stack) (trn_training_loss)", "{{workload}} {{stack}}"),)),
                      Panel("Step time", (("max by (workload, stack) (trn_training_step_duration_seconds)",
                                           "{{workload}} {{stack}}"),), "s"),
                      Panel("Steps done", (("max by (workload, stack) (trn_training_steps_total)", "{{workload}} {{stack}}"),)),
                  )),
        Dashboard("trn-serving", "trn-platform / Serving",
                  "vLLM: request latency p50/p99, time to first token p99, requests running and waiting, tokens/s", (
                      Panel("End-to-end latency p50 / p99",
                            (("histogram_quantile(0.5, sum by (le, workload) (rate(vllm:e2e_request_latency_seconds_bucket[5m])))",
                              "p50 {{workload}}"),
                             ("histogram_quantile(0.99, sum by (le, workload) (rate(vllm:e2e_request_latency_seconds_bucket[5m])))",
                              "p99 {{workload}}")), "s"),
                      Panel("Time to first token p99",
                            (("histogram_quantile(0.99, sum by (le, workload) (rate(vllm:time_to_first_token_seconds_bucket[5m])))",
                              "{{workload}}"),), "s"),
                      Panel("Requests running / waiting",
                            (("sum by (workload) (vllm:num_requests_running)", "running {{workload}}"),
                             ("sum by (workload) (vllm:num_requests_waiting)", "waiting {{workload}}"))),
                      Panel("Generated tokens/s", (("sum by (workload) (rate(vllm:generation_tokens_total[5m]))", "{{workload}}"),)),
                  )),
        Dashboard("trn-storage", "trn-platform / Storage",
                  "FSx for Lustre: used fraction, free bytes, read and write throughput, operations (CloudWatch "
                  "through the exporter, about 10 minutes behind)", (
                      Panel("FSx free capacity", (("max by (file_system_id) (aws_fsx_free_data_storage_capacity_sum)",
                                                   "{{file_system_id}}"),), "bytes"),
                      Panel("FSx throughput",
                            ((f"sum by (file_system_id) (aws_fsx_data_read_bytes_sum) / {_period()}", "read {{file_system_id}}"),
                             (f"sum by (file_system_id) (aws_fsx_data_write_bytes_sum) / {_period()}", "write {{file_system_id}}")),
                            "Bps"),
                      Panel("FSx operations/s",
                            ((f"sum by (file_system_id) (aws_fsx_data_read_operations_sum + aws_fsx_data_write_operations_sum"
                              f" + aws_fsx_metadata_operations_sum) / {_period()}", "{{file_system_id}}"),), "ops"),
                  )),
    ]


def _period() -> int:
    from infra.monitoring.values import CLOUDWATCH_PERIOD_SECONDS  # CloudWatch Sum per period -> per second
    return CLOUDWATCH_PERIOD_SECONDS


def queries(dashboards: list[Dashboard]) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every query of every panel."""
    return [(d.uid, p.title, q) for d in dashboards for p in d.panels for q, _ in p.queries]


def build(d: Dashboard) -> dict:
    """The dashboard JSON model as Grafana provisions it."""
    board = (dashboard.Dashboard(d.title).uid(d.uid).description(d.description).tags(["trn-platform"])
             .editable().refresh("1m").time("now-6h", "now").timezone("utc"))
    for i, p in enumerate(d.panels):
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
