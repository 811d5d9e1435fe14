"""Capacity Blocks for ML in preflight: every `capacityBlockIds` entry is looked up with
DescribeCapacityReservations and judged on its type, state, start/end dates, instance type
and AZ, and priced from infra/data/prices.json.

moto 5.2.5 implements neither DescribeCapacityReservations nor DescribeCapacityBlockOfferings,
so the reservation answers come from botocore's Stubber, fed with the recorded shapes in
tests/fixtures/aws/ec2-capacity-blocks.json (Stubber validates them against botocore's EC2
model); everything else in the whole run (STS, regions, AZs, instance type offerings) is
moto's server over HTTP.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from trnctl import cost, preflight
from infra.config import load_stack_file
from tests.test_preflight import READ_ONLY, stack_file, stubbed_quotas

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = json.loads((ROOT / "tests" / "fixtures" / "aws" / "ec2-capacity-blocks.json").read_text())
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)  # when the recorded blocks are judged
STACK = "dev-trn2-use2"
BLOCK_POOL = 1  # nodePools[1] (trn2-block) of Pulumi.dev-trn2-use2.yaml
# dev-trn2-use2 needs: Trn on-demand 4 x 192 (trn2-efa) + 1 x 192 (trn2-dev, at its largest type;
# the block pool uses no quota), Standard on-demand 6 x 16 + system 3 x 2, Standard spot 6 x 16.
ENOUGH = {"L-2C3B7624": 960.0, "L-1216C47A": 102.0, "L-34B43A08": 96.0}


def block_id(scenario: str) -> str:
    return BLOCKS[scenario]["CapacityReservations"][0]["CapacityReservationId"]


def answer(scenario: str, rid: str | None = None) -> dict:
    """The recorded answer of `scenario`, for reservation `rid` if given."""
    doc = copy.deepcopy(BLOCKS[scenario])
    if rid:
        doc["CapacityReservations"][0]["CapacityReservationId"] = rid
    return doc


def blocks_config(tmp_path: Path, ids: list[str]):
    def edit(config):
        config["trn-platform:nodePools"][BLOCK_POOL]["capacityBlockIds"] = ids
    return load_stack_file(stack_file(tmp_path, STACK, "blocks", edit), "blocks")


def stubbed_reservations(answers: dict[str, dict | None], log: list[str] | None = None):
    """An EC2 client answering DescribeCapacityReservations per id, in order; None: not found."""
    ec2 = boto3.client("ec2", region_name="us-east-2")
    if log is not None:
        preflight.aws_ops.guard_read_only(ec2, log)
    stub = Stubber(ec2)
    for rid, doc in answers.items():
        if doc is None:
            stub.add_client_error("describe_capacity_reservations", BLOCKS["not_found"]["Code"],
                                  BLOCKS["not_found"]["Message"], expected_params={"CapacityReservationIds": [rid]})
        else:
            stub.add_response("describe_capacity_reservations", doc, {"CapacityReservationIds": [rid]})
    stub.activate()
    return ec2, stub


def test_moto_still_lacks_the_capacity_reservation_apis():
    """If this fails, moto has learned the calls: move these tests onto its server."""
    from moto.ec2.responses import EC2Response

    for action in ("describe_capacity_reservations", "describe_capacity_block_offerings"):
        assert not hasattr(EC2Response, action), action


def test_each_block_is_judged_on_type_state_dates_instance_type_and_zone(tmp_path):
    scenarios = ["active", "scheduled", "expired", "ending_soon", "wrong_type_and_zone", "default_odcr"]
    ids = [block_id(s) for s in scenarios]
    missing = "cr-0b10c0000000a0009"
    cfg = blocks_config(tmp_path, ids + [missing])
    ec2, stub = stubbed_reservations({**{rid: answer(s) for s, rid in zip(scenarios, ids)}, missing: None})
    found = preflight.fetch_reservations(ec2, ids + [missing])
    stub.assert_no_pending_responses()

    offerings = {"trn2.48xlarge": {"use2-az1", "use2-az2", "use2-az3"}}
    rows = {f.check: f for f in preflight.capacity_block_findings(cfg, found, offerings, ["use2-az1", "use2-az2"],
                                                                  {}, NOW)}
    active, scheduled, expired, soon, wrong, odcr, absent = (rows[f"capacity block: {rid}"] for rid in ids + [missing])

    assert active.status == "PASS"
    assert ("Capacity Block active, trn2.48xlarge x4 in use2-az1, 2026-11-28 11:30 UTC to 2026-12-05 11:30 UTC"
            in active.detail)
    # 4 instances x 168 h at the recorded us-east-2 block rate
    assert f"prepaid ${4 * 168 * 35.7632:,.0f} (4 x 168 h" in active.detail

    assert scheduled.status == "FAIL"
    assert "not started: it runs 2026-12-08 11:30 UTC to 2026-12-22 11:30 UTC (state 'scheduled')" in scheduled.detail
    assert "run `pulumi up` from 2026-12-08 11:30 UTC" in scheduled.fix
    assert "nodePools[1] (trn2-block).capacityBlockIds[1]" in scheduled.fix

    assert expired.status == "FAIL"
    assert "ended: it ran 2026-11-10 11:30 UTC to 2026-11-24 11:30 UTC (state 'expired')" in expired.detail
    assert "describe-capacity-block-offerings --instance-type trn2.48xlarge" in expired.fix

    assert soon.status == "WARN" and "ends 2026-12-02 11:30 UTC" in soon.detail

    assert wrong.status == "FAIL"
    assert "it is for trn1.32xlarge; the pool launches trn2.48xlarge" in wrong.detail
    assert "it is in use2-az3 (us-east-2c); the pool's AZ IDs are use2-az1, use2-az2" in wrong.detail
    assert "add use2-az3 to network.availabilityZoneIds" in wrong.fix
    assert "(not priced: " in wrong.detail and "no Capacity Block price for trn1.32xlarge in us-east-2" in wrong.detail

    assert odcr.status == "FAIL" and "is a default capacity reservation, not a Capacity Block" in odcr.detail
    assert "move it to nodePools (trn2-block).capacityReservationIds" in odcr.fix

    assert absent.status == "FAIL" and f"{missing} not found in us-east-2" in absent.detail
    assert f"--capacity-reservation-ids {missing}" in absent.fix


def test_block_dates_are_read_from_boto3_datetimes_too(tmp_path):
    """Live boto3 answers carry datetimes, the recordings ISO 8601 text: both are judged alike."""
    res = answer("scheduled")["CapacityReservations"][0]
    for field in ("StartDate", "EndDate", "CreateDate"):
        res[field] = datetime.fromisoformat(res[field].replace("Z", "+00:00"))
    cfg = blocks_config(tmp_path, [res["CapacityReservationId"]])
    (row,) = preflight.capacity_block_findings(cfg, {res["CapacityReservationId"]: res},
                                               {"trn2.48xlarge": {"use2-az1"}}, ["use2-az1", "use2-az2"], {}, NOW)
    assert row.status == "FAIL" and "not started: it runs 2026-12-08 11:30 UTC to 2026-12-22 11:30 UTC" in row.detail


def test_block_pools_use_no_on_demand_quota():
    needs = preflight.quota_needs(load_stack_file(ROOT, STACK))
    # trn2-block launches into its block only
    assert needs[("Trn", "on-demand")] == [("trn2-efa", 768), ("trn2-dev", 192)]
    assert ("Trn", "spot") not in needs


def test_capacity_block_cost_is_instances_times_hours_at_the_block_rate():
    assert cost.capacity_block_cost("trn2.48xlarge", 4, 24, "us-east-2") == pytest.approx(4 * 24 * 35.7632)
    with pytest.raises(cost.PriceError, match="no Capacity Block price for trn2u.48xlarge in us-east-2; "
                                              "priced types: trn2.48xlarge"):
        cost.capacity_block_cost("trn2u.48xlarge", 4, 24, "us-east-2")


class OfferingsFromMotoReservationsFromRecordings:
    """The preflight EC2 client: moto's server for everything it implements, the stubbed
    client for the one call it lacks."""

    def __init__(self, moto_ec2, recorded_ec2):
        self._moto, self._recorded = moto_ec2, recorded_ec2

    def describe_capacity_reservations(self, **kwargs):
        return self._recorded.describe_capacity_reservations(**kwargs)

    def __getattr__(self, name):
        return getattr(self._moto, name)


def test_whole_run_on_the_trn2_stack(aws_env):
    cfg = load_stack_file(ROOT, STACK)
    (rid,) = cfg.pool("trn2-block").capacity_block_ids
    calls: list[str] = []
    clients = preflight.Clients.for_region("us-east-2", calls, public_ip=lambda: "203.0.113.9")
    clients.quotas, quota_stub = stubbed_quotas(ENOUGH, calls)
    recorded, block_stub = stubbed_reservations({rid: answer("active", rid)}, calls)
    clients.ec2 = OfferingsFromMotoReservationsFromRecordings(clients.ec2, recorded)

    findings = preflight.run_preflight(cfg, clients, now=NOW)
    quota_stub.assert_no_pending_responses()
    block_stub.assert_no_pending_responses()
    rows = {f.check: f for f in findings}
    # moto's offerings (recorded from EC2) have no trn2.3xlarge in us-east-2: the dev pool would
    # launch trn2.48xlarge, which preflight says
    assert [(f.check, f.status) for f in findings if f.status != "PASS"] == [("offerings: trn2-dev", "WARN")]
    assert rows["offerings: trn2-dev"].detail.startswith("trn2.3xlarge not offered in the chosen AZs; trn2.3xlarge "
                                                         "in no AZ of us-east-2; trn2.48xlarge in use2-az1")
    # moto's offerings (recorded from EC2) put trn2.48xlarge in all three use2 AZ IDs
    # a multi-node EFA pool runs in one AZ (infra/network.py pool_zone_ids)
    assert rows["offerings: trn2-efa"].detail.startswith("AZ IDs use2-az1: trn2.48xlarge in use2-az1, "
                                                         "use2-az2, use2-az3")
    assert rows[f"capacity block: {rid}"].detail.startswith("Capacity Block active, trn2.48xlarge x4 in use2-az1")
    assert {"GetCallerIdentity", "DescribeInstanceTypeOfferings", "DescribeInstanceTypes",
            "DescribeCapacityReservations", "GetServiceQuota"} <= set(calls)
    assert all(c.startswith(READ_ONLY) for c in calls)


def test_whole_run_blocks_on_a_block_that_has_not_started(aws_env):
    cfg = load_stack_file(ROOT, STACK)
    (rid,) = cfg.pool("trn2-block").capacity_block_ids
    clients = preflight.Clients.for_region("us-east-2", public_ip=lambda: "203.0.113.9")
    clients.quotas, _ = stubbed_quotas(ENOUGH)
    recorded, _ = stubbed_reservations({rid: answer("scheduled", rid)})
    clients.ec2 = OfferingsFromMotoReservationsFromRecordings(clients.ec2, recorded)

    findings = preflight.run_preflight(cfg, clients, now=NOW)
    assert preflight.has_blocking(findings)
    (block,) = [f for f in findings if f.status == "FAIL"]
    assert block.check == f"capacity block: {rid}" and "2026-12-08 11:30 UTC to 2026-12-22 11:30 UTC" in block.detail


def test_neuron_capacity_comes_from_ec2_describe_instance_types(aws_env, tmp_path):
    """moto serves EC2's recorded DescribeInstanceTypes: trn2u.48xlarge has no NeuronInfo there,
    so Karpenter would never launch it for a pod asking for aws.amazon.com/neuron."""
    def edit(config):
        pools = config["trn-platform:nodePools"]
        pools[0]["instanceTypes"] = ["trn2.48xlarge", "trn2u.48xlarge"]
        pools[1].update(instanceTypes=["trn2u.48xlarge"], capacityBlockIds=[block_id("active")])
    cfg = load_stack_file(stack_file(tmp_path, STACK, "ultra", edit), "ultra")
    info = preflight.fetch_neuron_info(boto3.client("ec2", region_name="us-east-2"),
                                       ["trn2.48xlarge", "trn2u.48xlarge", "trn1.32xlarge"])
    assert info["trn2.48xlarge"]["NeuronDevices"][0]["Count"] == 16 and info["trn2u.48xlarge"] is None
    rows = {f.check: f for f in preflight.neuron_capacity_findings(cfg, info)}
    assert rows["neuron capacity: trn2-efa"].status == "WARN"
    assert "EC2 reports no NeuronInfo for trn2u.48xlarge" in rows["neuron capacity: trn2-efa"].detail
    assert rows["neuron capacity: trn2-block"].status == "FAIL"
    assert "remove trn2u.48xlarge from nodePools (trn2-block).instanceTypes" in rows["neuron capacity: trn2-block"].fix
    ok = preflight.neuron_capacity_findings(load_stack_file(ROOT, STACK), info)
    assert [(f.status, f.detail) for f in ok] == [("PASS", "trn2.48xlarge: 16 Neuron devices")] * 3


def test_a_block_larger_than_the_pool_warns_about_unused_prepaid_instances(tmp_path):
    def edit(config):
        config["trn-platform:nodePools"][BLOCK_POOL].update(maxNodes=2, capacityBlockIds=[block_id("active")])
    cfg = load_stack_file(stack_file(tmp_path, STACK, "small", edit), "small")
    res = answer("active")["CapacityReservations"][0]
    (row,) = preflight.capacity_block_findings(cfg, {res["CapacityReservationId"]: res},
                                               {"trn2.48xlarge": {"use2-az1"}}, ["use2-az1", "use2-az2"], {}, NOW)
    assert row.status == "WARN" and "maxNodes 2 leaves 2 of its 4 prepaid instances unused" in row.detail
    assert "set nodePools (trn2-block).maxNodes to at least 4" in row.fix


def test_a_block_listed_as_an_odcr_points_to_capacity_block_ids(tmp_path):
    from tests.test_preflight import RESERVATIONS, _reserved_config

    res = RESERVATIONS["scheduled_block"]["CapacityReservations"][0]
    cfg = _reserved_config(tmp_path, [res["CapacityReservationId"]])
    (row,) = preflight.reservation_findings(cfg, {res["CapacityReservationId"]: res},
                                            {"trn1.32xlarge": {"usw2-az1"}}, ["usw2-az1"], {})
    assert row.status == "WARN"
    assert "list it under nodePools (trn1-efa).capacityBlockIds (capacity type capacity-block)" in row.fix


# --------------------------------------------------------------------------- the end of a block


def test_block_rows_show_when_runs_must_stop():
    """Karpenter v1.14.1 deletes a block's NodeClaims 40 minutes before its end
    (ec2nodeclass_status.go capacityReservationExpirationPeriod), 10 minutes before EC2 reclaims an
    ordinary instance (30): the stop time of an ordinary block is Karpenter's drain, end - 40 min."""
    cfg = load_stack_file(ROOT, STACK)
    (rid,) = cfg.pool("trn2-block").capacity_block_ids
    rows = {}
    for scenario in ("active", "ending_soon"):
        res = answer(scenario, rid)["CapacityReservations"][0]
        (rows[scenario],) = preflight.capacity_block_findings(
            cfg, {rid: res}, {"trn2.48xlarge": {"use2-az1"}}, ["use2-az1", "use2-az2"], {}, NOW)
    assert rows["active"].status == "PASS"
    assert "2026-11-28 11:30 UTC to 2026-12-05 11:30 UTC, runs must stop by 2026-12-05 10:50 UTC" in rows["active"].detail
    soon = rows["ending_soon"]
    assert soon.status == "WARN"
    assert ("ends 2026-12-02 11:30 UTC: Karpenter drains its nodes from 2026-12-02 10:50 UTC, EC2 terminates them "
            "from 2026-12-02 11:00 UTC") in soon.detail
    assert "checkpoint and stop by 2026-12-02 10:50 UTC" in soon.fix


def test_an_ultraserver_block_warns_that_ec2_reclaims_before_karpenter_drains(tmp_path):
    """EC2 terminates UltraServer blocks from 60 minutes before the end (Karpenter odcrs.md quoting
    the EC2 user guide), 20 minutes before Karpenter's drain: runs must stop by end - 70 minutes."""
    def edit(config):
        config["trn-platform:nodePools"][BLOCK_POOL].update(instanceTypes=["trn2u.48xlarge"],
                                                            capacityBlockIds=[block_id("active")])
    cfg = load_stack_file(stack_file(tmp_path, STACK, "ultra", edit), "ultra")
    res = answer("active")["CapacityReservations"][0] | {"InstanceType": "trn2u.48xlarge"}
    (row,) = preflight.capacity_block_findings(cfg, {res["CapacityReservationId"]: res},
                                               {"trn2u.48xlarge": {"use2-az1"}}, ["use2-az1", "use2-az2"], {}, NOW)
    assert row.status == "WARN"  # a week before its end: the warning is about how it ends, not when
    assert "2026-11-28 11:30 UTC to 2026-12-05 11:30 UTC, runs must stop by 2026-12-05 10:20 UTC" in row.detail
    assert ("UltraServer block: EC2 terminates its instances from 2026-12-05 10:30 UTC, before Karpenter drains them "
            "(2026-12-05 10:50 UTC): runs must checkpoint and stop by 2026-12-05 10:20 UTC") in row.detail
    assert "end training runs on trn2-block by 2026-12-05 10:20 UTC" in row.fix


def test_karpenter_drain_times_against_ec2_reclaim():
    from datetime import timedelta

    from trnctl.operators import karpenter

    end = datetime(2026, 12, 5, 11, 30, tzinfo=timezone.utc)
    assert karpenter.drain_time(end) == end - timedelta(minutes=40)
    assert karpenter.ec2_reclaim_time(end, False) == end - timedelta(minutes=30)
    assert karpenter.ec2_reclaim_time(end, True) == end - timedelta(minutes=60)
    assert karpenter.stop_by_time(end, False) == end - timedelta(minutes=40)
    assert karpenter.stop_by_time(end, True) == end - timedelta(minutes=70)
    assert karpenter.drain_precedes_reclaim(False) and not karpenter.drain_precedes_reclaim(True)


# --------------------------------------------------------------------------- Trn3: EC2 decides


def with_trn3_pool(config):
    config["trn-platform:nodePools"].insert(2, {"name": "trn3-efa", "family": "trn3", "instanceTypes": ["trn3.48xlarge"],
                                                "maxNodes": 2})


def test_whole_run_lets_ec2_decide_on_a_trn3_pool(aws_env, tmp_path):
    """The config accepts a Trn3 pool offline; moto's server answers as EC2 recorded (no Trn3
    type anywhere), so the live offerings fail the pool and the catalog row says its facts are
    Neuron's only."""
    cfg = load_stack_file(stack_file(tmp_path, STACK, "trn3", with_trn3_pool), "trn3")
    (rid,) = cfg.pool("trn2-block").capacity_block_ids
    clients = preflight.Clients.for_region("us-east-2", public_ip=lambda: "203.0.113.9")
    clients.quotas, _ = stubbed_quotas(ENOUGH | {"L-2C3B7624": 768.0 + 2 * 192})
    recorded, _ = stubbed_reservations({rid: answer("active", rid)})
    clients.ec2 = OfferingsFromMotoReservationsFromRecordings(clients.ec2, recorded)

    rows = {f.check: f for f in preflight.run_preflight(cfg, clients, now=NOW)}
    assert rows["offerings: trn3-efa"].status == "FAIL"
    assert "trn3.48xlarge in no AZ of us-east-2" in rows["offerings: trn3-efa"].detail
    assert rows["catalog facts: trn3.48xlarge"].status == "WARN"
    assert "EC2 does not describe trn3.48xlarge in us-east-2" in rows["catalog facts: trn3.48xlarge"].detail
    assert rows["offerings: trn2-efa"].status == "PASS"


def trn3_answer(**changes) -> dict:
    """A DescribeInstanceTypes entry for trn3.48xlarge. EC2 has published none: this is EC2's
    recorded trn2.48xlarge entry (moto 5.2.5) with Trainium3 devices, the catalog's assumption,
    changed by `changes` to test each comparison."""
    from tests.test_trn2_platform import EC2_TYPES

    item = copy.deepcopy(EC2_TYPES["trn2.48xlarge"]) | {"InstanceType": "trn3.48xlarge", "SupportedUsageClasses":
                                                         ["capacity-block", "on-demand"]}
    item["InstanceStorageInfo"] = {"TotalSizeInGB": 0, "Disks": []}
    item["NeuronInfo"] = {"NeuronDevices": [{"Count": 16, "Name": "Trainium3", "CoreInfo": {"Count": 8, "Version": 4},
                                             "MemoryInfo": {"SizeInMiB": 147456}}]}
    for key, value in changes.items():
        item[key] = value
    return item


def test_unverified_trn3_facts_are_checked_against_describe_instance_types(tmp_path):
    cfg = load_stack_file(stack_file(tmp_path, STACK, "trn3", with_trn3_pool), "trn3")

    (same,) = preflight.unverified_type_findings(cfg, {"trn3.48xlarge": trn3_answer()})
    assert same.status == "PASS"
    assert "EC2 confirms the catalog's facts: 192 vCPU, 2048 GiB, 16 Neuron devices, 16 EFA interfaces" in same.detail

    network = trn3_answer()["NetworkInfo"] | {"EfaInfo": {"MaximumEfaInterfaces": 8}}
    (fewer_efa,) = preflight.unverified_type_findings(cfg, {"trn3.48xlarge": trn3_answer(NetworkInfo=network)})
    assert fewer_efa.status == "FAIL"
    assert "efaInterfaces 16 in the catalog, 8 from EC2" in fewer_efa.detail
    assert "set trn3.48xlarge in infra/data/instance_types.json to EC2's answer" in fewer_efa.fix

    (blocks_only,) = preflight.unverified_type_findings(
        cfg, {"trn3.48xlarge": trn3_answer(SupportedUsageClasses=["capacity-block"])})
    assert blocks_only.status == "FAIL"
    assert "EC2 sells it as capacity-block, not on-demand" in blocks_only.detail
    assert "remove on-demand from nodePools (trn3-efa).capacityTypes" in blocks_only.fix

    # verified types (trn2) get no row
    assert [f.check for f in preflight.unverified_type_findings(cfg, {})] == ["catalog facts: trn3.48xlarge"]
