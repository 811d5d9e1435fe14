"""Trainium2 (and the state of Trainium3) on the platform: catalog facts against EC2's own
answers, LNC and Capacity Block config, the NodePool/EC2NodeClass specs validated against the
Karpenter CRD schemas with their CEL rules, and the dev-trn2-use2 stack rendered.
"""
from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import botocore.session
import moto
import pytest

from infra import catalog, config, nodepools
from trnctl import cost
from infra.config import ConfigError, NodePoolConfig
from tests.platform_helpers import assert_rejected_before_any_resource, rendered_platform, stack_config
from tests.test_platform_specs import assert_valid_karpenter_objects, nodeclass

STACK = "dev-trn2-use2"
TRN2_TYPES = ("trn2.48xlarge", "trn2u.48xlarge")
# EC2 DescribeInstanceTypes answers as moto 5.2.5 recorded them from EC2: an independent
# source for the catalog's EC2 facts.
EC2_TYPES = json.loads(gzip.open(Path(moto.__file__).parent / "ec2" / "resources" / "instance_types.json.gz",
                                 "rt").read())


def trn2_pool(**overrides) -> NodePoolConfig:
    base = dict(name="trn2-efa", family="trn2", instance_types=("trn2.48xlarge",), max_nodes=4, efa=True, lnc=2)
    return NodePoolConfig(**(base | overrides))


BLOCK = trn2_pool(name="trn2-block", capacity_types=("capacity-block",), capacity_block_ids=("cr-0b10c0000000a0001",))
BLOCK_THEN_ON_DEMAND = trn2_pool(name="trn2-block-od", capacity_types=("capacity-block", "on-demand"),
                                 capacity_block_ids=("cr-0b10c0000000a0001",))
ULTRASERVER = trn2_pool(name="trn2u", instance_types=("trn2u.48xlarge",), capacity_types=("capacity-block",),
                        capacity_block_ids=("cr-0b10c0000000a0002",), lnc=1)


# --------------------------------------------------------------------------- catalog


@pytest.mark.parametrize("name", TRN2_TYPES)
def test_trn2_catalog_facts(name):
    t = catalog.instance_type(name)
    # Neuron docs trn2-arch.rst: 16 Trainium2, 192 vCPU, 2048 GiB host, 1536 GiB device memory;
    # logical-neuroncore-config.rst: 8 physical cores per chip, LNC=2 -> 64, LNC=1 -> 128.
    assert (t.family, t.neuron_devices, t.neuron_cores, t.device_memory_gib) == ("trn2", 16, 128, 1536)
    assert (t.vcpu, t.memory_gib, t.efa_interfaces, t.instance_store_gib) == (192, 2048, 16, 7600)
    assert t.logical_neuron_cores == {1: 128, 2: 64}
    assert t.neuron_cores_at(2) == 64 and t.neuron_cores_at(1) == 128 and t.neuron_cores_at(None) == 128
    assert t.ultraserver == (name == "trn2u.48xlarge")
    raw = json.loads((catalog.DATA / "instance_types.json").read_text())["instanceTypes"][name]
    assert "trn2-arch.rst" in raw["_source"] and "moto 5.2.5" in raw["_source"]


def test_trn2_3xlarge_is_one_trainium2_chip():
    """EC2's recorded DescribeInstanceTypes (moto 5.2.5) and the Neuron docs: one Trainium2 (8
    NeuronCore-v3, 96 GiB), 12 vCPU, 128 GiB, one EFA interface; sold on-demand, spot and in blocks."""
    t = catalog.instance_type("trn2.3xlarge")
    assert (t.family, t.neuron_devices, t.neuron_cores, t.device_memory_gib) == ("trn2", 1, 8, 96)
    assert (t.vcpu, t.memory_gib, t.efa_interfaces, t.instance_store_gib) == (12, 128, 1, 470)
    assert t.logical_neuron_cores == {1: 8, 2: 4} and not t.ultraserver and not t.unverified
    assert set(t.usage_classes) == {"capacity-block", "on-demand", "spot"}
    assert "trn2.3xlarge" in botocore.session.get_session().get_service_model("ec2").shape_for("InstanceType").enum


@pytest.mark.parametrize("name", TRN2_TYPES + ("trn2.3xlarge", "trn1.2xlarge", "trn1.32xlarge", "trn1n.32xlarge", "inf2.xlarge",
                                               "inf2.48xlarge"))
def test_catalog_agrees_with_ec2_describe_instance_types(name):
    ec2 = EC2_TYPES[name]
    t = catalog.instance_type(name)
    assert t.vcpu == ec2["VCpuInfo"]["DefaultVCpus"]
    assert t.memory_gib * 1024 == ec2["MemoryInfo"]["SizeInMiB"]
    assert t.instance_store_gib == ec2.get("InstanceStorageInfo", {}).get("TotalSizeInGB", 0)
    assert t.efa_interfaces == (ec2["NetworkInfo"].get("EfaInfo") or {}).get("MaximumEfaInterfaces", 0)
    assert set(t.usage_classes) == set(ec2["SupportedUsageClasses"])
    devices = (ec2.get("NeuronInfo") or {}).get("NeuronDevices", [])
    if devices:  # EC2's recorded trn2u.48xlarge answer has no NeuronInfo (see its _source)
        assert t.neuron_devices == sum(d["Count"] for d in devices)
        assert t.neuron_cores == sum(d["Count"] * d["CoreInfo"]["Count"] for d in devices)


def test_lnc_exists_only_on_trn2_and_trn3():
    for family in ("trn2", "trn3"):
        assert catalog.family_lnc(family) == catalog.LncSetting(allowed=(1, 2), default=2)
    for family in ("trn1", "trn1n", "inf2", "cpu"):
        assert catalog.family_lnc(family) is None


# The Trn3 names Neuron's own sources give: chart 1.9.0 values.yaml neuronInstances
# (aws-neuron/neuron-helm-charts@b77a6f90) and the driver's v4_platform_map
# (aws-neuron/aws-neuron-driver@9cc489ec v4/neuron_dhal_v4.c), its -dev/-es variants left out.
NEURON_CHART_TRN3 = ("trn3.48xlarge", "trn3e.24xlarge")
NEURON_DRIVER_TRN3 = ("trn3e.24xlarge", "trn3.48xlarge", "trn3p.48xlarge")


def test_trn3_types_are_the_ones_neuron_names_with_their_facts_marked_unverified():
    """EC2's API model (botocore) and its recorded answers (moto) name no Trn3 type, which is no
    evidence: the catalog lists the types Neuron's chart and driver name, every EC2 fact of them
    marked unverified, and records no region or offering for them (preflight asks EC2)."""
    ec2_types = botocore.session.get_session().get_service_model("ec2").shape_for("InstanceType").enum
    assert not [t for t in ec2_types if t.startswith("trn3")] and not [t for t in EC2_TYPES if t.startswith("trn3")]
    assert set(catalog.instance_types_of("trn3")) == {*NEURON_CHART_TRN3, *NEURON_DRIVER_TRN3}
    assert "Neuron" in catalog.family_unverified("trn3") and catalog.family_not_offered("trn3") is None
    fam = json.loads((catalog.DATA / "instance_types.json").read_text())["families"]["trn3"]
    assert fam["chip"] == {"physicalNeuronCores": 8, "deviceMemoryGiB": 144}  # trainium3.rst
    for name in catalog.instance_types_of("trn3"):
        t = catalog.instance_type(name)
        assert {"vcpu", "memoryGiB", "neuronDevices", "efaInterfaces", "usageClasses"} <= set(t.unverified), name
        # per chip as Trainium3 is documented: 8 NeuronCore-v4, 144 GiB; LNC 2 pairs them
        assert t.neuron_cores == 8 * t.neuron_devices and t.device_memory_gib == 144 * t.neuron_devices
        assert t.logical_neuron_cores == {1: t.neuron_cores, 2: t.neuron_cores // 2}
    for region in catalog.known_regions():
        offers = json.loads((catalog.DATA / "offerings-snapshot.json").read_text())[region]["offerings"]
        assert not [t for t in offers if t.startswith("trn3")]  # no recorded "not offered" either


def test_a_trn3_pool_is_accepted_offline_in_any_region():
    """No offline refusal: the family has no recorded regions, preflight's live offerings decide."""
    pool = {"name": "t3", "family": "trn3", "instanceTypes": ["trn3.48xlarge", "trn3e.24xlarge"], "maxNodes": 2}
    for region in ("us-east-2", "us-west-2"):
        (parsed,) = [p for p in parse_pools(pool, region=region) if p.family == "trn3"]
        assert (parsed.lnc, parsed.efa, parsed.limits["aws.amazon.com/neuron"]) == (2, True, "32")


def test_a_trn3_pool_renders_and_validates(tmp_path):
    from trnctl.render import cost_summary, render_stack
    from tests.platform_helpers import project_with_stack

    cfg = copy.deepcopy(BASE)
    cfg[POOLS].insert(2, {"name": "trn3-efa", "family": "trn3", "instanceTypes": ["trn3.48xlarge"], "maxNodes": 2})
    project = project_with_stack(tmp_path, "platform", "trn3", cfg)
    result, problems = render_stack(project, "trn3", tmp_path / "out")
    assert problems == []
    assert result.outputs["nodePools"]["trn3-efa"]["neuronCoresPerNode"] == 64  # LNC 2 on 16 chips x 8 cores
    # no list price for Trn3 yet: the render says so instead of failing, `trnctl cost` in one line
    assert cost_summary(result, project).startswith("cost: not estimated: ")
    assert "no on-demand price for trn3.48xlarge in us-east-2" in cost_summary(result, project)
    from trnctl import cli
    assert cli.main(["cost", "trn3", "--project-dir", str(project)]) == 2


def test_trn2_offerings_snapshot_matches_ec2_recorded_offerings():
    base = Path(moto.__file__).parent / "ec2" / "resources" / "instance_type_offerings" / "availability-zone-id"
    for region in catalog.known_regions():
        recorded = json.loads(gzip.open(base / f"{region}.json.gz", "rt").read())
        for t in (*TRN2_TYPES, "trn2.3xlarge"):
            want = sorted(o["Location"] for o in recorded if o["InstanceType"] == t)
            assert sorted(catalog.snapshot_offerings(region, t)) == want, (region, t)
    assert catalog.snapshot_offerings("us-east-2", "trn2.48xlarge") == ("use2-az1", "use2-az2", "use2-az3")


# --------------------------------------------------------------------------- config


BASE = stack_config("platform", STACK)
POOLS = "trn-platform:nodePools"


def parse_pools(*pools: dict, region: str = "us-east-2"):
    raw = {"nodePools": [*pools, {"name": "cpu", "family": "cpu", "instanceTypes": ["m7i.2xlarge"], "maxNodes": 1}],
           "endpoint": {"publicAccess": False},
           "monitoring": {"enabled": False}}  # pools only: no alert destination needed
    return config.parse(raw, stack="t", region=region).node_pools


def rejected(*pools: dict, region: str = "us-east-2") -> str:
    with pytest.raises(ConfigError) as err:
        parse_pools(*pools, region=region)
    return str(err.value)


TRN2 = {"name": "t2", "family": "trn2", "instanceTypes": ["trn2.48xlarge"], "maxNodes": 4}


def test_trn2_pool_defaults_lnc_2_and_efa_when_multi_node():
    pool = parse_pools(TRN2)[0]
    assert (pool.lnc, pool.efa) == (2, True)
    single = parse_pools(TRN2 | {"maxNodes": 1})[0]
    assert (single.lnc, single.efa) == (2, False)
    trn1 = {"name": "t1", "family": "trn1", "instanceTypes": ["trn1.32xlarge"], "maxNodes": 2}
    assert parse_pools(trn1)[0].lnc is None


BAD_POOLS = {
    "lnc value": (TRN2 | {"lnc": 4}, "nodePools[0].lnc: 4 is not allowed for trn2; allowed values: 1, 2 (default 2)"),
    "lnc on trn1": ({"name": "t1", "family": "trn1", "instanceTypes": ["trn1.32xlarge"], "maxNodes": 2, "lnc": 2},
                    "nodePools[0].lnc: trn1 has no Logical NeuronCore setting (LNC applies to trn2, trn3); "
                    "remove the key"),
    "no efa multi-node": (TRN2 | {"efa": False}, "nodePools[0] (t2).efa: false is not allowed for a multi-node trn2 "
                                                "pool (maxNodes 4)"),
    "block on inf2": ({"name": "i", "family": "inf2", "instanceTypes": ["inf2.xlarge"], "maxNodes": 1,
                       "capacityTypes": ["capacity-block"], "capacityBlockIds": ["cr-0b10c0000000a0001"]},
                      "nodePools[0] (i).capacityTypes: capacity-block is not offered for inf2.xlarge; "
                      "accelerator types sold as capacity-block: trn1.32xlarge, trn2.3xlarge, trn2.48xlarge, "
                      "trn2u.48xlarge"),
    "block without ids": (TRN2 | {"capacityTypes": ["capacity-block"]},
                          "nodePools[0] (t2).capacityBlockIds: required when capacityTypes contains 'capacity-block'"),
    "ids without block": (TRN2 | {"capacityBlockIds": ["cr-0b10c0000000a0001"]},
                          "nodePools[0] (t2).capacityTypes: must contain 'capacity-block' when capacityBlockIds "
                          "are given"),
    "reserved without ids": (TRN2 | {"capacityTypes": ["reserved"]},
                             "nodePools[0] (t2).capacityReservationIds: required when capacityTypes contains "
                             "'reserved'"),
    "bad block id": (TRN2 | {"capacityTypes": ["capacity-block"], "capacityBlockIds": ["cb-123"]},
                     "nodePools[0] (t2).capacityBlockIds[0]: 'cb-123' is not a capacity reservation id (cr-...)"),
    "same id twice": (TRN2 | {"capacityTypes": ["capacity-block", "reserved"],
                              "capacityBlockIds": ["cr-0b10c0000000a0001"],
                              "capacityReservationIds": ["cr-0b10c0000000a0001"]},
                      "nodePools[0] (t2).capacityBlockIds: cr-0b10c0000000a0001 is also in capacityReservationIds"),
    "spot on trn2u": (TRN2 | {"instanceTypes": ["trn2u.48xlarge"], "capacityTypes": ["spot"]},
                      "nodePools[0] (t2).capacityTypes: spot is not offered for trn2u.48xlarge"),
    "wrong type for family": (TRN2 | {"instanceTypes": ["trn1.32xlarge"]},
                              "nodePools[0].instanceTypes[0]: 'trn1.32xlarge' is not allowed for family trn2 (it is a "
                              "type of family trn1); allowed values: trn2.3xlarge, trn2.48xlarge, trn2u.48xlarge; or set family: trn1"),
}


@pytest.mark.parametrize("case", BAD_POOLS)
def test_bad_trn2_pool_config_names_the_key_and_the_allowed_values(case):
    pool, expected = BAD_POOLS[case]
    assert expected in rejected(pool)


def test_trn2_outside_its_regions_is_rejected():
    assert "nodePools[0] (t2).family: trn2 not offered in us-west-2 (infra/data/offerings-snapshot.json); " \
        "offered: trn2 in ap-south-2, ap-southeast-4, sa-east-1, us-east-2; remove this pool or set aws:region to one offering it: " \
        "ap-south-2, ap-southeast-4, sa-east-1, us-east-2" \
        in rejected(TRN2, region="us-west-2")


def test_trn2_stack_with_a_bad_lnc_fails_before_any_resource(tmp_path):
    bad = copy.deepcopy(BASE)
    bad[POOLS][0]["lnc"] = 3
    expected = "nodePools[0].lnc: 3 is not allowed for trn2; allowed values: 1, 2"
    assert_rejected_before_any_resource(tmp_path, "platform", bad, expected, ConfigError)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("p", [trn2_pool(), trn2_pool(lnc=1), BLOCK, BLOCK_THEN_ON_DEMAND, ULTRASERVER],
                         ids=lambda p: f"{p.name}-lnc{p.lnc}")
def test_trn2_specs_are_valid_karpenter_objects_with_cel(p):
    assert_valid_karpenter_objects(p, ["use2-az1", "use2-az2"])


def test_lnc_is_written_on_the_node_where_the_neuron_runtime_reads_it():
    for lnc in (1, 2):
        user_data = nodeclass(trn2_pool(lnc=lnc))["userData"]
        assert user_data.startswith("#!/bin/bash\n")  # Karpenter merges a shell part with its AL2023 NodeConfig
        assert f"echo 'NEURON_LOGICAL_NC_CONFIG={lnc}' > /opt/aws/neuron/logical_nc_config" in user_data
    cpu = NodePoolConfig(name="cpu", family="cpu", instance_types=("m7i.2xlarge",), max_nodes=2)
    assert "userData" not in nodeclass(cpu)


def requirements(p: NodePoolConfig) -> dict[str, list[str]]:
    spec = nodepools.nodepool_spec(p, zone_ids=["use2-az1"])
    return {r["key"]: r["values"] for r in spec["template"]["spec"]["requirements"]}


def test_capacity_blocks_are_karpenter_reserved_capacity_selected_by_id():
    assert requirements(BLOCK)["karpenter.sh/capacity-type"] == ["reserved"]
    assert requirements(BLOCK)["karpenter.k8s.aws/capacity-reservation-type"] == ["capacity-block"]
    assert nodeclass(BLOCK)["capacityReservationSelectorTerms"] == [{"id": "cr-0b10c0000000a0001"}]
    # With an on-demand fallback the block label must not be required: on-demand nodes lack it.
    mixed = requirements(BLOCK_THEN_ON_DEMAND)
    assert mixed["karpenter.sh/capacity-type"] == ["reserved", "on-demand"]
    assert "karpenter.k8s.aws/capacity-reservation-type" not in mixed
    on_demand = nodepools.nodepool_spec(trn2_pool(), zone_ids=["use2-az1"])
    assert nodepools.nodepool_spec(BLOCK, zone_ids=["use2-az1"])["weight"] > on_demand["weight"]
    both = trn2_pool(capacity_types=("reserved", "capacity-block"), capacity_reservation_ids=("cr-0aaaaaaaaaaaaaaa1",),
                     capacity_block_ids=("cr-0b10c0000000a0001",))
    assert nodeclass(both)["capacityReservationSelectorTerms"] == [{"id": "cr-0aaaaaaaaaaaaaaa1"},
                                                                   {"id": "cr-0b10c0000000a0001"}]
    assert requirements(both)["karpenter.sh/capacity-type"] == ["reserved"]


def test_scheduling_outputs_carry_lnc_logical_cores_and_track():
    facts = nodepools.pool_scheduling(trn2_pool(), daemonset_pods=[])
    assert (facts["lnc"], facts["neuronCoresPerNode"], facts["physicalNeuronCoresPerNode"]) == (2, 64, 128)
    assert (facts["track"], facts["efaPerNode"], facts["neuronDevicesPerNode"]) == ("native", 16, 16)
    assert nodepools.pool_scheduling(trn2_pool(lnc=1), daemonset_pods=[])["neuronCoresPerNode"] == 128
    trn1 = NodePoolConfig(name="trn1-efa", family="trn1", instance_types=("trn1.32xlarge",), max_nodes=4, efa=True)
    facts = nodepools.pool_scheduling(trn1, daemonset_pods=[])
    assert (facts["lnc"], facts["neuronCoresPerNode"], facts["track"]) == (None, 32, "xla")


# --------------------------------------------------------------------------- the stack


def test_trn2_stack_exports_lnc_cores_and_tracks():
    out = rendered_platform(STACK).outputs
    pools = out["nodePools"]
    for name in ("trn2-efa", "trn2-block"):
        assert {k: pools[name][k] for k in ("lnc", "neuronCoresPerNode", "track", "efaPerNode", "maxNodes")} == {
            "lnc": 2, "neuronCoresPerNode": 64, "track": "native", "efaPerNode": 16, "maxNodes": 4}
    assert pools["cpu"]["track"] is None and pools["cpu"]["lnc"] is None
    # trn2-dev lists trn2.3xlarge and, while EC2's recorded offerings have none in us-east-2, the
    # trn2.48xlarge fallback: its per-node exports are the largest type's, without EFA (one node)
    assert pools["trn2-dev"]["instanceTypes"] == ["trn2.3xlarge", "trn2.48xlarge"]
    assert {k: pools["trn2-dev"][k] for k in ("lnc", "neuronCoresPerNode", "track", "efaPerNode", "maxNodes")} == {
        "lnc": 2, "neuronCoresPerNode": 64, "track": "native", "efaPerNode": 0, "maxNodes": 1}
    assert out["neuronTracks"] == {"xla": [], "native": ["trn2-efa", "trn2-block", "trn2-dev"]}
    assert out["region"] == "us-east-2"


def test_trn2_stack_nodeclasses_and_interruption_rule():
    result = rendered_platform(STACK)
    classes = {r.inputs["metadata"]["name"]: r.inputs["spec"]
               for r in result.by_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")}
    assert "NEURON_LOGICAL_NC_CONFIG=2" in classes["trn2-efa"]["userData"]
    assert classes["trn2-block"]["capacityReservationSelectorTerms"] == [
        {"id": BASE[POOLS][1]["capacityBlockIds"][0]}]
    assert classes["trn2-efa"]["instanceStorePolicy"] == "RAID0"  # 4 x 1.9 TB NVMe
    rules = {r.name: json.loads(r.inputs["eventPattern"]) for r in result.by_type("aws:cloudwatch/eventRule:EventRule")}
    assert rules["karpenter-capacity-reservation-interruption"] == {
        "source": ["aws.ec2"], "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"]}
    target = result.one("aws:cloudwatch/eventTarget:EventTarget", "karpenter-capacity-reservation-interruption")
    assert target.inputs["arn"] == result.one("aws:sqs/queue:Queue", "karpenter-interruption").state["arn"]


def test_trn2_stack_cost_prices_the_block_pool_at_the_block_rate():
    report = cost.estimate_platform(config.load_stack_file(Path(__file__).resolve().parents[1], STACK))
    pools = {p.name: p for p in report.pools}
    assert pools["trn2-efa"].per_node_hour == pytest.approx(44.7013) and not pools["trn2-efa"].capacity_block
    assert pools["trn2-block"].per_node_hour == pytest.approx(35.7632) and pools["trn2-block"].capacity_block
    text = report.format()
    assert "trn2-block" in text and "(Capacity Block rate: paid up front for the whole block)" in text
    assert text.count("Capacity Block rate") == 1
