"""What a platform stack costs per hour while idle, and what its pools and jobs cost when busy.

    estimate_platform(load_stack_file(".", "dev-usw2")).format()
    estimate_workload("trn1.32xlarge", nodes=4, region="us-west-2")

Always-on items are the hourly charges that run whether or not anyone trains: the EKS
control plane, the system node group, NAT gateways (and their public IPv4 addresses),
VPC interface endpoints (one ENI per endpoint per AZ), FSx for Lustre storage. Karpenter
pools have no minimum size, so their idle cost is zero; each pool is listed with its
per-node price and the price at its `maxNodes` limit. A pool that launches only from
Capacity Blocks for ML is priced at the block rate: blocks are paid up front for their whole
duration, whether nodes run or not (`capacity_block_cost` prices one block; preflight prints
it for each configured block). Prices come from infra/data/prices.json (region, date, source
inside); usage charges (data processed, transfer, S3, logs) are not estimated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import catalog
from infra.config import PlatformConfig
from infra.prices import PRICES_FILE, PriceError, Prices, has_prices, load_prices, no_price_data  # noqa: F401 (part of the estimate's API)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class LineItem:
    name: str
    quantity: float
    unit: str
    unit_price: float  # $ per unit per hour
    note: str = ""

    @property
    def per_hour(self) -> float:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class PoolCost:
    name: str
    instance_type: str  # the largest type of the pool (what the limits are sized for)
    per_node_hour: float
    max_nodes: int
    accelerator: bool
    idle_nodes: int = 0  # Karpenter pools have no minimum: nothing runs without pods
    capacity_block: bool = False  # priced at the Capacity Block rate (prepaid per block)

    @property
    def at_limit_hour(self) -> float:
        return self.per_node_hour * self.max_nodes

    @property
    def idle_hour(self) -> float:
        return self.per_node_hour * self.idle_nodes


@dataclass
class CostReport:
    stack: str
    region: str
    prices_as_of: str
    hours_per_month: int
    always_on: list[LineItem] = field(default_factory=list)
    pools: list[PoolCost] = field(default_factory=list)

    @property
    def always_on_per_hour(self) -> float:
        return sum(i.per_hour for i in self.always_on)

    @property
    def always_on_per_month(self) -> float:
        return self.always_on_per_hour * self.hours_per_month

    @property
    def idle_accelerator_per_hour(self) -> float:
        return sum(p.idle_hour for p in self.pools if p.accelerator)

    @property
    def all_pools_at_limit_hour(self) -> float:
        return sum(p.at_limit_hour for p in self.pools)

    def format(self) -> str:
        lines = [f"cost estimate {self.stack} ({self.region}, on-demand list prices as of {self.prices_as_of}, USD)",
                 "  always on                          qty  unit           $/unit-h     $/h"]
        for i in self.always_on:
            lines.append(f"    {i.name:<30} {i.quantity:>6g}  {i.unit:<13} {i.unit_price:>9.5f} {i.per_hour:>7.3f}"
                         + (f"  ({i.note})" if i.note else ""))
        lines.append(f"    {'total':<30} {'':>6}  {'':<13} {'':>9} {self.always_on_per_hour:>7.3f}"
                     f"  = ${self.always_on_per_month:,.0f}/month")
        lines.append("  node pools (scale to zero)        largest type     $/node-h  max  $/h at limit  $/h idle")
        for p in self.pools:
            lines.append(f"    {p.name:<30} {p.instance_type:<16} {p.per_node_hour:>8.3f} {p.max_nodes:>4} "
                         f"{p.at_limit_hour:>13.2f} {p.idle_hour:>9.2f}"
                         + ("  (Capacity Block rate: paid up front for the whole block)" if p.capacity_block else ""))
        lines.append(f"  idle accelerators: ${self.idle_accelerator_per_hour:.2f}/h; every pool at its limit: "
                     f"${self.all_pools_at_limit_hour:,.2f}/h on top of the always-on total")
        return "\n".join(lines)


# --------------------------------------------------------------------------- estimates


def az_count(cfg: PlatformConfig) -> int:
    return len(cfg.network.availability_zone_ids) or cfg.network.az_count


def interface_endpoints() -> tuple[str, ...]:
    """The platform's interface endpoints, as infra/network.py creates them."""
    from infra.network import INTERFACE_ENDPOINTS  # imports pulumi_aws: only when estimating
    return INTERFACE_ENDPOINTS


def estimate_platform(cfg: PlatformConfig, prices: Prices | None = None) -> CostReport:
    prices = prices or load_prices(cfg.region)
    azs = az_count(cfg)
    nats = azs if cfg.network.nat_gateways == "per-az" else 1
    system = cfg.system_nodes
    system_type = system.instance_types[0]  # the managed node group launches its first type on-demand
    endpoints = interface_endpoints()
    hpm = prices.hours_per_month
    report = CostReport(stack=cfg.stack, region=cfg.region, prices_as_of=prices.as_of, hours_per_month=hpm)
    report.always_on = [
        LineItem("EKS control plane", 1, "cluster", prices.eks_control_plane),
        LineItem(f"system nodes {system_type}", system.desired_size, "node", prices.instance(system_type)),
        LineItem("system node root volumes gp3", system.desired_size * system.disk_size_gib, "GiB",
                 prices.ebs_gp3_gb_month / hpm),
        LineItem("NAT gateways", nats, "gateway", prices.nat_gateway, cfg.network.nat_gateways),
        LineItem("NAT public IPv4 addresses", nats, "address", prices.public_ipv4),
        LineItem("VPC interface endpoints", len(endpoints) * azs, "endpoint-AZ", prices.interface_endpoint_per_az,
                 f"{', '.join(endpoints)} x {azs} AZs; S3 gateway endpoint free"),
        LineItem(f"FSx Lustre {cfg.fsx.deployment_type}", cfg.fsx.storage_capacity_gib, "GiB",
                 prices.fsx(cfg.fsx.deployment_type, cfg.fsx.per_unit_storage_throughput) / hpm,
                 f"{cfg.fsx.per_unit_storage_throughput} MB/s/TiB"),
    ]
    if cfg.monitoring.enabled:
        report.always_on += monitoring_items(cfg, prices)
    for pool in cfg.node_pools:
        big = pool.largest_instance
        block_only = set(pool.capacity_types) == {"capacity-block"}
        rate = prices.capacity_block(big.name) if block_only else prices.instance(big.name)
        report.pools.append(PoolCost(pool.name, big.name, rate, pool.max_nodes, pool.is_accelerator,
                                     capacity_block=block_only))
    return report


def capacity_block_cost(instance_type: str, instances: int, hours: float, region: str) -> float:
    """What one Capacity Block costs: instances x hours at the block rate of the price file."""
    if instances < 0 or hours < 0:
        raise ValueError(f"instances and hours must be >= 0, got {instances} and {hours}")
    return instances * hours * load_prices(region).capacity_block(instance_type)


def monitoring_items(cfg: PlatformConfig, prices: Prices) -> list[LineItem]:
    """The monitoring stack's own always-on cost: its gp3 volumes and the CloudWatch exporter's
    GetMetricData calls. Its pods' requests run on the system nodes already counted above."""
    from infra.monitoring import values as monitoring  # the volumes and requests the stack sets

    volumes = monitoring.volume_gib(cfg.monitoring)
    cpu, memory = monitoring.system_requests(cfg.system_nodes.desired_size)
    metrics_per_hour = len(monitoring.FSX_CLOUDWATCH_METRICS) * 3600 / monitoring.CLOUDWATCH_PERIOD_SECONDS
    return [
        LineItem("monitoring volumes gp3", sum(volumes.values()), "GiB", prices.ebs_gp3_gb_month / prices.hours_per_month,
                 ", ".join(f"{k} {v}" for k, v in volumes.items()) + f"; requests {cpu:.2f} vCPU / {memory:.1f} GiB "
                 "on the system nodes"),
        LineItem("CloudWatch GetMetricData (FSx)", metrics_per_hour / 1000, "1k metrics", prices.cloudwatch_metrics_per_1000,
                 f"{len(monitoring.FSX_CLOUDWATCH_METRICS)} metrics every {monitoring.CLOUDWATCH_PERIOD_SECONDS}s"),
    ]


def estimate_workload(instance_type: str, nodes: int, region: str) -> float:
    """$/hour while a job holds `nodes` on-demand instances of `instance_type`."""
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    return nodes * load_prices(region).instance(instance_type)


# --------------------------------------------------------------------------- render hook


def summary_for_render(result, project_dir: Path) -> str | None:
    """The render's cost block: the platform estimate for platform stacks; for workload
    stacks, the accelerator nodes their pods occupy while running."""
    from infra import config

    if result.project == config.PROJECT:
        cfg = config.load_stack_file(project_dir, result.stack)
        if not has_prices(cfg.region):
            return f"cost estimate {cfg.stack}: {no_price_data(cfg.region)}"
        return estimate_platform(cfg).format()
    platform_ref = config.read_stack_bag(project_dir, result.stack).get(f"{result.project}:platformStack")
    if not platform_ref:
        return None
    # Workload stacks name their platform stack; its config lives at the repository root.
    platform = config.load_stack_file(REPO_ROOT, str(platform_ref).split("/")[-1])
    return workload_summary(result.stack, result.manifests, platform)


BATCH_KINDS = ("Job", "MPIJob", "PyTorchJob", "RayJob")  # a workload's steps: the stack runs them one after another


@dataclass(frozen=True)
class PodNeed:
    """What one accelerator pod asks of a node."""
    devices: int
    cpu: float  # cores
    memory_gib: float


def _quantity(value: Any, *, memory: bool) -> float:
    """A Kubernetes quantity as cores (cpu) or GiB (memory)."""
    text = str(value or 0)
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1.0, "Ti": 2**10, "K": 1e3 / 2**30, "M": 1e6 / 2**30, "G": 1e9 / 2**30}
    if not memory:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * factor
    return float(text) / 2**30


def _pod_need(spec: dict) -> PodNeed:
    requests = [((c.get("resources") or {}).get("requests") or {}) for c in spec.get("containers") or []]
    return PodNeed(devices=sum(int(r.get("aws.amazon.com/neuron", 0)) for r in requests),
                   cpu=sum(_quantity(r.get("cpu"), memory=False) for r in requests),
                   memory_gib=sum(_quantity(r.get("memory"), memory=True) for r in requests))


def autoscaler_maximums(manifests: list[tuple[str, dict]]) -> dict[str, int]:
    """Deployment name -> the replica count its autoscaler may reach (HPA maxReplicas, KEDA
    ScaledObject maxReplicaCount)."""
    out: dict[str, int] = {}
    for _, obj in manifests:
        spec = obj.get("spec") or {}
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if obj.get("kind") == "HorizontalPodAutoscaler" and target:
            out[target] = int(spec.get("maxReplicas", 1))
        elif obj.get("kind") == "ScaledObject" and target:
            out[target] = int(spec.get("maxReplicaCount", 100))  # KEDA's default maximum
    return out


def hourly(result, project_dir: Path) -> float | None:
    """One $/h for a render: a platform's always-on total, a workload's peak while it runs;
    None without list prices for the region (or for a workload that holds no accelerator)."""
    from infra import config

    if result.project == config.PROJECT:
        cfg = config.load_stack_file(project_dir, result.stack)
        return estimate_platform(cfg).always_on_per_hour if has_prices(cfg.region) else None
    platform_ref = config.read_stack_bag(project_dir, result.stack).get(f"{result.project}:platformStack")
    if not platform_ref:
        return None
    platform = config.load_stack_file(REPO_ROOT, str(platform_ref).split("/")[-1])
    costs = workload_costs(result.stack, result.manifests, platform)
    return costs[1] if costs else None


def workload_summary(stack: str, manifests: list[tuple[str, dict]], platform: PlatformConfig) -> str | None:
    """The workload's cost block (workload_costs); None when it holds no accelerator."""
    costs = workload_costs(stack, manifests, platform)
    return "\n".join(costs[0]) if costs else None


def workload_costs(stack: str, manifests: list[tuple[str, dict]],
                   platform: PlatformConfig) -> tuple[list[str], float | None] | None:
    """(lines, $/h at the peak; None without prices). Accelerator nodes a workload occupies at its peak, priced per pool: everything
    long-running (Deployments, Pods, RayClusters) plus the largest of its batch steps
    (data, precompile and train run one after another, never together). Deployments that an
    autoscaler may grow are priced once more at the autoscaler's maximum."""
    pool_names = {p.name for p in platform.node_pools}
    scale_max = autoscaler_maximums(manifests)
    long_running: dict[str, list[PodNeed]] = {}
    scaled_up: dict[str, list[PodNeed]] = {}
    steps: list[dict[str, list[PodNeed]]] = []
    for _, obj in manifests:
        target = {} if obj.get("kind") in BATCH_KINDS else long_running
        name = (obj.get("metadata") or {}).get("name")
        for replicas, spec in _replicated_pod_specs(obj):
            pool = (spec.get("nodeSelector") or {}).get("trn-platform/pool")
            need = _pod_need(spec)
            if need.devices and pool in pool_names:
                target.setdefault(pool, []).extend([need] * replicas)
                most = max(replicas, scale_max.get(name, 0)) if obj.get("kind") == "Deployment" else replicas
                if target is long_running:
                    scaled_up.setdefault(pool, []).extend([need] * most)
        if target is not long_running and target:
            steps.append(target)
    if not has_prices(platform.region):
        return [f"cost while running {stack}: {no_price_data(platform.region)}"], None
    prices = load_prices(platform.region)

    def priced(pods: dict[str, list[PodNeed]]) -> list[tuple[str, list[PodNeed], str, int, float]]:
        rows = []
        for pool_name, needs in sorted(pods.items()):
            types = platform.pool(pool_name).instance_types
            # Karpenter launches the cheapest type that fits the largest pod (devices, CPU, memory).
            fitting = [t for t in types if (it := catalog.instance_type(t)).neuron_devices >= max(n.devices for n in needs)
                       and it.vcpu >= max(n.cpu for n in needs) and it.memory_gib >= max(n.memory_gib for n in needs)]
            itype = min(fitting or types, key=prices.instance)
            per_node = max(catalog.instance_type(itype).neuron_devices, 1)
            nodes = math.ceil(sum(n.devices for n in needs) / per_node)
            rows.append((pool_name, needs, itype, nodes, nodes * prices.instance(itype)))
        return rows

    def with_steps(pods: dict[str, list[PodNeed]], step: dict[str, list[PodNeed]]) -> dict[str, list[PodNeed]]:
        out = {k: list(v) for k, v in pods.items()}
        for pool_name, needs in step.items():
            out.setdefault(pool_name, []).extend(needs)
        return out

    biggest_step = max(steps, key=lambda st: sum(r[4] for r in priced(st)), default={})
    peak = with_steps(long_running, biggest_step)
    if not peak:
        return None
    lines = [f"cost while running {stack} ({platform.region}, on-demand, peak):"]
    total = 0.0
    for pool_name, needs, itype, nodes, cost in priced(peak):
        total += cost
        lines.append(f"  {pool_name:<14} {len(needs)} pod(s), {sum(n.devices for n in needs)} Neuron devices -> "
                     f"{nodes} x {itype}  ${cost:,.2f}/h")
    lines.append(f"  total ${total:,.2f}/h (pools return to zero nodes when the pods finish)")
    if scaled_up != long_running:
        scaled_total = sum(r[4] for r in priced(with_steps(scaled_up, biggest_step)))
        grown = ", ".join(f"{pool} {len(needs)} pod(s)" for pool, needs in sorted(scaled_up.items())
                          if len(needs) != len(long_running.get(pool, [])))
        lines.append(f"  at the autoscalers' maximum ({grown}): ${scaled_total:,.2f}/h")
    return lines, total


def _replicated_pod_specs(obj: dict) -> list[tuple[int, dict]]:
    """(replicas, pod spec) for the workload kinds the platform runs."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return [(1, spec)]
    if kind in ("Deployment", "StatefulSet"):
        return [(int(spec.get("replicas", 1)), spec["template"]["spec"])]
    if kind == "Job" and str(obj.get("apiVersion", "")).startswith("batch.volcano.sh/"):  # Volcano Job: its tasks
        return [(int(t.get("replicas", 1)), t["template"]["spec"]) for t in spec.get("tasks") or []]
    if kind == "Job":
        return [(int(spec.get("parallelism", 1)), spec["template"]["spec"])]
    if kind == "MPIJob":
        return [(int(r.get("replicas", 1)), r["template"]["spec"]) for r in (spec.get("mpiReplicaSpecs") or {}).values()]
    if kind == "PyTorchJob":
        return [(int(r.get("replicas", 1)), r["template"]["spec"]) for r in (spec.get("pytorchReplicaSpecs") or {}).values()]
    if kind in ("RayCluster", "RayJob"):
        cluster = spec.get("rayClusterSpec", spec)
        groups = [(1, (cluster.get("headGroupSpec") or {}).get("template", {}).get("spec", {}))]
        groups += [(int(g.get("replicas", 1)), g["template"]["spec"]) for g in cluster.get("workerGroupSpecs") or []]
        return groups
    return []


# --------------------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    parser.add_argument("stack", nargs="?", help="a platform stack (always-on and per-pool $/h) or a workload stack "
                                                 "(the accelerators it holds while running), by name or file")
    parser.add_argument("--project-dir", type=Path, default=None,
                        help="'.' (platform) or 'workloads'; found from the stack name by default")


def run(args) -> int:
    """Platform stacks are priced from their config alone; a workload stack is rendered
    first, since what it costs is what its pods request."""
    from infra import config
    from stackfiles import ConfigError
    from trnctl import exitcodes, render

    if not args.stack:
        return render.list_stacks("cost")
    try:
        stack, project_dir = render.resolve_stack(args.stack, args.project_dir)
        if (Path(project_dir) / "Pulumi.yaml").exists() and render.read_project(project_dir)["name"] == config.PROJECT:
            cfg = config.load_stack_file(project_dir, stack)
            if not has_prices(cfg.region):  # what `trnctl cost` cannot do: say which file to extend
                raise PriceError(f"stack {stack!r} (aws:region {cfg.region}): {no_price_data(cfg.region)}")
            print(estimate_platform(cfg).format())
            return exitcodes.OK
        result = render.run_program(Path(project_dir), stack)
    except (ConfigError, render.RenderError, PriceError) as exc:  # PriceError: a type without a list price (Trn3)
        return exitcodes.bad_input(exc)
    print(summary_for_render(result, Path(project_dir)) or f"{stack}: requests no accelerators")
    return exitcodes.OK
