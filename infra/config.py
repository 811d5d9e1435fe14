"""Platform stack configuration: parsed once into typed objects and validated here.

Two sources feed the same parser:
- inside a Pulumi program, `from_pulumi()` reads the stack's config bag;
- offline tools (render, preflight, sweep, cost) call `load_stack_file()` on
  `Pulumi.<stack>.yaml` directly.

Every error names the key and the allowed values, and all errors are raised together
as one `ConfigError` before any resource is registered.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import stackfiles
from infra import catalog, versions
from stackfiles import ConfigError, ConfigReader, read_stack_bag

PROJECT = "trn-platform"


# --------------------------------------------------------------------------- typed config


@dataclass(frozen=True)
class NetworkConfig:
    vpc_cidr: str = "10.40.0.0/16"
    az_count: int = 2
    availability_zone_ids: tuple[str, ...] = ()  # empty: choose from live offerings
    nat_gateways: str = "single"  # single | per-az


@dataclass(frozen=True)
class EndpointConfig:
    public_access: bool = True
    public_access_cidrs: tuple[str, ...] = ()
    private_access: bool = True


@dataclass(frozen=True)
class SystemNodesConfig:
    instance_types: tuple[str, ...] = ("m6i.large",)
    min_size: int = 2
    desired_size: int = 2
    max_size: int = 3
    disk_size_gib: int = 50


@dataclass(frozen=True)
class NodePoolConfig:
    name: str
    family: str  # trn1 | trn1n | inf2 | cpu
    instance_types: tuple[str, ...]
    max_nodes: int
    capacity_types: tuple[str, ...] = ("on-demand",)
    efa: bool = False
    capacity_reservation_ids: tuple[str, ...] = ()
    root_volume_gib: int = 0  # 0: family default
    consolidate_after: str = "10m"
    # Accelerator pools never disrupt running pods except when empty; this is how many
    # empty nodes may be removed at once.
    disruption_budget_nodes: str = "10%"

    @property
    def is_accelerator(self) -> bool:
        return self.family != "cpu"

    @property
    def largest_instance(self) -> catalog.InstanceType:
        return max((catalog.instance_type(t) for t in self.instance_types), key=lambda i: (i.vcpu, i.memory_gib))

    @property
    def limits(self) -> dict[str, str]:
        """Karpenter `limits`: room for exactly `max_nodes` of the largest instance type."""
        big = self.largest_instance
        out = {"cpu": str(big.vcpu * self.max_nodes), "memory": f"{big.memory_gib * self.max_nodes}Gi"}
        if big.neuron_devices:
            out["aws.amazon.com/neuron"] = str(big.neuron_devices * self.max_nodes)
        return out


@dataclass(frozen=True)
class FsxConfig:
    deployment_type: str = "PERSISTENT_2"
    storage_capacity_gib: int = 1200
    per_unit_storage_throughput: int = 125
    data_compression: str = "LZ4"
    s3_import_path: str | None = None  # s3://bucket/prefix linked through a data repository association
    mount_path: str = "/shared"
    pvc_name: str = "fsx-shared"
    pvc_namespace: str = "ml-shared"


@dataclass(frozen=True)
class BudgetConfig:
    monthly_limit_usd: float
    alert_emails: tuple[str, ...]


@dataclass(frozen=True)
class MonitoringConfig:
    """kube-prometheus-stack, neuron-monitor, dashboards and alerts (infra/monitoring/)."""
    enabled: bool = True
    namespace: str = "monitoring"
    retention: str = "15d"  # Prometheus TSDB retention
    prometheus_storage_gib: int = 50
    alertmanager_storage_gib: int = 5
    grafana_storage_gib: int = 10
    neuron_idle_after: str = "1h"  # alert: a billed Neuron node with no NeuronCore use this long
    training_stall_after: str = "30m"  # alert: a training job whose step counter stopped this long
    serving_p99_seconds: float = 10.0  # alert: serving p99 end-to-end latency above this
    alert_emails: tuple[str, ...] = ()  # default: budget.alertEmails
    sns_topic_arn: str | None = None  # an existing topic; else one is created for alert_emails
    remote_write_workspace_arn: str | None = None  # Amazon Managed Service for Prometheus workspace

    @property
    def remote_write_workspace_id(self) -> str | None:
        return self.remote_write_workspace_arn.rsplit("/", 1)[-1] if self.remote_write_workspace_arn else None


@dataclass(frozen=True)
class PlatformConfig:
    stack: str
    region: str
    environment: str
    cluster_name: str
    kubernetes_version: str
    network: NetworkConfig
    endpoint: EndpointConfig
    identity: str  # pod-identity | irsa
    system_nodes: SystemNodesConfig
    node_pools: tuple[NodePoolConfig, ...]
    fsx: FsxConfig
    ecr_repositories: tuple[str, ...]
    workload_presets: tuple[str, ...]
    budget: BudgetConfig | None = None
    tags: dict[str, str] = field(default_factory=dict)
    monitoring: MonitoringConfig = MonitoringConfig()

    def pool(self, name: str) -> NodePoolConfig:
        return next(p for p in self.node_pools if p.name == name)

    @property
    def accelerator_pools(self) -> tuple[NodePoolConfig, ...]:
        return tuple(p for p in self.node_pools if p.is_accelerator)


# --------------------------------------------------------------------------- allowed values

FAMILIES = ("trn1", "trn1n", "inf2", "cpu")
CAPACITY_TYPES = ("on-demand", "spot", "reserved")
NAT_MODES = ("single", "per-az")
IDENTITY_MODES = ("pod-identity", "irsa")
ENVIRONMENTS = ("dev", "staging", "prod")
ECR_DEFAULT = ("compile", "serve", "nemo", "ray-train", "finetune")

# FSx for Lustre: capacity steps and throughput tiers per deployment type (FSx user guide,
# "Storage capacity" and "Throughput capacity").
FSX_RULES: dict[str, dict[str, Any]] = {
    "PERSISTENT_2": {"throughput": (125, 250, 500, 1000), "min": 1200, "step": 2400},
    "PERSISTENT_1": {"throughput": (50, 100, 200), "min": 1200, "step": 2400},
    "SCRATCH_2": {"throughput": (), "min": 1200, "step": 2400},
}

TOP_LEVEL_KEYS = {
    "environment", "clusterName", "kubernetesVersion", "network", "endpoint", "identity",
    "systemNodes", "nodePools", "fsx", "ecrRepositories", "workloadPresets", "budget", "tags",
    "monitoring",
}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DURATION = re.compile(r"^([0-9]+(s|m|h))+$|^Never$")


# --------------------------------------------------------------------------- parsing


def parse(raw: dict[str, Any], *, stack: str, region: str | None) -> PlatformConfig:
    """Turn the raw project config (keys without the project prefix) into a PlatformConfig."""
    problems: list[str] = []
    if not region:
        problems.append("aws:region: required key is missing; set it with `pulumi config set aws:region us-west-2`")
        region = ""
    root = ConfigReader(raw, "", problems)

    environment = root.get("environment", str, "dev", allowed=ENVIRONMENTS)
    cluster_name = root.get("clusterName", str, f"trn-{stack}",
                            check=lambda v: None if _NAME.match(v) else "must be lowercase letters, digits and '-', at most 40 characters")
    k8s_version = root.get("kubernetesVersion", str, versions.SUPPORTED_KUBERNETES_VERSIONS[-1],
                           allowed=versions.SUPPORTED_KUBERNETES_VERSIONS)
    identity = root.get("identity", str, "pod-identity", allowed=IDENTITY_MODES)

    network = _parse_network(root.get("network", dict, {}), problems)
    endpoint = _parse_endpoint(root.get("endpoint", dict, {}), problems)
    system_nodes = _parse_system_nodes(root.get("systemNodes", dict, {}), problems)
    pools = _parse_pools(root.get("nodePools", list, None, required=True), region, problems)
    fsx = _parse_fsx(root.get("fsx", dict, {}), problems)
    ecr = root.str_list("ecrRepositories", ECR_DEFAULT)
    presets = root.str_list("workloadPresets", (), allowed=tuple(sorted(catalog.WORKLOAD_CAPACITY)))
    budget = _parse_budget(root.get("budget", dict, None), problems)
    tags = root.get("tags", dict, {})
    monitoring = _parse_monitoring(root.get("monitoring", dict, {}), budget, region, problems)
    root.finish()

    if region and region not in catalog.known_regions():
        problems.append(f"aws:region: {region!r} has no offering data here; supported regions: {', '.join(catalog.known_regions())}")
    _check_presets_fit(presets, pools, problems)
    _check_azs(network, region, pools, problems)

    if problems:
        raise ConfigError(problems, f"config for stack {stack!r}")
    return PlatformConfig(
        stack=stack, region=region, environment=environment, cluster_name=cluster_name,
        kubernetes_version=k8s_version, network=network, endpoint=endpoint, identity=identity,
        system_nodes=system_nodes, node_pools=tuple(pools), fsx=fsx, ecr_repositories=ecr,
        workload_presets=presets, budget=budget, tags={str(k): str(v) for k, v in tags.items()},
        monitoring=monitoring,
    )


def _parse_network(data: dict, problems: list[str]) -> NetworkConfig:
    r = ConfigReader(data, "network", problems)

    def cidr_ok(v: str) -> str | None:
        try:
            net = ipaddress.ip_network(v)
        except ValueError:
            return f"{v!r} is not a CIDR block"
        return None if 16 <= net.prefixlen <= 20 else "prefix length must be /16 to /20 (room for public and private subnets per AZ)"

    cfg = NetworkConfig(
        vpc_cidr=r.get("vpcCidr", str, NetworkConfig.vpc_cidr, check=cidr_ok),
        az_count=r.get("azCount", int, NetworkConfig.az_count,
                       check=lambda v: None if 2 <= v <= 4 else "must be 2 to 4 (EKS needs subnets in at least two AZs)"),
        availability_zone_ids=r.str_list("availabilityZoneIds"),
        nat_gateways=r.get("natGateways", str, "single", allowed=NAT_MODES),
    )
    r.finish()
    return cfg


def _parse_endpoint(data: dict, problems: list[str]) -> EndpointConfig:
    r = ConfigReader(data, "endpoint", problems)
    cidrs = r.str_list("publicAccessCidrs")
    public = r.get("publicAccess", bool, True)
    private = r.get("privateAccess", bool, True)
    r.finish()
    for i, c in enumerate(cidrs):
        try:
            ipaddress.ip_network(c)
        except ValueError:
            problems.append(f"endpoint.publicAccessCidrs[{i}]: {c!r} is not a CIDR block")
    if public and (not cidrs or "0.0.0.0/0" in cidrs):
        problems.append("endpoint.publicAccessCidrs: a public API endpoint must be limited to your CIDR blocks "
                        "(0.0.0.0/0 and an empty list are refused); or set endpoint.publicAccess: false")
    if not public and not private:
        problems.append("endpoint: publicAccess and privateAccess cannot both be false")
    return EndpointConfig(public_access=public, public_access_cidrs=cidrs, private_access=private)


def _parse_system_nodes(data: dict, problems: list[str]) -> SystemNodesConfig:
    r = ConfigReader(data, "systemNodes", problems)
    cfg = SystemNodesConfig(
        instance_types=r.str_list("instanceTypes", SystemNodesConfig.instance_types, allowed=catalog.cpu_instance_types()),
        min_size=r.get("minSize", int, SystemNodesConfig.min_size),
        desired_size=r.get("desiredSize", int, SystemNodesConfig.desired_size),
        max_size=r.get("maxSize", int, SystemNodesConfig.max_size),
        disk_size_gib=r.get("diskSizeGiB", int, SystemNodesConfig.disk_size_gib),
    )
    r.finish()
    if not (1 <= cfg.min_size <= cfg.desired_size <= cfg.max_size):
        problems.append(f"systemNodes: need 1 <= minSize <= desiredSize <= maxSize, got {cfg.min_size}/{cfg.desired_size}/{cfg.max_size}")
    return cfg


def _parse_pools(items: list | None, region: str, problems: list[str]) -> list[NodePoolConfig]:
    pools: list[NodePoolConfig] = []
    for i, item in enumerate(items or []):
        r = ConfigReader(item, f"nodePools[{i}]", problems)
        name = r.get("name", str, f"pool-{i}", required=True,
                     check=lambda v: None if _NAME.match(v) else "must be lowercase letters, digits and '-'")
        family = r.get("family", str, "cpu", required=True, allowed=FAMILIES)
        allowed_types = catalog.instance_types_of(family)
        types = r.str_list("instanceTypes", (), allowed=allowed_types, required=True)
        max_nodes = r.get("maxNodes", int, 0, required=True,
                          check=lambda v: None if 1 <= v <= 64 else "must be 1 to 64")
        capacity = r.str_list("capacityTypes", ("on-demand",), allowed=CAPACITY_TYPES)
        efa = r.get("efa", bool, False)
        reservations = r.str_list("capacityReservationIds")
        root_gib = r.get("rootVolumeGiB", int, 0, check=lambda v: None if v == 0 or 20 <= v <= 16384 else "must be 20 to 16384")
        consolidate_after = r.get("consolidateAfter", str, "10m",
                                  check=lambda v: None if _DURATION.match(v) else "must be a duration such as 30s, 10m, 1h or Never")
        budget_nodes = r.get("disruptionBudgetNodes", str, "10%")
        r.finish()
        where = f"nodePools[{i}] ({name})"
        if not types:
            if "instanceTypes" in (item or {}):
                problems.append(f"{where}.instanceTypes: must not be empty; allowed for {family}: {', '.join(allowed_types)}")
            continue
        if efa:
            no_efa = [t for t in types if catalog.instance_type(t).efa_interfaces == 0]
            if no_efa:
                with_efa = [t for t in allowed_types if catalog.instance_type(t).efa_interfaces > 0]
                allowed_efa = ", ".join(with_efa) or "none for " + family
                problems.append(f"{where}.efa: {', '.join(no_efa)} have no EFA interfaces; EFA pools allow: {allowed_efa}")
        if "reserved" in capacity and not reservations:
            problems.append(f"{where}.capacityReservationIds: required when capacityTypes contains 'reserved'")
        if reservations and "reserved" not in capacity:
            problems.append(f"{where}.capacityTypes: must contain 'reserved' when capacityReservationIds are given")
        for j, rid in enumerate(reservations):
            if not re.match(r"^cr-[0-9a-f]{8,17}$", rid):
                problems.append(f"{where}.capacityReservationIds[{j}]: {rid!r} is not a capacity reservation id (cr-...)")
        if region and not catalog.family_in_region(family, region):
            problems.append(f"{where}.family: {family} is not offered in {region}; regions offering it: "
                            f"{', '.join(catalog.family_regions(family))}")
        pools.append(NodePoolConfig(
            name=name, family=family, instance_types=types, max_nodes=max_nodes, capacity_types=capacity,
            efa=efa, capacity_reservation_ids=reservations, root_volume_gib=root_gib,
            consolidate_after=consolidate_after, disruption_budget_nodes=budget_nodes,
        ))
    names = [p.name for p in pools]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"nodePools: name {dup!r} is used more than once")
    if items is not None and not any(p.family == "cpu" for p in pools):
        problems.append("nodePools: at least one pool with family 'cpu' is required (data preparation, Ray heads)")
    return pools


def _parse_fsx(data: dict, problems: list[str]) -> FsxConfig:
    r = ConfigReader(data, "fsx", problems)
    dtype = r.get("deploymentType", str, FsxConfig.deployment_type, allowed=tuple(FSX_RULES))
    capacity = r.get("storageCapacityGiB", int, FsxConfig.storage_capacity_gib)
    throughput = r.get("perUnitStorageThroughput", int, FsxConfig.per_unit_storage_throughput)
    s3_path = r.get("s3ImportPath", str, None,
                    check=lambda v: None if v.startswith("s3://") else "must start with s3://")
    compression = r.get("dataCompression", str, "LZ4", allowed=("LZ4", "NONE"))
    mount = r.get("mountPath", str, "/shared", check=lambda v: None if v.startswith("/") else "must be an absolute path")
    pvc = r.get("pvcName", str, FsxConfig.pvc_name)
    ns = r.get("pvcNamespace", str, FsxConfig.pvc_namespace)
    r.finish()
    rules = FSX_RULES.get(dtype, FSX_RULES["PERSISTENT_2"])
    if capacity != rules["min"] and (capacity < rules["min"] or capacity % rules["step"]):
        problems.append(f"fsx.storageCapacityGiB: {capacity} is not allowed for {dtype}; allowed: "
                        f"{rules['min']} or a multiple of {rules['step']}")
    if rules["throughput"] and throughput not in rules["throughput"]:
        problems.append(f"fsx.perUnitStorageThroughput: {throughput} is not allowed for {dtype}; allowed values: "
                        f"{', '.join(map(str, rules['throughput']))}")
    return FsxConfig(deployment_type=dtype, storage_capacity_gib=capacity, per_unit_storage_throughput=throughput,
                     data_compression=compression, s3_import_path=s3_path, mount_path=mount, pvc_name=pvc,
                     pvc_namespace=ns)


def _parse_budget(data: dict | None, problems: list[str]) -> BudgetConfig | None:
    if data is None:
        return None
    r = ConfigReader(data, "budget", problems)
    limit = r.get("monthlyLimitUsd", float, 0.0, required=True,
                  check=lambda v: None if v > 0 else "must be greater than 0")
    emails = r.str_list("alertEmails", required=True)
    r.finish()
    for i, e in enumerate(emails):
        if not _EMAIL.match(e):
            problems.append(f"budget.alertEmails[{i}]: {e!r} is not an e-mail address")
    return BudgetConfig(monthly_limit_usd=limit, alert_emails=emails)


_RETENTION = re.compile(r"^[0-9]+(h|d|w|y)$")
_PROM_DURATION = re.compile(r"^[0-9]+(s|m|h|d)$")
_SNS_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$")
_APS_ARN = re.compile(r"^arn:aws[a-z-]*:aps:(?P<region>[a-z0-9-]+):[0-9]{12}:workspace/ws-[A-Za-z0-9-]+$")
_K8S_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _parse_monitoring(data: dict, budget: BudgetConfig | None, region: str, problems: list[str]) -> MonitoringConfig:
    r = ConfigReader(data, "monitoring", problems)
    d = MonitoringConfig()

    def size(lo: int, hi: int) -> Callable[[int], str | None]:
        return lambda v: None if lo <= v <= hi else f"must be {lo} to {hi} (GiB)"

    def duration(v: str) -> str | None:
        return None if _PROM_DURATION.match(v) else "must be a Prometheus duration such as 30m, 2h or 1d"

    enabled = r.get("enabled", bool, d.enabled)
    cfg = MonitoringConfig(
        enabled=enabled,
        namespace=r.get("namespace", str, d.namespace,
                        check=lambda v: None if _K8S_NAMESPACE.match(v) else "must be a DNS-1123 label"),
        retention=r.get("retention", str, d.retention,
                        check=lambda v: None if _RETENTION.match(v) else
                        "must be a duration in h, d, w or y such as 15d"),
        prometheus_storage_gib=r.get("prometheusStorageGiB", int, d.prometheus_storage_gib, check=size(10, 16384)),
        alertmanager_storage_gib=r.get("alertmanagerStorageGiB", int, d.alertmanager_storage_gib, check=size(1, 100)),
        grafana_storage_gib=r.get("grafanaStorageGiB", int, d.grafana_storage_gib, check=size(1, 100)),
        neuron_idle_after=r.get("neuronIdleAfter", str, d.neuron_idle_after, check=duration),
        training_stall_after=r.get("trainingStallAfter", str, d.training_stall_after, check=duration),
        serving_p99_seconds=r.get("servingP99LatencySeconds", float, d.serving_p99_seconds,
                                  check=lambda v: None if 0 < v <= 600 else "must be greater than 0 and at most 600"),
        alert_emails=r.str_list("alertEmails", budget.alert_emails if budget else ()),
        sns_topic_arn=r.get("snsTopicArn", str, None,
                            check=lambda v: None if _SNS_ARN.match(v) else
                            "must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)"),
        remote_write_workspace_arn=r.get("remoteWriteWorkspaceArn", str, None, check=lambda v: (
            None if _APS_ARN.match(v) else "must be an Amazon Managed Service for Prometheus workspace ARN "
                                           "(arn:aws:aps:<region>:<account>:workspace/ws-...)")),
    )
    r.finish()
    for i, e in enumerate(cfg.alert_emails if "alertEmails" in (data or {}) else ()):
        if not _EMAIL.match(e):
            problems.append(f"monitoring.alertEmails[{i}]: {e!r} is not an e-mail address")
    if cfg.enabled and not cfg.alert_emails and not cfg.sns_topic_arn:
        problems.append("monitoring: alerts need a destination: set monitoring.alertEmails, monitoring.snsTopicArn "
                        "or budget.alertEmails (or monitoring.enabled: false)")
    ws = _APS_ARN.match(cfg.remote_write_workspace_arn or "")
    if ws and region and ws.group("region") != region:
        problems.append(f"monitoring.remoteWriteWorkspaceArn: the workspace is in {ws.group('region')}, "
                        f"the stack in {region}; remote write stays in the stack's region")
    return cfg


def _check_presets_fit(presets: tuple[str, ...], pools: list[NodePoolConfig], problems: list[str]) -> None:
    for preset in presets:
        need = catalog.WORKLOAD_CAPACITY[preset]
        fitting = [p for p in pools if need.instance_type in p.instance_types and (p.efa or not need.efa)]
        if not fitting:
            problems.append(f"workloadPresets: {preset} needs a pool with {need.instance_type}"
                            f"{' and efa: true' if need.efa else ''}; none is configured")
        elif max(p.max_nodes for p in fitting) < need.nodes:
            best = max(fitting, key=lambda p: p.max_nodes)
            problems.append(f"nodePools ({best.name}).maxNodes: {best.max_nodes} is below what workload preset "
                            f"{preset} needs ({need.nodes} x {need.instance_type}); set maxNodes >= {need.nodes}")


def _check_azs(network: NetworkConfig, region: str, pools: list[NodePoolConfig], problems: list[str]) -> None:
    if not region or region not in catalog.known_regions():
        return
    zone_ids = catalog.zone_ids(region)
    for i, az in enumerate(network.availability_zone_ids):
        if az not in zone_ids:
            problems.append(f"network.availabilityZoneIds[{i}]: {az!r} is not an AZ ID of {region}; allowed: {', '.join(zone_ids)}")
    if network.availability_zone_ids and len(network.availability_zone_ids) < 2:
        problems.append("network.availabilityZoneIds: list at least two AZ IDs (EKS needs two)")


# --------------------------------------------------------------------------- sources


def raw_from_bag(bag: dict[str, Any], project: str = PROJECT) -> tuple[dict[str, Any], str | None]:
    """This project's keys (prefix removed) and the AWS region of a flat config bag."""
    return stackfiles.raw_from_bag(bag, project)


def from_pulumi(stack: str) -> PlatformConfig:
    """Inside a Pulumi program: read the whole stack config bag once and parse it."""
    raw, region = raw_from_bag(stackfiles.pulumi_config_bag())
    return parse(raw, stack=stack, region=region)


def load_stack_file(project_dir: Path, stack: str) -> PlatformConfig:
    raw, region = raw_from_bag(read_stack_bag(project_dir, stack))
    return parse(raw, stack=stack, region=region)
