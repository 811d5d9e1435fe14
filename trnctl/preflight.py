"""Preflight: catch, before `pulumi up`, what would otherwise fail late or leave pools empty.

    trnctl preflight <stack> [--project-dir .] [--workloads-dir workloads]

With the caller's AWS credentials (boto3 default chain; AWS_ENDPOINT_URL honoured) it
checks, for the platform stack `<stack>` and every workload stack in `--workloads-dir`
whose `platformStack` points at it:

  credentials and region   STS GetCallerIdentity, EC2 DescribeRegions
  api endpoint             this machine's public IP (https://checkip.amazonaws.com) inside
                           endpoint.publicAccessCidrs, or a warning for a private-only endpoint
  availability zones       EC2 DescribeInstanceTypeOfferings by AZ ID, per node pool, with
                           the same AZ choice as the program (`infra.network.choose_az_ids`)
  vCPU quotas              Service Quotas GetServiceQuota for the Trn/Inf (and Standard)
                           On-Demand and Spot quotas against the pools' Karpenter limits
  capacity reservations    EC2 DescribeCapacityReservations: exists, active, type, AZ
  Neuron capacity          EC2 DescribeInstanceTypes: each accelerator type reports NeuronInfo
                           (Karpenter sizes aws.amazon.com/neuron from it)
  catalog facts            the same answer against the catalog's unverified facts (Trn3)
  Capacity Blocks          the same call for each capacityBlockIds entry: a Capacity Block,
                           started and not ended (dates printed), instance type, AZ, its
                           prepaid cost at the price file's block rate, and when runs on it
                           must stop (trnctl/operators/karpenter.py)
  workload images          ECR DescribeImages: the repository and the tag/digest exist
  Hugging Face token       set as a secret where the workload downloads from the Hub

It prints one table (check, status, detail, fix) and exits 1 when any row is FAIL.
Preflight only reads: its clients refuse every non Describe/Get/List call before it is sent.

Layout: pure functions turn API responses (plain dicts) into `Finding`s; the `fetch_*`
functions are the only ones that talk to AWS; `run_preflight` strings them together.
"""
from __future__ import annotations

import argparse
import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from trnctl import exitcodes
from infra import catalog, network
from trnctl import aws_ops, cost
from trnctl.operators import karpenter
from infra.config import NodePoolConfig, PlatformConfig, load_stack_file
from stackfiles import ConfigError, raw_from_bag, read_stack_bag, stack_argument, stack_file, stacks_in
from stackfiles.placeholders import Placeholder, find_placeholders

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # PASS | WARN | FAIL
    detail: str
    fix: str = ""


# EC2 vCPU quotas (Service Quotas, service code "ec2"). Codes as listed by
# `aws service-quotas list-service-quotas --service-code ec2` and the EC2 user guide
# ("On-Demand Instance quotas", "Spot Instance quotas"). Reserved capacity is checked
# through its reservation, not here.
QUOTA_CODES: dict[tuple[str, str], tuple[str, str]] = {
    ("Trn", "on-demand"): ("L-2C3B7624", "Running On-Demand Trn instances"),
    ("Trn", "spot"): ("L-6B0D517C", "All Trn Spot Instance Requests"),
    ("Inf", "on-demand"): ("L-1945791B", "Running On-Demand Inf instances"),
    ("Inf", "spot"): ("L-B5D1601B", "All Inf Spot Instance Requests"),
    ("Standard", "on-demand"): ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
    ("Standard", "spot"): ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"),
}
QUOTA_GROUP = {"trn1": "Trn", "trn1n": "Trn", "trn2": "Trn", "trn3": "Trn", "inf2": "Inf", "cpu": "Standard"}
# Capacity types that launch into reservations, not against the On-Demand/Spot vCPU quotas.
RESERVATION_CAPACITY_TYPES = ("reserved", "capacity-block")
# A block ending this soon still passes, with a warning. When its nodes are drained and reclaimed
# (Karpenter from 40 minutes before the end, EC2 from 30, or 60 on UltraServer types) is
# trnctl/operators/karpenter.py.
BLOCK_ENDING_SOON = timedelta(hours=24)
# A short Standard quota slows CPU pools down but leaves the accelerators usable: warn only.
BLOCKING_QUOTA_GROUPS = ("Trn", "Inf")

# What the workloads download from the Hugging Face Hub unless given a /shared path
# (defaults of workloads/nemo.py, ray_pretrain.py and lora.py).
HUB_REFERENCE_DEFAULT = "meta-llama/Llama-2-7b-hf"


# --------------------------------------------------------------------------- pure: credentials and region


def identity_findings(identity: dict | None, region: str, region_info: dict | None, error: str | None) -> list[Finding]:
    """STS GetCallerIdentity answer (or the error) and the DescribeRegions entry of `region`."""
    if identity is None:
        return [Finding("credentials", FAIL, error or "no credentials found",
                        "configure credentials (`aws configure sso`, AWS_PROFILE or AWS_ACCESS_KEY_ID/...) "
                        "for the account that will hold the stack")]
    out = [Finding("credentials", PASS, f"account {identity['Account']} as {identity['Arn']}")]
    if region_info is None and error:
        out.append(Finding("region", FAIL, f"{region} could not be checked: {error}",
                           "allow ec2:DescribeRegions (and the other Describe calls preflight makes)"))
    elif region_info is None:
        out.append(Finding("region", FAIL, f"{region} is not an EC2 region of this account",
                           "set aws:region in the stack file to a region where trn1/inf2 are offered"))
    elif region_info.get("OptInStatus") == "not-opted-in":
        out.append(Finding("region", FAIL, f"{region} is an opt-in region that is not enabled",
                           f"enable it: `aws account enable-region --region-name {region}`"))
    else:
        out.append(Finding("region", PASS, region))
    return out


# --------------------------------------------------------------------------- pure: API endpoint reachability

# The documentation range the example stack files use (RFC 5737 TEST-NET-3): nobody's real address.
EXAMPLE_CIDR = "203.0.113.0/24"
CHECKIP_URL = "https://checkip.amazonaws.com"  # AWS's own "what is my IP" service


def endpoint_finding(cfg: PlatformConfig, caller_ip: str | None, error: str | None = None) -> Finding:
    """Can this machine reach the cluster's API endpoint once it exists? `pulumi up` itself
    needs it (Helm releases, manifests), so does kubectl. `caller_ip` is this machine's public
    IP as AWS sees it, or None with `error` when the lookup failed."""
    ep, check = cfg.endpoint, "api endpoint"
    fix_key = f"endpoint.publicAccessCidrs in Pulumi.{cfg.stack}.yaml"
    if not ep.public_access:
        return Finding(check, WARN, "the API endpoint is private only: `pulumi up` (Helm releases, manifests) and "
                                    "kubectl must run from a network that reaches the VPC",
                       "run pulumi from inside the VPC (VPN, Direct Connect, a bastion), or set endpoint.publicAccess: "
                       f"true with your egress CIDR in {fix_key}")
    if caller_ip is None:
        return Finding(check, WARN, f"this machine's public IP could not be determined ({error}); allowed: "
                                    f"{', '.join(ep.public_access_cidrs)}",
                       f"compare `curl {CHECKIP_URL}` with {fix_key}")
    ip = ipaddress.ip_address(caller_ip)
    allowed = [c for c in ep.public_access_cidrs if ip in ipaddress.ip_network(c, strict=False)]
    if allowed:
        return Finding(check, PASS, f"this machine ({ip}) is inside {', '.join(allowed)}")
    placeholder = (f" ({EXAMPLE_CIDR} is the example range of the stack file, not a real network)"
                   if EXAMPLE_CIDR in ep.public_access_cidrs else "")
    return Finding(check, FAIL, f"this machine ({ip}) is outside endpoint.publicAccessCidrs "
                                f"{', '.join(ep.public_access_cidrs)}{placeholder}: `pulumi up` would time out "
                                "talking to the cluster",
                   f"add {ip}/32 (or your office/VPN egress range) to {fix_key}, e.g. `pulumi config set --path "
                   f"'endpoint.publicAccessCidrs[0]' {ip}/32 -s {cfg.stack}`; or run from inside the allowed range")


def lookup_public_ip(url: str = CHECKIP_URL, timeout: float = 5.0) -> str:
    """This machine's public IP as seen from AWS (checkip answers with the bare address)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL or a test server)
        text = resp.read(64).decode().strip()
    ipaddress.ip_address(text)  # refuse anything that is not an address
    return text


# --------------------------------------------------------------------------- pure: AZ offerings


def offering_findings(cfg: PlatformConfig, offerings: dict[str, set[str]],
                      live_zone_ids: set[str]) -> tuple[list[Finding], list[str]]:
    """Which AZ IDs offer each pool's types, and whether the AZs `pulumi up` will use do.

    Returns the findings and the AZ IDs the program will use (configured, or chosen the
    way `infra.network.choose_az_ids` chooses them).
    """
    region_zone_ids = list(catalog.zone_ids(cfg.region))
    explicit = list(cfg.network.availability_zone_ids)
    findings: list[Finding] = []
    try:
        chosen = network.choose_az_ids(offerings, cfg.node_pools, cfg.network, region_zone_ids)
        how = "configured in network.availabilityZoneIds" if explicit else f"chosen by offering, azCount {cfg.network.az_count}"
        status, detail, fix = PASS, f"{', '.join(chosen)} ({how})", ""
    except ConfigError as err:
        chosen = explicit or region_zone_ids
        status = FAIL
        detail = (f"configured {', '.join(explicit)}: not every accelerator pool has an AZ offering its types"
                  if explicit else "; ".join(err.problems))
        fix = ("set network.availabilityZoneIds (two or more AZ IDs) so that every accelerator pool has one "
               "offering its types (see the pool rows)")
    missing = [az for az in chosen if az not in live_zone_ids]
    if missing and status == PASS:
        status, detail = FAIL, f"{', '.join(missing)} not available to this account in {cfg.region}"
        fix = f"use AZ IDs from `aws ec2 describe-availability-zones --region {cfg.region}`"
    findings.append(Finding("availability zones", status, detail, fix))

    for pool in cfg.node_pools:
        findings.append(_pool_offering_finding(pool, offerings, chosen, cfg.region))
    return findings, chosen


def _pool_offering_finding(pool: NodePoolConfig, offerings: dict[str, set[str]], chosen: list[str],
                           region: str) -> Finding:
    check = f"offerings: {pool.name}"
    where = {t: sorted(offerings.get(t, set())) for t in pool.instance_types}
    zones = network.pool_zone_ids(pool, offerings, chosen)
    offered_text = "; ".join(f"{t} in {', '.join(z) or 'no AZ of ' + region}" for t, z in where.items())
    if not zones:
        anywhere = sorted({az for z in where.values() for az in z})
        fix = (f"add one of {', '.join(anywhere)} to network.availabilityZoneIds" if anywhere else
               f"{'/'.join(pool.instance_types)} is not offered in {region}; use a region listed for {pool.family} "
               f"({', '.join(catalog.family_regions(pool.family))}) or other instance types")
        return Finding(check, FAIL, f"no chosen AZ ({', '.join(chosen)}) offers the pool's types: {offered_text}", fix)
    never = [t for t, z in where.items() if not set(z) & set(chosen)]
    if never:
        return Finding(check, WARN, f"{', '.join(never)} not offered in the chosen AZs; {offered_text}",
                       f"remove {', '.join(never)} from nodePools ({pool.name}).instanceTypes or add an AZ offering it")
    return Finding(check, PASS, f"AZ IDs {', '.join(zones)}: {offered_text}")


# --------------------------------------------------------------------------- pure: quotas


def quota_needs(cfg: PlatformConfig) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """vCPU each (quota group, capacity type) may reach: the pools' Karpenter cpu limits
    (max_nodes x vCPU of the largest type) and the system node group at its max size.

    A pool allowing both on-demand and spot may reach its limit in either, so it counts in both.
    """
    needs: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for pool in cfg.node_pools:
        for capacity in pool.capacity_types:
            if capacity not in RESERVATION_CAPACITY_TYPES:
                needs[(QUOTA_GROUP[pool.family], capacity)].append((pool.name, int(pool.limits["cpu"])))
    system_vcpu = max(catalog.instance_type(t).vcpu for t in cfg.system_nodes.instance_types)
    needs[("Standard", "on-demand")].append(("system nodes", system_vcpu * cfg.system_nodes.max_size))
    return dict(needs)


def quota_findings(needs: dict[tuple[str, str], list[tuple[str, int]]], quotas: dict[str, float | str],
                   region: str) -> list[Finding]:
    """`quotas` maps quota code to its value, or to an error text when it could not be read."""
    out = []
    for (group, capacity), users in sorted(needs.items()):
        code, name = QUOTA_CODES[(group, capacity)]
        need = sum(v for _, v in users)
        users_text = ", ".join(f"{n} {v}" for n, v in users)
        check = f"quota: {group} {capacity}"
        value = quotas.get(code, "not read")
        if isinstance(value, str):
            out.append(Finding(check, WARN, f"{name} ({code}) could not be read: {value}",
                               "allow servicequotas:GetServiceQuota, or compare in the Service Quotas console"))
        elif value < need:
            out.append(Finding(check, FAIL if group in BLOCKING_QUOTA_GROUPS else WARN,
                               f"{name} ({code}) is {value:g} vCPU; the pools may use {need} ({users_text})",
                               f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code "
                               f"{code} --desired-value {need} --region {region}; or lower maxNodes"))
        else:
            out.append(Finding(check, PASS, f"{name} ({code}) is {value:g} vCPU >= {need} ({users_text})"))
    return out


# --------------------------------------------------------------------------- pure: reservations


def reservation_findings(cfg: PlatformConfig, reservations: dict[str, dict | None], offerings: dict[str, set[str]],
                         chosen: list[str], zone_ids_by_name: dict[str, str]) -> list[Finding]:
    """`reservations` maps each configured id to its DescribeCapacityReservations entry, or None if absent."""
    out = []
    for i, pool in enumerate(cfg.node_pools):
        pool_zones = network.pool_zone_ids(pool, offerings, chosen)
        for j, rid in enumerate(pool.capacity_reservation_ids):
            key = f"nodePools[{i}] ({pool.name}).capacityReservationIds[{j}]"
            check = f"reservation: {rid}"
            res = reservations.get(rid)
            if res is None:
                out.append(Finding(check, FAIL, f"{key}: {rid} not found in {cfg.region} for this account",
                                   f"check the id and region (`aws ec2 describe-capacity-reservations "
                                   f"--capacity-reservation-ids {rid} --region {cfg.region}`) or remove it from {key}"))
                continue
            out.append(_reservation_finding(check, key, pool, res, pool_zones, zone_ids_by_name))
    return out


def _reservation_finding(check: str, key: str, pool: NodePoolConfig, res: dict, pool_zones: list[str],
                         zone_ids_by_name: dict[str, str]) -> Finding:
    kind = "Capacity Block" if res.get("ReservationType") == "capacity-block" else "capacity reservation"
    state, itype = res.get("State", "?"), res.get("InstanceType", "?")
    az_id = res.get("AvailabilityZoneId") or zone_ids_by_name.get(res.get("AvailabilityZone", ""), "?")
    problems, fixes = [], []
    status = PASS
    if state == "scheduled":
        status = WARN
        problems.append(f"{kind} not started yet (starts {res.get('StartDate', '?')})")
        fixes.append("pods needing it stay pending until it starts")
    elif state != "active":
        status = FAIL
        problems.append(f"state is {state!r}, not 'active'")
        fixes.append(f"renew or replace it, or remove it from {key}")
    if itype not in pool.instance_types:
        status = FAIL
        problems.append(f"it is for {itype}; the pool launches {', '.join(pool.instance_types)}")
        fixes.append(f"add {itype} to nodePools ({pool.name}).instanceTypes or use a reservation for the pool's types")
    if az_id not in pool_zones:
        status = FAIL
        problems.append(f"it is in {az_id} ({res.get('AvailabilityZone', '?')}); the pool's AZ IDs are "
                        f"{', '.join(pool_zones) or 'none'}")
        fixes.append(f"add {az_id} to network.availabilityZoneIds")
    if kind == "Capacity Block":
        fixes.append(f"list it under nodePools ({pool.name}).capacityBlockIds (capacity type capacity-block) "
                     f"to have its dates and cost checked")
    summary = (f"{kind} {state}, {itype} x{res.get('TotalInstanceCount', '?')} "
               f"({res.get('AvailableInstanceCount', '?')} free) in {az_id}")
    if res.get("EndDate"):
        summary += f", ends {res['EndDate']}"
    return Finding(check, status, "; ".join([summary] + problems), "; ".join(fixes))


# --------------------------------------------------------------------------- pure: Neuron capacity


def neuron_capacity_findings(cfg: PlatformConfig, neuron_info: dict[str, dict | None]) -> list[Finding]:
    """`neuron_info` maps each accelerator type to its DescribeInstanceTypes NeuronInfo (None:
    absent). Karpenter computes a type's aws.amazon.com/neuron and neuroncore capacity from it
    (karpenter-provider-aws v1.14.1 pkg/providers/instancetype/types.go, awsNeuronDevices):
    without it no pod asking for Neuron devices makes Karpenter launch that type."""
    out = []
    for pool in cfg.accelerator_pools:
        described = [t for t in pool.instance_types if t in neuron_info]
        missing = [t for t in described if not neuron_info[t]]
        check = f"neuron capacity: {pool.name}"
        if not described:
            out.append(Finding(check, WARN, f"EC2 could not describe {', '.join(pool.instance_types)} in {cfg.region}",
                               "see the offerings row of this pool"))
            continue
        if not missing:
            devices = {t: sum(d.get("Count", 0) for d in neuron_info[t].get("NeuronDevices", [])) for t in described}
            out.append(Finding(check, PASS, "; ".join(f"{t}: {n} Neuron devices" for t, n in devices.items())))
            continue
        status = FAIL if len(missing) == len(described) else WARN
        out.append(Finding(check, status, f"EC2 reports no NeuronInfo for {', '.join(missing)}: Karpenter sees no "
                                          f"aws.amazon.com/neuron on them and will not launch them for Neuron pods",
                           f"remove {', '.join(missing)} from nodePools ({pool.name}).instanceTypes, or ask AWS "
                           f"support whether the type is fully enabled for this account"))
    return out


# --------------------------------------------------------------------------- pure: unverified catalog facts


def ec2_facts(item: dict) -> dict[str, Any]:
    """A DescribeInstanceTypes entry as the catalog's keys (infra/data/instance_types.json)."""
    devices = (item.get("NeuronInfo") or {}).get("NeuronDevices", [])
    return {
        "vcpu": item.get("VCpuInfo", {}).get("DefaultVCpus"),
        "memoryGiB": item.get("MemoryInfo", {}).get("SizeInMiB", 0) // 1024,
        "neuronDevices": sum(d.get("Count", 0) for d in devices),
        "neuronCores": sum(d.get("Count", 0) * d.get("CoreInfo", {}).get("Count", 0) for d in devices),
        "efaInterfaces": (item.get("NetworkInfo", {}).get("EfaInfo") or {}).get("MaximumEfaInterfaces", 0),
        "instanceStoreGiB": (item.get("InstanceStorageInfo") or {}).get("TotalSizeInGB", 0),
        "usageClasses": sorted(item.get("SupportedUsageClasses", [])),
    }


def catalog_facts(t: catalog.InstanceType) -> dict[str, Any]:
    return {"vcpu": t.vcpu, "memoryGiB": t.memory_gib, "neuronDevices": t.neuron_devices, "neuronCores": t.neuron_cores,
            "efaInterfaces": t.efa_interfaces, "instanceStoreGiB": t.instance_store_gib,
            "usageClasses": sorted(t.usage_classes)}


def unverified_type_findings(cfg: PlatformConfig, described: dict[str, dict]) -> list[Finding]:
    """For pools using types whose catalog facts no EC2 answer confirmed (Trn3, named by Neuron's
    sources only): the live DescribeInstanceTypes answer against those facts. The pool's Karpenter
    limits, its EFA requests and the NeuronCores it exports are computed from them."""
    out = []
    for pool in cfg.accelerator_pools:
        for name in pool.instance_types:
            t = catalog.instance_type(name)
            if not t.unverified:
                continue
            check = f"catalog facts: {name}"
            if name not in described:
                out.append(Finding(check, WARN, f"EC2 does not describe {name} in {cfg.region}: its facts in the catalog "
                                                f"({', '.join(t.unverified)}) come from Neuron's sources only",
                                   "see the offerings row; run preflight again where EC2 offers the type"))
                continue
            ours, ec2 = catalog_facts(t), ec2_facts(described[name])
            # usageClasses: the catalog leaves them open; only the pool's capacity types must be sold.
            differ = {k: (ours[k], ec2[k]) for k in ours if k in t.unverified and k != "usageClasses" and ours[k] != ec2[k]}
            # "reserved" (an ODCR) is no EC2 usage class; the other capacity types are.
            unsold = [c for c in pool.capacity_types if c != "reserved" and c not in ec2["usageClasses"]]
            if not differ and not unsold:
                out.append(Finding(check, PASS, f"EC2 confirms the catalog's facts: {ec2['vcpu']} vCPU, {ec2['memoryGiB']} GiB, "
                                                f"{ec2['neuronDevices']} Neuron devices, {ec2['efaInterfaces']} EFA interfaces"))
                continue
            problems = [f"{k} {a} in the catalog, {b} from EC2" for k, (a, b) in differ.items()]
            if unsold:
                problems.append(f"EC2 sells it as {', '.join(ec2['usageClasses'])}, not {', '.join(unsold)}")
            out.append(Finding(check, FAIL, f"{name}: " + "; ".join(problems) + " (pool limits, EFA requests and exported "
                                             "NeuronCores are computed from the catalog)",
                               f"set {name} in infra/data/instance_types.json to EC2's answer and drop the confirmed keys "
                               f"from its `unverified` list" + (f"; remove {', '.join(unsold)} from nodePools ({pool.name})"
                                                                f".capacityTypes" if unsold else "")))
    return out


# --------------------------------------------------------------------------- pure: Capacity Blocks


def _when(value: Any) -> datetime | None:
    """A DescribeCapacityReservations date: a datetime from boto3, an ISO 8601 text in recordings."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _date_text(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if value else "?"


def _is_ultraserver(instance_type: str) -> bool:
    """An UltraServer type of the catalog (a type the catalog lacks is judged as an ordinary one:
    the pool row already fails on it)."""
    return instance_type in catalog.all_instance_types() and catalog.instance_type(instance_type).ultraserver


def capacity_block_findings(cfg: PlatformConfig, reservations: dict[str, dict | None], offerings: dict[str, set[str]],
                            chosen: list[str], zone_ids_by_name: dict[str, str], now: datetime) -> list[Finding]:
    """One finding per `capacityBlockIds` entry; `reservations` maps each id to its
    DescribeCapacityReservations entry (None: not found). A block that has not started or
    has ended blocks `pulumi up`: its pool could launch nothing."""
    out = []
    for i, pool in enumerate(cfg.node_pools):
        pool_zones = network.pool_zone_ids(pool, offerings, chosen)
        for j, rid in enumerate(pool.capacity_block_ids):
            key = f"nodePools[{i}] ({pool.name}).capacityBlockIds[{j}]"
            res = reservations.get(rid)
            if res is None:
                out.append(Finding(f"capacity block: {rid}", FAIL,
                                   f"{key}: {rid} not found in {cfg.region} for this account",
                                   f"check the id and region (`aws ec2 describe-capacity-reservations "
                                   f"--capacity-reservation-ids {rid} --region {cfg.region}`) or remove it from {key}"))
                continue
            out.append(_capacity_block_finding(rid, key, pool, res, pool_zones, zone_ids_by_name, now, cfg.region))
    return out


def _capacity_block_finding(rid: str, key: str, pool: NodePoolConfig, res: dict, pool_zones: list[str],
                            zone_ids_by_name: dict[str, str], now: datetime, region: str) -> Finding:
    check = f"capacity block: {rid}"
    if res.get("ReservationType") != "capacity-block":
        return Finding(check, FAIL, f"{key}: {rid} is a {res.get('ReservationType', 'default')} capacity reservation, "
                                    f"not a Capacity Block",
                       f"move it to nodePools ({pool.name}).capacityReservationIds with capacity type 'reserved'")
    state, itype = res.get("State", "?"), res.get("InstanceType", "?")
    start, end = _when(res.get("StartDate")), _when(res.get("EndDate"))
    az_id = res.get("AvailabilityZoneId") or zone_ids_by_name.get(res.get("AvailabilityZone", ""), "?")
    dates = f"{_date_text(start)} to {_date_text(end)}"
    ultraserver = _is_ultraserver(itype)
    stop_by = karpenter.stop_by_time(end, ultraserver) if end else None
    problems, fixes, status = [], [], PASS
    if start and now < start:
        status = FAIL
        problems.append(f"not started: it runs {dates} (state {state!r})")
        fixes.append(f"run `pulumi up` from {_date_text(start)}, or remove it from {key} until then")
    elif end and now >= end:
        status = FAIL
        problems.append(f"ended: it ran {dates} (state {state!r})")
        fixes.append(f"buy a new block (`aws ec2 describe-capacity-block-offerings --instance-type {itype}`) "
                     f"and replace {rid} in {key}")
    elif state != "active":
        status = FAIL
        problems.append(f"state is {state!r}, not 'active' ({dates})")
        fixes.append(f"check the block's payment and state, or remove it from {key}")
    elif end and ultraserver:
        # EC2 reclaims UltraServer blocks before Karpenter drains them: nothing stops the run in time.
        status = WARN
        reclaim, drain = karpenter.ec2_reclaim_time(end, True), karpenter.drain_time(end)
        problems.append(f"UltraServer block: EC2 terminates its instances from {_date_text(reclaim)}, before Karpenter "
                        f"drains them ({_date_text(drain)}): runs must checkpoint and stop by {_date_text(stop_by)}")
        fixes.append(f"end training runs on {pool.name} by {_date_text(stop_by)} (the last checkpoint before it is what "
                     f"survives), or buy an extension")
    elif end and end - now < BLOCK_ENDING_SOON:
        status = WARN
        problems.append(f"ends {_date_text(end)}: Karpenter drains its nodes from {_date_text(stop_by)}, EC2 terminates "
                        f"them from {_date_text(karpenter.ec2_reclaim_time(end, False))}")
        fixes.append(f"checkpoint and stop by {_date_text(stop_by)}, or buy an extension")
    if itype not in pool.instance_types:
        status = FAIL
        problems.append(f"it is for {itype}; the pool launches {', '.join(pool.instance_types)}")
        fixes.append(f"use a block of {'/'.join(pool.instance_types)} or add {itype} to "
                     f"nodePools ({pool.name}).instanceTypes")
    if az_id not in pool_zones:
        status = FAIL
        problems.append(f"it is in {az_id} ({res.get('AvailabilityZone', '?')}); the pool's AZ IDs are "
                        f"{', '.join(pool_zones) or 'none'}")
        fixes.append(f"add {az_id} to network.availabilityZoneIds")
    count = res.get("TotalInstanceCount", 0)
    if status == PASS and count > pool.max_nodes:
        status = WARN
        problems.append(f"the pool's maxNodes {pool.max_nodes} leaves {count - pool.max_nodes} of its {count} "
                        f"prepaid instances unused")
        fixes.append(f"set nodePools ({pool.name}).maxNodes to at least {count}")
    summary = f"Capacity Block {state}, {itype} x{count} in {az_id}, {dates}"
    if stop_by:
        summary += f", runs must stop by {_date_text(stop_by)}"
    if start and end:
        hours = (end - start).total_seconds() / 3600
        try:
            summary += (f", prepaid ${cost.capacity_block_cost(itype, count, hours, region):,.0f} "
                        f"({count} x {hours:g} h at the block rate of {cost.PRICES_FILE.name})")
        except cost.PriceError as err:
            summary += f" (not priced: {err})"
    return Finding(check, status, "; ".join([summary] + problems), "; ".join(fixes))


# --------------------------------------------------------------------------- workload stacks


@dataclass(frozen=True)
class ImageRef:
    repository: str  # key of the platform's ecrRepositories; the ECR name is <cluster>/<key>
    tag: str
    digest: str | None
    build: bool  # built and pushed by `pulumi up` of the workload stack


@dataclass(frozen=True)
class WorkloadRequirements:
    """What `pulumi up` of one workload stack needs to exist beforehand.

    `ecr_repo`, `tag`, `needs_hf_token`, `hf_token_set` are the workload's main image and
    token facts; `images` lists every image it pulls (compile+serve pulls two).
    """
    stack: str
    platform_stack: str  # the platform stack name (last part of trn-workloads:platformStack)
    images: tuple[ImageRef, ...]
    needs_hf_token: bool
    hf_token_set: bool
    problems: tuple[str, ...] = field(default=())  # config errors: reported, other checks skipped

    @property
    def ecr_repo(self) -> str:
        return self.images[0].repository if self.images else ""

    @property
    def tag(self) -> str:
        return self.images[0].tag if self.images else ""


def workload_requirements(project_dir: Path, stack: str) -> WorkloadRequirements:
    """Read `<project_dir>/Pulumi.<stack>.yaml` of the workloads project with the workloads'
    own parser (`workloads.config.parse`); `secure:` values count as secrets that are set."""
    from workloads import config as wconfig
    from workloads.errors import WorkloadConfigError

    bag = read_stack_bag(Path(project_dir), stack)
    raw, _ = raw_from_bag(bag, wconfig.PROJECT)
    secret_keys = set()
    placeholders = {p.key.partition(":")[2] for p in find_placeholders(Path(project_dir), stack)}
    for key, value in list(raw.items()):
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(f"{wconfig.PROJECT}:{key}")
            raw[key] = "<secret>"  # the parser only needs to know it is a set string
    try:
        cfg = wconfig.parse(raw, stack=stack, secret_keys=secret_keys)
    except WorkloadConfigError as err:
        platform = str(raw.get("platformStack", "")).rsplit("/", 1)[-1]
        return WorkloadRequirements(stack, platform, (), False, False, tuple(err.problems))
    images = [ImageRef(cfg.image.repository, cfg.image.tag, cfg.image.digest, cfg.image.build)]
    if cfg.workload == "compile" and cfg.section.get("serve") is not None:
        # workloads/compile.py serves the compiled model from the serve image at the same tag.
        images.append(ImageRef("serve", cfg.image.tag, None, cfg.image.build))
    return WorkloadRequirements(
        stack=stack, platform_stack=cfg.platform_stack.rsplit("/", 1)[-1], images=tuple(images),
        needs_hf_token=_downloads_from_hub(cfg.workload, cfg.section),
        hf_token_set=cfg.hf_token_set and "hfToken" not in placeholders)


def _downloads_from_hub(workload: str, section: dict[str, Any]) -> bool:
    """Whether the workload pulls a model or tokenizer from the Hub (a /shared path does not)."""
    if workload == "lora-finetune":
        ref = ((section.get("run") or {}).get("model") or {}).get("base", "")
    elif workload == "nemo-pretrain":
        ref = (section.get("data") or {}).get("tokenizer", HUB_REFERENCE_DEFAULT)
    elif workload == "ray-pretrain":
        ref = section.get("tokenizer", HUB_REFERENCE_DEFAULT)
    else:
        return False
    return not str(ref).startswith("/")


def workload_stacks_for(workloads_dir: Path, platform_stack: str) -> list[str]:
    """Workload stacks in `workloads_dir` whose platformStack names `platform_stack`."""
    out = []
    for stack in stacks_in(workloads_dir):
        bag = read_stack_bag(Path(workloads_dir), stack)
        ref = str(bag.get("trn-workloads:platformStack", ""))
        if ref.rsplit("/", 1)[-1] == platform_stack:
            out.append(stack)
    return out


def image_finding(stack: str, cluster_name: str, platform_stack: str, image: ImageRef, outcome: str,
                  detail: str) -> Finding:
    """`outcome` of DescribeImages: found | no-image | no-repository | error."""
    repo = f"{cluster_name}/{image.repository}"
    ref = f"{repo}@{image.digest}" if image.digest else f"{repo}:{image.tag}"
    check = f"image: {stack} ({image.repository})"
    if outcome == "found":
        return Finding(check, PASS, f"{ref} {detail}".strip())
    if outcome == "no-image":
        if image.build and not image.digest:
            return Finding(check, PASS, f"{ref} not pushed yet; `pulumi up` builds and pushes it (image.build: true)")
        return Finding(check, FAIL, f"{ref} is not in ECR",
                       f"build and push images/{image.repository} as {ref}, or set trn-workloads:image.build: true "
                       f"in workloads/Pulumi.{stack}.yaml")
    if outcome == "no-repository":
        return Finding(check, WARN, f"ECR repository {repo} does not exist yet",
                       f"`pulumi up` the platform stack {platform_stack} first (it creates {repo})")
    return Finding(check, WARN, f"{ref} could not be checked: {detail}", "allow ecr:DescribeImages")


def hf_token_finding(req: WorkloadRequirements) -> Finding:
    check = f"hf token: {req.stack}"
    if not req.needs_hf_token:
        return Finding(check, PASS, "not needed: nothing is downloaded from the Hub (model/tokenizer on /shared or none)")
    if req.hf_token_set:
        return Finding(check, PASS, "trn-workloads:hfToken is set as a secret")
    return Finding(check, FAIL, "the workload downloads from the Hugging Face Hub and trn-workloads:hfToken is not set "
                                "(or still the example placeholder)",
                   f"cd workloads && pulumi config set --secret hfToken <token> -s {req.stack}")


def workload_config_finding(req: WorkloadRequirements) -> Finding:
    return Finding(f"config: {req.stack}", FAIL, "; ".join(req.problems),
                   f"fix workloads/Pulumi.{req.stack}.yaml (keys as named)")


# --------------------------------------------------------------------------- output


def has_blocking(findings: list[Finding]) -> bool:
    return any(f.status == FAIL for f in findings)


def render(findings: list[Finding]) -> str:
    return aws_ops.render_table(("check", "status", "detail", "fix"),
                                [(f.check, f.status, f.detail, f.fix) for f in findings], max_width=70)


# --------------------------------------------------------------------------- AWS calls (thin)


@dataclass
class Clients:
    sts: Any
    ec2: Any
    quotas: Any
    ecr: Any
    # This machine's public IP (the endpoint check); None: not looked up, the check says so.
    public_ip: Callable[[], str] | None = None

    @classmethod
    def for_region(cls, region: str, log: list[str] | None = None,
                   public_ip: Callable[[], str] | None = lookup_public_ip) -> "Clients":
        """Read-only clients: any non Describe/Get/List call raises before it is sent. The IP
        lookup defaults to AWS's checkip service; tests pass their own."""
        sess = aws_ops.session(region)
        make = lambda service: aws_ops.guard_read_only(aws_ops.client(sess, service), log)  # noqa: E731
        return cls(sts=make("sts"), ec2=make("ec2"), quotas=make("service-quotas"), ecr=make("ecr"),
                   public_ip=public_ip)


def fetch_endpoint_finding(cfg: PlatformConfig, public_ip: Callable[[], str] | None) -> Finding:
    """The endpoint row: looks the IP up only when the endpoint is public."""
    if not cfg.endpoint.public_access:
        return endpoint_finding(cfg, None)
    if public_ip is None:
        return endpoint_finding(cfg, None, "no IP lookup configured")
    try:
        return endpoint_finding(cfg, public_ip())
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors; ValueError: not an address
        return endpoint_finding(cfg, None, f"{type(err).__name__}: {err}")


def fetch_identity(clients: Clients, region: str) -> tuple[dict | None, dict | None, str | None]:
    try:
        identity = clients.sts.get_caller_identity()
    except (ClientError, BotoCoreError) as err:
        return None, None, aws_ops.describe_error(err)
    try:
        regions = clients.ec2.describe_regions(AllRegions=True, Filters=[{"Name": "region-name", "Values": [region]}])
    except (ClientError, BotoCoreError) as err:
        return identity, None, aws_ops.describe_error(err)
    entries = regions.get("Regions", [])
    return identity, (entries[0] if entries else None), None


def fetch_zones(ec2: Any) -> dict[str, str]:
    """Available AZs of the client's region: {zone name: zone ID}."""
    resp = ec2.describe_availability_zones(Filters=[{"Name": "state", "Values": ["available"]}])
    return {z["ZoneName"]: z["ZoneId"] for z in resp["AvailabilityZones"]}


def fetch_offerings(ec2: Any, instance_types: list[str]) -> dict[str, set[str]]:
    """{instance type: AZ IDs offering it} from DescribeInstanceTypeOfferings."""
    out: dict[str, set[str]] = {}
    items = aws_ops.paginate(ec2, "describe_instance_type_offerings", "InstanceTypeOfferings",
                             LocationType="availability-zone-id",
                             Filters=[{"Name": "instance-type", "Values": sorted(set(instance_types))}])
    for item in items:
        out.setdefault(item["InstanceType"], set()).add(item["Location"])
    return out


def fetch_quotas(quotas: Any, codes: list[str]) -> dict[str, float | str]:
    """Applied value of each EC2 quota; the AWS default where none was ever applied."""
    out: dict[str, float | str] = {}
    for code in codes:
        try:
            out[code] = float(quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except (ClientError, BotoCoreError) as err:
            if aws_ops.error_code(err) != "NoSuchResourceException":
                out[code] = aws_ops.describe_error(err)
                continue
            try:
                out[code] = float(quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
            except (ClientError, BotoCoreError) as err2:
                out[code] = aws_ops.describe_error(err2)
    return out


def fetch_instance_types(ec2: Any, instance_types: list[str]) -> dict[str, dict]:
    """{instance type: its DescribeInstanceTypes entry}. A type the region does not know fails a
    batched call: then each type is asked alone, and one EC2 cannot describe is left out (the
    offerings rows report it)."""
    types = sorted(set(instance_types))
    try:
        items = list(aws_ops.paginate(ec2, "describe_instance_types", "InstanceTypes", InstanceTypes=types))
    except ClientError:
        items = []
        for t in types:
            try:
                items += ec2.describe_instance_types(InstanceTypes=[t])["InstanceTypes"]
            except ClientError:
                continue
    return {item["InstanceType"]: item for item in items}


def fetch_neuron_info(ec2: Any, instance_types: list[str]) -> dict[str, dict | None]:
    """{instance type: its NeuronInfo, or None} from DescribeInstanceTypes."""
    return neuron_info_of(fetch_instance_types(ec2, instance_types))


def neuron_info_of(described: dict[str, dict]) -> dict[str, dict | None]:
    return {t: item.get("NeuronInfo") for t, item in described.items()}


def fetch_reservations(ec2: Any, ids: list[str]) -> dict[str, dict | None]:
    """DescribeCapacityReservations per id (one unknown id fails a batched call); None when absent."""
    out: dict[str, dict | None] = {}
    for rid in ids:
        try:
            found = ec2.describe_capacity_reservations(CapacityReservationIds=[rid])["CapacityReservations"]
        except ClientError as err:
            if aws_ops.error_code(err) not in ("InvalidCapacityReservationId.NotFound",
                                               "InvalidCapacityReservationId.Malformed"):
                raise
            found = []
        out[rid] = found[0] if found else None
    return out


def fetch_image(ecr: Any, repository_name: str, image: ImageRef) -> tuple[str, str]:
    """(outcome, detail) for one image: found | no-image | no-repository | error."""
    image_id = {"imageDigest": image.digest} if image.digest else {"imageTag": image.tag}
    try:
        details = ecr.describe_images(repositoryName=repository_name, imageIds=[image_id])["imageDetails"]
    except ClientError as err:
        code = aws_ops.error_code(err)
        if code == "RepositoryNotFoundException":
            return "no-repository", ""
        if code == "ImageNotFoundException":
            return "no-image", ""
        return "error", aws_ops.describe_error(err)
    if not details:
        return "no-image", ""
    pushed = details[0].get("imagePushedAt")
    return "found", f"pushed {pushed:%Y-%m-%d %H:%M}" if pushed else ""


def placeholder_finding(stack: str, placeholder: Placeholder) -> Finding:
    """An example value `pulumi up` would use as written (stackfiles/placeholders.py): blocking."""
    return Finding(f"placeholder: {stack}", FAIL, f"{placeholder.key} = {placeholder.value}: {placeholder.why}",
                   placeholder.fix)


def offline_findings(placeholders: dict[str, list[Placeholder]], workloads: list[WorkloadRequirements]) -> list[Finding]:
    """What preflight checks from the stack files alone, before any AWS call."""
    out = [placeholder_finding(stack, p) for stack, found in placeholders.items() for p in found]
    for req in workloads:
        token_is_placeholder = any(p.key.endswith(":hfToken") for p in placeholders.get(req.stack, []))
        if req.problems:
            out.append(workload_config_finding(req))
        elif not token_is_placeholder:  # its placeholder row above says what to do
            out.append(hf_token_finding(req))
    return out


def run_preflight(cfg: PlatformConfig, clients: Clients, workloads: list[WorkloadRequirements] = (),
                  now: datetime | None = None, placeholders: dict[str, list[Placeholder]] | None = None) -> list[Finding]:
    """`now` (UTC) is when Capacity Block dates are judged; the current time unless given.
    The checks that need no AWS come first (placeholders, workload configs, HF tokens), so a
    machine without credentials still learns what to fix in the stack files."""
    findings = offline_findings(placeholders or {}, workloads)
    identity, region_info, error = fetch_identity(clients, cfg.region)
    identity_rows = identity_findings(identity, cfg.region, region_info, error)
    findings += identity_rows
    if has_blocking(identity_rows):
        return findings  # every later check needs working credentials in a usable region
    findings.append(fetch_endpoint_finding(cfg, clients.public_ip))

    zone_ids_by_name = fetch_zones(clients.ec2)
    offerings = fetch_offerings(clients.ec2, [t for p in cfg.node_pools for t in p.instance_types])
    offer, chosen = offering_findings(cfg, offerings, set(zone_ids_by_name.values()))
    findings += offer

    accelerator_types = [t for p in cfg.accelerator_pools for t in p.instance_types]
    if accelerator_types:
        described = fetch_instance_types(clients.ec2, accelerator_types)
        findings += neuron_capacity_findings(cfg, neuron_info_of(described))
        findings += unverified_type_findings(cfg, described)

    needs = quota_needs(cfg)
    codes = sorted({QUOTA_CODES[k][0] for k in needs})
    findings += quota_findings(needs, fetch_quotas(clients.quotas, codes), cfg.region)

    reservation_ids = [rid for p in cfg.node_pools for rid in p.capacity_reservation_ids]
    if reservation_ids:
        findings += reservation_findings(cfg, fetch_reservations(clients.ec2, reservation_ids), offerings, chosen,
                                         zone_ids_by_name)
    block_ids = [rid for p in cfg.node_pools for rid in p.capacity_block_ids]
    if block_ids:
        findings += capacity_block_findings(cfg, fetch_reservations(clients.ec2, block_ids), offerings, chosen,
                                            zone_ids_by_name, now or datetime.now(timezone.utc))

    for req in workloads:
        if req.problems:
            continue  # its config row is above
        for image in req.images:
            repo_name = f"{cfg.cluster_name}/{image.repository}"
            if image.repository not in cfg.ecr_repositories:
                findings.append(Finding(f"image: {req.stack} ({image.repository})", FAIL,
                                        f"{image.repository!r} is not in the platform's ecrRepositories",
                                        f"add it to trn-platform:ecrRepositories of {cfg.stack} "
                                        f"({', '.join(cfg.ecr_repositories)})"))
                continue
            outcome, detail = fetch_image(clients.ecr, repo_name, image)
            findings.append(image_finding(req.stack, cfg.cluster_name, cfg.stack, image, outcome, detail))
    return findings


def platform_stack_argument(value: str, project_dir: Path, workloads_dir: Path) -> tuple[str, Path, str | None]:
    """(platform stack, its project dir, note) for what the user named: a platform stack by name
    or file, or a workload stack, whose platform (its `platformStack`) is what gets checked."""
    stack, folder = stack_argument(value)
    project_dir = folder if folder is not None and (folder / "Pulumi.yaml").exists() else project_dir
    if stack_file(project_dir, stack).exists() or not stack_file(workloads_dir, stack).exists():
        return stack, project_dir, None  # a platform stack (or none at all: load_stack_file names the file)
    ref = str(read_stack_bag(workloads_dir, stack).get("trn-workloads:platformStack", ""))
    platform = ref.rsplit("/", 1)[-1]
    if not platform:
        raise ConfigError([f"{stack_file(workloads_dir, stack)}: trn-workloads:platformStack: required key is missing"],
                          f"config for workload stack {stack!r}")
    return platform, project_dir, (f"{stack} is a workload stack of platform stack {platform} ({ref}): checking "
                                   f"{platform}, with its workload stacks")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stack", help="platform stack, by name or file (dev-usw2, Pulumi.dev-usw2.yaml), or a "
                                      "workload stack (compile-usw2): its platform stack is checked")
    parser.add_argument("--project-dir", default=".", type=Path, help="directory of the platform's Pulumi.yaml")
    parser.add_argument("--workloads-dir", default=Path("workloads"), type=Path,
                        help="workloads project; its stacks that point at <stack> are checked too")


def run(args: argparse.Namespace, clients: Clients | None = None) -> int:
    """`clients` replaces the default read-only clients (tests)."""
    try:
        stack, project_dir, note = platform_stack_argument(args.stack, args.project_dir, args.workloads_dir)
        cfg = load_stack_file(project_dir, stack)
        workloads = []
        if args.workloads_dir.is_dir():
            workloads = [workload_requirements(args.workloads_dir, s)
                         for s in workload_stacks_for(args.workloads_dir, stack)]
    except ConfigError as err:
        return exitcodes.bad_input(err)
    placeholders = {stack: find_placeholders(project_dir, stack)}
    placeholders.update({w.stack: find_placeholders(args.workloads_dir, w.stack) for w in workloads})
    if note:
        print(f"note: {note}")
    print(f"preflight for stack {stack}: cluster {cfg.cluster_name} in {cfg.region}"
          f"{', workload stacks ' + ', '.join(w.stack for w in workloads) if workloads else ''}\n")
    findings = run_preflight(cfg, clients or Clients.for_region(cfg.region), workloads,
                             placeholders={k: v for k, v in placeholders.items() if v})
    print(render(findings))
    blocking = [f for f in findings if f.status == FAIL]
    warnings = [f for f in findings if f.status == WARN]
    print(f"\n{len(blocking)} blocking, {len(warnings)} warnings, {len(findings) - len(blocking) - len(warnings)} passed")
    return exitcodes.FINDINGS if blocking else exitcodes.OK


def main(argv: list[str] | None = None, clients: Clients | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trnctl preflight", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), clients)
