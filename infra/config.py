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
import math
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
    family: str  # trn1 | trn1n | trn2 | trn3 | inf2 | cpu
    instance_types: tuple[str, ...]
    max_nodes: int
    capacity_types: tuple[str, ...] = ("on-demand",)
    efa: bool = False
    capacity_reservation_ids: tuple[str, ...] = ()
    capacity_block_ids: tuple[str, ...] = ()  # Capacity Blocks for ML (capacity type capacity-block)
    lnc: int | None = None  # Logical NeuronCore setting; None where the family has none
    root_volume_gib: int = 0  # 0: family default
    consolidate_after: str = "10m"
    # Accelerator pools never disrupt running pods except when empty; this is how many
    # empty nodes may be removed at once.
    disruption_budget_nodes: str = "10%"

    @property
    def is_accelerator(self) -> bool:
        return self.family != "cpu"

    @property
    def uses_reservations(self) -> bool:
        """Launches into capacity reservations (ODCRs or Capacity Blocks)."""
        return bool({"reserved", "capacity-block"} & set(self.capacity_types))

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
    # alerts: serving p99 time to first token (queue wait + prefill) and time per output token
    # above these; both independent of how many tokens a request generates.
    serving_ttft_p99_seconds: float = 10.0
    serving_tpot_p99_seconds: float = 0.5
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

FAMILIES = catalog.families()
# `reserved`: On-Demand Capacity Reservations; `capacity-block`: Capacity Blocks for ML. Both
# are Karpenter's `reserved` capacity type (infra/nodepools.py).
CAPACITY_TYPES = ("on-demand", "spot", "reserved", "capacity-block")
# Families whose multi-node pools always get EFA (multi-node training on them runs over it).
EFA_MULTI_NODE_FAMILIES = ("trn2", "trn3")
NAT_MODES = ("single", "per-az")
IDENTITY_MODES = ("pod-identity", "irsa")
ENVIRONMENTS = ("dev", "staging", "prod")
ECR_DEFAULT = ("compile", "serve", "nemo", "ray-train", "finetune")
OFFERINGS_FILE = "infra/data/offerings-snapshot.json"  # the offline offerings (scripts/offerings_snapshot.py)

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
NAME_MAX = 40  # cluster and pool names: room for the suffixes of the IAM roles, queues and LTs named after them
# Karpenter NodePool spec.disruption.budgets[].nodes (infra/schemas/karpenter.sh_v1_nodepool.json).
_BUDGET_NODES = re.compile(r"^((100|[0-9]{1,2})%|[0-9]+)$")
# ECR CreateRepository repositoryName (ECR API reference): lowercase path segments, 2-256 characters.
_ECR_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
# Kubernetes object names: a PVC is a DNS-1123 subdomain, a namespace a DNS-1123 label.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MOUNT_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
# Mounting FSx on these would hide what the container image needs; below the first group
# (kernel filesystems, binaries, libraries, configuration) nothing may be mounted either.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr")
SYSTEM_PATHS = (*SYSTEM_TREES, "/home", "/opt", "/root", "/run", "/tmp", "/var")
# Tags the platform sets itself (infra/__main__.py), which the sweep and policies rely on.
RESERVED_TAG_KEYS = ("trn-platform/cluster", "trn-platform/environment", "managed-by")


def name_problem(value: str) -> str | None:
    """Cluster and pool names: the length and the characters are separate problems."""
    if len(value) > NAME_MAX:
        return f"{value!r} is {len(value)} characters; at most {NAME_MAX} are allowed"
    if not _NAME.match(value):
        return f"{value!r} must be lowercase letters, digits and '-' (starting and ending with a letter or digit)"
    return None


def mount_path_problem(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} must be an absolute path such as /shared"
    if not _MOUNT_PATH.match(value) or any(part in (".", "..") for part in value.split("/")):
        return f"{value!r} must be a plain absolute directory such as /shared (no '/', '..' or trailing '/')"
    if value in SYSTEM_PATHS or any(value.startswith(tree + "/") for tree in SYSTEM_TREES):
        return f"{value!r} is inside a system directory of the container; use a path such as /shared"
    return None


def s3_path_problem(value: str) -> str | None:
    bucket = value[len("s3://"):].split("/", 1)[0] if value.startswith("s3://") else ""
    if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
        return f"{value!r} must be s3://<bucket>[/<prefix>] with a valid bucket name"
    return None


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class SiblingStack:
    """What another stack file of the same project claims that must not collide with this one."""
    file: str
    cluster_name: str
    region: str | None
    vpc_cidr: str


def sibling_stacks(project_dir: Path, stack: str) -> list[SiblingStack]:
    """The other platform stack files next to `stack`, as much as a collision check needs (a
    sibling that does not even read is its own render's problem, not this one's)."""
    out = []
    for other in stackfiles.stacks_in(project_dir):
        if other == stack:
            continue
        try:
            raw, region = raw_from_bag(read_stack_bag(project_dir, other))
        except ConfigError:
            continue
        network = raw.get("network") if isinstance(raw.get("network"), dict) else {}
        out.append(SiblingStack(f"Pulumi.{other}.yaml", str(raw.get("clusterName") or f"trn-{other}"), region,
                                str(network.get("vpcCidr") or NetworkConfig.vpc_cidr)))
    return out


def _check_siblings(stack: str, cluster_name: str, region: str, vpc_cidr: str, siblings: list[SiblingStack],
                    problems: list[str]) -> None:
    """A copied stack file keeps the original's clusterName (IAM roles, the budget and the SQS queue
    are named after it: IAM and Budgets names are account-wide, so a clash in any region fails) and
    its VPC CIDR (overlapping VPCs in one region cannot be peered or share a transit gateway)."""
    same_name = [s.file for s in siblings if s.cluster_name == cluster_name]
    if same_name:
        problems.append(f"clusterName: {cluster_name!r} is also the cluster name of {', '.join(same_name)}: its IAM "
                        f"roles and budget would collide; set clusterName: trn-{stack} (or remove the key: that is the "
                        f"default)")
    try:
        mine = ipaddress.ip_network(vpc_cidr)
    except ValueError:
        return  # reported by the network section
    taken = []
    for s in siblings:
        try:
            if s.region == region and ipaddress.ip_network(s.vpc_cidr).overlaps(mine):
                taken.append(s)
        except ValueError:
            continue
    if taken:
        used = [ipaddress.ip_network(s.vpc_cidr) for s in siblings if s.region == region] + [mine]
        free = next((c for c in (ipaddress.ip_network(f"10.{i}.0.0/16") for i in range(40, 256))
                     if not any(c.overlaps(u) for u in used)), None)
        problems.append(f"network.vpcCidr: {vpc_cidr} overlaps the VPC of "
                        f"{', '.join(f'{s.file} ({s.vpc_cidr})' for s in taken)} in {region}; set network.vpcCidr "
                        f"to a free range{f', e.g. {free}' if free else ''}")


def parse(raw: dict[str, Any], *, stack: str, region: str | None,
          siblings: list[SiblingStack] = ()) -> PlatformConfig:
    """Turn the raw project config (keys without the project prefix) into a PlatformConfig;
    `siblings` are the project's other stack files (load_stack_file passes them)."""
    problems: list[str] = []
    if not region:
        problems.append("aws:region: required key is missing; set it with `pulumi config set aws:region us-west-2`")
        region = ""
    root = ConfigReader(raw, "", problems)

    environment = root.get("environment", str, "dev", allowed=ENVIRONMENTS)
    cluster_name = root.get("clusterName", str, f"trn-{stack}", check=name_problem)
    # An unquoted kubernetesVersion: 1.30 (the number 1.3) is told to quote it as written (ConfigReader).
    k8s_version = root.get("kubernetesVersion", str, versions.SUPPORTED_KUBERNETES_VERSIONS[-1],
                           allowed=versions.SUPPORTED_KUBERNETES_VERSIONS)
    identity = root.get("identity", str, "pod-identity", allowed=IDENTITY_MODES)

    network = _parse_network(root.get("network", dict, {}), problems)
    endpoint = _parse_endpoint(root.get("endpoint", dict, {}), problems)
    system_nodes = _parse_system_nodes(root.get("systemNodes", dict, {}), problems)
    # An unknown region is reported once (below); its pools are not also told their family is missing there.
    known_region = region if region in catalog.known_regions() else ""
    pools, pools_complete = _parse_pools(root.get("nodePools", list, None, required=True), known_region, problems)
    fsx = _parse_fsx(root.get("fsx", dict, {}), problems)
    ecr = root.str_list("ecrRepositories", ECR_DEFAULT)
    _check_ecr_names(ecr, cluster_name, problems)
    presets = root.str_list("workloadPresets", (), allowed=tuple(sorted(catalog.WORKLOAD_CAPACITY)))
    budget = _parse_budget(root.get("budget", dict, None), problems)
    tags = _parse_tags(root.get("tags", dict, {}), problems)
    monitoring = _parse_monitoring(root.get("monitoring", dict, {}), budget, region, problems)
    root.finish()

    if region and not known_region:
        problems.append(f"aws:region: {region!r} has no offering data here: EC2 offers no trn1, trn1n, trn2 or inf2 type there "
                        f"as recorded in {OFFERINGS_FILE}; supported regions: {', '.join(catalog.known_regions())}; "
                        f"choose one of them, or, if EC2 offers Trainium/Inferentia there now, extend {OFFERINGS_FILE} "
                        f"(scripts/offerings_snapshot.py regenerates it)")
    if pools_complete:
        _check_presets_fit(presets, pools, problems)
    _check_azs(network, region, pools, problems)
    if siblings and cluster_name:
        _check_siblings(stack, cluster_name, region, network.vpc_cidr, list(siblings), problems)

    if problems:
        raise ConfigError(problems, f"config for stack {stack!r} (Pulumi.{stack}.yaml)")
    return PlatformConfig(
        stack=stack, region=region, environment=environment, cluster_name=cluster_name,
        kubernetes_version=k8s_version, network=network, endpoint=endpoint, identity=identity,
        system_nodes=system_nodes, node_pools=tuple(pools), fsx=fsx, ecr_repositories=ecr,
        workload_presets=presets, budget=budget, tags=tags, monitoring=monitoring,
    )


def _check_ecr_names(names: tuple[str, ...], cluster_name: str, problems: list[str]) -> None:
    for i, name in enumerate(names):
        full = f"{cluster_name}/{name}"
        if not _ECR_NAME.match(name) or not 2 <= len(full) <= 256:
            problems.append(f"ecrRepositories[{i}]: {name!r} is not an ECR repository name; use lowercase letters, "
                            "digits and . _ - / between them (the repository is <clusterName>/<name>, 2-256 characters)")
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"ecrRepositories: {dup!r} is listed more than once")


def _parse_tags(data: dict, problems: list[str]) -> dict[str, str]:
    """AWS tags: string keys (1-128, not `aws:`, not the platform's own) and scalar values (<= 256)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        where = f"tags.{key}"
        if not isinstance(key, str) or not 1 <= len(key) <= 128:
            problems.append(f"{where}: tag keys must be strings of 1 to 128 characters")
        elif key.lower().startswith("aws:"):
            problems.append(f"{where}: keys starting with 'aws:' are reserved by AWS")
        elif key in RESERVED_TAG_KEYS:
            problems.append(f"{where}: the platform sets this tag itself (reserved: {', '.join(RESERVED_TAG_KEYS)})")
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problems.append(f"{where}: expected a string value, got {type(value).__name__} {value!r}")
        elif len(str(value)) > 256:
            problems.append(f"{where}: tag values are at most 256 characters")
        else:
            out[key] = str(value)
    return out


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
        # gp3 root: the EKS AL2023 AMI needs 20 GiB, gp3 allows at most 16384.
        disk_size_gib=r.get("diskSizeGiB", int, SystemNodesConfig.disk_size_gib,
                            check=lambda v: None if 20 <= v <= 16384 else f"{v} is not allowed; must be 20 to 16384"),
    )
    r.finish()
    if not (1 <= cfg.min_size <= cfg.desired_size <= cfg.max_size):
        problems.append(f"systemNodes: need 1 <= minSize <= desiredSize <= maxSize, got {cfg.min_size}/{cfg.desired_size}/{cfg.max_size}")
    return cfg


def _family_of(instance_type: str) -> str | None:
    return next((f for f in FAMILIES if instance_type in catalog.instance_types_of(f)), None)


def _parse_pools(items: list | None, region: str, problems: list[str]) -> tuple[list[NodePoolConfig], bool]:
    """The valid pools, and whether every configured pool is among them (checks across pools
    would report nonsense about a pool that was left out for its own errors)."""
    pools: list[NodePoolConfig] = []
    complete = True
    missing_family: dict[str, list[str]] = {}  # family not offered in the region -> its pools (one message)
    for i, item in enumerate(items or []):
        r = ConfigReader(item, f"nodePools[{i}]", problems)
        name = r.get("name", str, f"pool-{i}", required=True, check=name_problem)
        family = r.get("family", str, "cpu", required=True, allowed=FAMILIES)
        allowed_types = catalog.instance_types_of(family)
        # A family without instance types (trn3) is reported once, below, with the reason; a type of
        # another family is one mistake with two fixes, said in one message.
        types = r.str_list("instanceTypes", (), required=True)
        for j, t in enumerate(types):
            if allowed_types and t not in allowed_types:
                other = _family_of(t)
                fix = f"; or set family: {other}" if other else ""
                problems.append(f"nodePools[{i}].instanceTypes[{j}]: {t!r} is not allowed for family {family}"
                                f"{f' (it is a type of family {other})' if other else ''}; allowed values: {', '.join(allowed_types)}{fix}")
        types = tuple(t for t in types if not allowed_types or t in allowed_types)
        # None when missing or invalid (already reported): later checks must not echo a made-up 0.
        max_nodes = r.get("maxNodes", int, None, required=True,
                          check=lambda v: None if 1 <= v <= 64 else f"{v} is not allowed; must be 1 to 64")
        capacity = r.str_list("capacityTypes", ("on-demand",), allowed=CAPACITY_TYPES)
        efa_default = family in EFA_MULTI_NODE_FAMILIES and (max_nodes or 0) > 1
        efa = r.get("efa", bool, efa_default)
        reservations = r.str_list("capacityReservationIds")
        blocks = r.str_list("capacityBlockIds")
        lnc_setting = catalog.family_lnc(family)
        lnc = r.get("lnc", int, lnc_setting.default if lnc_setting else None,
                    check=lambda v, fam=family: _lnc_problem(fam, v))
        root_gib = r.get("rootVolumeGiB", int, 0, check=lambda v: None if v == 0 or 20 <= v <= 16384 else "must be 20 to 16384")
        consolidate_after = r.get("consolidateAfter", str, "10m",
                                  check=lambda v: None if _DURATION.match(v) else "must be a duration such as 30s, 10m, 1h or Never")
        budget_nodes = r.get("disruptionBudgetNodes", str, "10%",
                             check=lambda v: None if _BUDGET_NODES.match(v) else
                             f"{v!r} is not allowed; a node count such as 1 or a percentage such as 10%")
        r.finish()
        where = f"nodePools[{i}] ({name})"
        if not allowed_types and catalog.family_not_offered(family):
            usable = [f for f in FAMILIES if catalog.instance_types_of(f)]
            problems.append(f"{where}.family: {family} cannot be used: {catalog.family_not_offered(family)}; "
                            f"families with instance types: {', '.join(usable)}")
            complete = False
            continue
        if not types or max_nodes is None:
            if isinstance(item, dict) and item.get("instanceTypes") == []:  # not when its entries were refused above
                problems.append(f"{where}.instanceTypes: must not be empty; allowed for {family}: {', '.join(allowed_types)}")
            complete = False
            continue
        if family in EFA_MULTI_NODE_FAMILIES and max_nodes > 1 and not efa:
            problems.append(f"{where}.efa: false is not allowed for a multi-node {family} pool (maxNodes {max_nodes}): "
                            f"its nodes train together over EFA; set efa: true or maxNodes: 1")
        _check_capacity(where, types, capacity, reservations, blocks, problems)
        if efa:
            no_efa = [t for t in types if catalog.instance_type(t).efa_interfaces == 0]
            if no_efa:
                with_efa = [t for t in allowed_types if catalog.instance_type(t).efa_interfaces > 0]
                allowed_efa = ", ".join(with_efa) or "none for " + family
                problems.append(f"{where}.efa: {', '.join(no_efa)} have no EFA interfaces; EFA pools allow: {allowed_efa}")
        for key, ids in (("capacityReservationIds", reservations), ("capacityBlockIds", blocks)):
            for j, rid in enumerate(ids):
                if not re.match(r"^cr-[0-9a-f]{8,17}$", rid):
                    problems.append(f"{where}.{key}[{j}]: {rid!r} is not a capacity reservation id (cr-...)")
        for rid in sorted(set(reservations) & set(blocks)):
            problems.append(f"{where}.capacityBlockIds: {rid} is also in capacityReservationIds; list it once "
                            f"(capacityBlockIds for Capacity Blocks, capacityReservationIds for other ODCRs)")
        # A family EC2 gives no facts for (trn3) has no recorded regions: preflight's live
        # DescribeInstanceTypeOfferings decides, not this offline check.
        if region and not catalog.family_unverified(family) and not catalog.family_in_region(family, region):
            missing_family.setdefault(family, []).append(f"nodePools[{i}] ({name})")
        pools.append(NodePoolConfig(
            name=name, family=family, instance_types=types, max_nodes=max_nodes, capacity_types=capacity,
            efa=efa, capacity_reservation_ids=reservations, capacity_block_ids=blocks, lnc=lnc,
            root_volume_gib=root_gib, consolidate_after=consolidate_after, disruption_budget_nodes=budget_nodes,
        ))
    if missing_family:  # one mistake (the region), one message, however many pools and families it hits
        where = [w for ws in missing_family.values() for w in ws]
        offering = [f"{family} in {', '.join(catalog.family_regions(family))}" for family in missing_family]
        every = [r for r in catalog.known_regions() if all(catalog.family_in_region(f, r) for f in missing_family)]
        problems.append(f"{', '.join(where)}.family: {', '.join(missing_family)} not offered in {region} "
                        f"({OFFERINGS_FILE}); offered: {'; '.join(offering)}; remove "
                        f"{'this pool' if len(where) == 1 else 'these pools'} or set aws:region to one offering "
                        f"{'it' if len(missing_family) == 1 else 'all of them'}: {', '.join(every) or 'none'}")
    names = [p.name for p in pools]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"nodePools: name {dup!r} is used more than once")
    if items is not None and complete and not any(p.family == "cpu" for p in pools):
        problems.append("nodePools: at least one pool with family 'cpu' is required (data preparation, Ray heads)")
    return pools, complete


def _lnc_problem(family: str, value: int) -> str | None:
    setting = catalog.family_lnc(family)
    if setting is None:
        with_lnc = [f for f in FAMILIES if catalog.family_lnc(f)]
        return (f"{family} has no Logical NeuronCore setting (LNC applies to {', '.join(with_lnc)}); "
                f"remove the key")
    if value not in setting.allowed:
        return (f"{value!r} is not allowed for {family}; allowed values: {', '.join(map(str, setting.allowed))} "
                f"(default {setting.default})")
    return None


def _check_capacity(where: str, types: tuple[str, ...], capacity: tuple[str, ...], reservations: tuple[str, ...],
                    blocks: tuple[str, ...], problems: list[str]) -> None:
    """Capacity types the pool's instance types are sold as (EC2 SupportedUsageClasses), and
    the reservation ids each reserved capacity type needs."""
    for usage in ("spot", "capacity-block"):
        if usage not in capacity:
            continue
        without = [t for t in types if usage not in catalog.instance_type(t).usage_classes]
        if without:
            # types whose usage classes EC2 confirmed (Trn3's are left open, unverified)
            offering = sorted(t for f in FAMILIES for t in catalog.instance_types_of(f)
                              if usage in catalog.instance_type(t).usage_classes and f != "cpu"
                              and "usageClasses" not in catalog.instance_type(t).unverified)
            problems.append(f"{where}.capacityTypes: {usage} is not offered for {', '.join(without)}; "
                            f"accelerator types sold as {usage}: {', '.join(offering)}")
    if "reserved" in capacity and not reservations:
        problems.append(f"{where}.capacityReservationIds: required when capacityTypes contains 'reserved'")
    if reservations and "reserved" not in capacity:
        problems.append(f"{where}.capacityTypes: must contain 'reserved' when capacityReservationIds are given")
    if "capacity-block" in capacity and not blocks:
        problems.append(f"{where}.capacityBlockIds: required when capacityTypes contains 'capacity-block' "
                        f"(the cr-... ids of your Capacity Blocks for ML)")
    if blocks and "capacity-block" not in capacity:
        problems.append(f"{where}.capacityTypes: must contain 'capacity-block' when capacityBlockIds are given")


def _parse_fsx(data: dict, problems: list[str]) -> FsxConfig:
    r = ConfigReader(data, "fsx", problems)
    dtype = r.get("deploymentType", str, FsxConfig.deployment_type, allowed=tuple(FSX_RULES))
    capacity = r.get("storageCapacityGiB", int, FsxConfig.storage_capacity_gib)
    throughput = r.get("perUnitStorageThroughput", int, FsxConfig.per_unit_storage_throughput)
    s3_path = r.get("s3ImportPath", str, None, check=s3_path_problem)
    compression = r.get("dataCompression", str, "LZ4", allowed=("LZ4", "NONE"))
    mount = r.get("mountPath", str, "/shared", check=mount_path_problem)
    # The PV is named <pvcName>-pv: both must be DNS-1123 subdomains (<= 253 characters).
    pvc = r.get("pvcName", str, FsxConfig.pvc_name, check=lambda v: None if _DNS_SUBDOMAIN.match(v) and len(v) <= 250
                else f"{v!r} is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 250)")
    ns = r.get("pvcNamespace", str, FsxConfig.pvc_namespace, check=lambda v: None if _DNS_LABEL.match(v) and len(v) <= 63
               else f"{v!r} is not a namespace name (lowercase letters, digits and '-', at most 63)")
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
                  check=lambda v: None if math.isfinite(v) and v > 0 else f"{v!r} is not allowed; must be a positive amount")
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
    if isinstance(data, dict) and "servingP99LatencySeconds" in data:
        # End-to-end latency grows with the output length; the serving alerts use per-token figures.
        problems.append("monitoring.servingP99LatencySeconds: replaced by servingTimeToFirstTokenP99Seconds (default 10) "
                        "and servingTimePerOutputTokenP99Seconds (default 0.5); remove the key")
        data = {k: v for k, v in data.items() if k != "servingP99LatencySeconds"}
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
        serving_ttft_p99_seconds=r.get("servingTimeToFirstTokenP99Seconds", float, d.serving_ttft_p99_seconds,
                                       check=lambda v: None if 0 < v <= 600 else "must be greater than 0 and at most 600"),
        serving_tpot_p99_seconds=r.get("servingTimePerOutputTokenP99Seconds", float, d.serving_tpot_p99_seconds,
                                       check=lambda v: None if 0 < v <= 60 else "must be greater than 0 and at most 60"),
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
    bag = stackfiles.pulumi_config_bag()
    stackfiles.check_namespaces(bag, PROJECT)
    raw, region = raw_from_bag(bag)
    return parse(raw, stack=stack, region=region)


def load_stack_file(project_dir: Path, stack: str) -> PlatformConfig:
    """A stack file as the offline tools read it, compared with the other stack files next to it."""
    raw, region = raw_from_bag(read_stack_bag(project_dir, stack))
    return parse(raw, stack=stack, region=region, siblings=sibling_stacks(project_dir, stack))
