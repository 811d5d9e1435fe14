"""Stack config: bad values fail with one clear message naming the key and the allowed
values, before any resource is registered. Pure planning functions are checked directly."""
from __future__ import annotations

import copy
import ipaddress

import pytest

from infra import config, network
from stackfiles import ConfigError
from tests.platform_helpers import assert_rejected_before_any_resource, stack_config

BASE = stack_config("platform", "dev-usw2")


def with_changes(**changes) -> dict:
    cfg = copy.deepcopy(BASE)
    for key, value in changes.items():
        full = key if key.startswith("aws:") else f"trn-platform:{key}"
        if value is None:
            cfg.pop(full, None)
        else:
            cfg[full] = value
    return cfg


def pools_with(index: int, **changes) -> list:
    pools = copy.deepcopy(BASE["trn-platform:nodePools"])
    pools[index].update(changes)
    return pools


BAD_CONFIGS = {
    "unknown region": (with_changes(**{"aws:region": "mars-east-1"}), "aws:region: 'mars-east-1' has no offering data"),
    "unknown instance type": (with_changes(nodePools=pools_with(1, instanceTypes=["trn1.64xlarge"])),
                              "nodePools[1].instanceTypes[0]: 'trn1.64xlarge' is not allowed for family trn1; "
                              "allowed values: trn1.2xlarge, trn1.32xlarge"),
    "pool limit below preset": (with_changes(nodePools=pools_with(1, maxNodes=2)),
                                "nodePools (trn1-efa).maxNodes: 2 is below what workload preset nemo-llama2-7b needs (4 x trn1.32xlarge)"),
    "fsx capacity": (with_changes(fsx={"deploymentType": "PERSISTENT_2", "storageCapacityGiB": 1300}),
                     "fsx.storageCapacityGiB: 1300 is not allowed for PERSISTENT_2; allowed: 1200 or a multiple of 2400"),
    "fsx throughput": (with_changes(fsx={"perUnitStorageThroughput": 200}),
                       "fsx.perUnitStorageThroughput: 200 is not allowed for PERSISTENT_2; allowed values: 125, 250, 500, 1000"),
    "kubernetes version": (with_changes(kubernetesVersion="1.27"),
                           "kubernetesVersion: '1.27' is not allowed; allowed values: 1.32, 1.33, 1.34"),
    "missing required key": (with_changes(nodePools=None), "nodePools: required key is missing"),
    "wrong type": (with_changes(nodePools=pools_with(0, maxNodes="two")), "nodePools[0].maxNodes: expected int, got str 'two'"),
    "unknown key": (with_changes(fsx={"storageCapacityGib": 1200}), "fsx.storageCapacityGib: unknown key; did you mean "
                                                                         "storageCapacityGiB? known keys:"),
    "efa on a type without efa": (with_changes(nodePools=pools_with(0, efa=True)),
                                  "nodePools[0] (trn1-single).efa: trn1.2xlarge have no EFA interfaces; EFA pools allow: trn1.32xlarge"),
    "open public endpoint": (with_changes(endpoint={"publicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]}),
                             "endpoint.publicAccessCidrs: a public API endpoint must be limited"),
    "bad family": (with_changes(nodePools=pools_with(2, family="gpu")), "nodePools[2].family: 'gpu' is not allowed; allowed values: trn1, trn1n, inf2, trn2, trn3, cpu"),  # noqa: E501 (expected message)
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_before_any_resource(case, tmp_path):
    cfg, expected = BAD_CONFIGS[case]
    assert_rejected_before_any_resource(tmp_path, "platform", cfg, expected, ConfigError)


def test_region_without_accelerator_names_the_pool_and_the_offering_azs(tmp_path):
    """us-east-2 offers trn1.2xlarge in use2-az3 only; forcing two other AZs must fail with
    the AZ IDs that do offer it."""
    cfg = with_changes(**{"aws:region": "us-east-2",
                          "network": {"availabilityZoneIds": ["use2-az1", "use2-az2"]}})
    assert_rejected_before_any_resource(
        tmp_path, "platform", cfg, "nodePools (trn1-single): none of the chosen AZ IDs ['use2-az1', 'use2-az2'] "
        "offers trn1.2xlarge; AZ IDs offering them: use2-az3", ConfigError)


def test_family_not_in_region_is_reported():
    raw, _ = config.raw_from_bag(with_changes())
    with pytest.raises(ConfigError) as err:
        config.parse(raw, stack="x", region="sa-east-1")
    # sa-east-1 has offering data (inf2) since the snapshot covers every Neuron region; trn1 is not there
    assert "nodePools[0] (trn1-single), nodePools[1] (trn1-efa).family: trn1 not offered in sa-east-1" in str(err.value)


def test_all_problems_are_reported_together():
    raw, region = config.raw_from_bag(with_changes(kubernetesVersion="1.20", fsx={"storageCapacityGiB": 5}))
    with pytest.raises(ConfigError) as err:
        config.parse(raw, stack="x", region=region)
    assert len(err.value.problems) == 2


def test_limits_size_the_pool_for_exactly_max_nodes_of_the_largest_type():
    cfg = config.load_stack_file(".", "dev-usw2")
    assert cfg.pool("trn1-efa").limits == {"cpu": "512", "memory": "2048Gi", "aws.amazon.com/neuron": "64"}
    assert cfg.pool("inf2").limits == {"cpu": "128", "memory": "512Gi", "aws.amazon.com/neuron": "4"}


def test_subnet_plan_is_disjoint_and_inside_the_vpc():
    plans = network.plan_subnets("10.40.0.0/16", ["a", "b", "c", "d"])
    nets = [ipaddress.ip_network(c) for p in plans for c in (p.public_cidr, p.private_cidr)]
    vpc = ipaddress.ip_network("10.40.0.0/16")
    assert all(n.subnet_of(vpc) for n in nets)
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    assert ipaddress.ip_network(plans[0].private_cidr).num_addresses == 8192  # a /19 per AZ


def test_az_choice_prefers_zones_offering_accelerators():
    cfg = config.load_stack_file(".", "dev-usw2")
    offers = {"trn1.2xlarge": {"usw2-az1", "usw2-az4"}, "trn1.32xlarge": {"usw2-az4"},
              "inf2.xlarge": {"usw2-az2", "usw2-az4"}, "inf2.8xlarge": {"usw2-az2"}}
    chosen = network.choose_az_ids(offers, cfg.node_pools, cfg.network, ["usw2-az1", "usw2-az2", "usw2-az3", "usw2-az4"])
    assert chosen[0] == "usw2-az4" and len(chosen) == 2
    assert network.pool_zone_ids(cfg.pool("trn1-efa"), offers, chosen) == ["usw2-az4"]


def test_platform_capacity_presets_agree_with_the_workloads():
    """infra/catalog.py sizes pools for the workload presets; they must say the same."""
    from infra import catalog
    from tests.platform_helpers import stack_config
    from trn_workloads.nemo import PRESETS

    assert catalog.WORKLOAD_CAPACITY["nemo-llama2-7b"].nodes == PRESETS["llama2-7b"].nodes == 4
    assert catalog.WORKLOAD_CAPACITY["nemo-small"].nodes == PRESETS["small"].nodes == 1
    ray = stack_config("workloads", "ray-pretrain-usw2")["trn-workloads:ray"]
    assert catalog.WORKLOAD_CAPACITY["ray-llama2-7b"].nodes == ray["workers"]
    lora = stack_config("workloads", "lora-finetune-usw2")["trn-workloads:lora"]
    assert catalog.instance_type(catalog.WORKLOAD_CAPACITY["lora-llama3-8b"].instance_type).neuron_devices == lora["neuronDevices"]
