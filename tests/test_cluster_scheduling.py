"""Schedulability (trnctl/cluster/scheduling.py) on today's stacks, and one-object breaks."""
from __future__ import annotations

import pytest

from infra import network
from infra.config import NodePoolConfig
from tests.cluster_helpers import edit, mandatory, model, rules
from trnctl.cluster import scheduling


@pytest.fixture(scope="module")
def today():
    return model("dev-usw2", "ray-pretrain-usw2", "nemo-pretrain-usw2", "llm-serve-usw2", "compile-usw2")


def test_every_pod_of_todays_stacks_has_a_pool_and_an_instance_type(today):
    assert today.pods, "no pods: the check would pass vacuously"
    assert mandatory(scheduling.check(today)) == []
    assert mandatory(scheduling.check(model("dev-trn2-use2", "titan-pretrain-use2"))) == []


def test_karpenter_allocatable_of_a_trn1_32xlarge():
    shape = scheduling.allocatable("trn1.32xlarge")
    # 512 GiB - 7.5% VM overhead - (11 x 250 + 255) MiB kube-reserved - 100 MiB eviction threshold
    assert shape.allocatable["memory"] == (524288 - 39322 - 3005 - 100) * 2**20
    assert shape.allocatable["cpu"] == pytest.approx(128 - (0.06 + 0.01 + 0.01 + 124 * 0.0025))
    assert shape.allocatable["vpc.amazonaws.com/efa"] == 8


def test_a_multi_node_efa_pool_in_two_zones_fails_the_gang(today):
    two_zones = edit(today, "NodePool trn1-efa", lambda pool: next(
        r for r in pool["spec"]["template"]["spec"]["requirements"] if r["key"] == "topology.k8s.aws/zone-id"
    ).update(values=["usw2-az1", "usw2-az4"]))
    found = rules(scheduling.check(two_zones), "scheduling/efa-zones")
    gangs = sorted(f.objects[0] for f in found)
    assert gangs == ["ml-shared/MPIJob/nemo-pretrain-usw2-precompile", "ml-shared/MPIJob/nemo-pretrain-usw2-train",
                     "ml-shared/RayJob/ray-pretrain-usw2-data", "ml-shared/RayJob/ray-pretrain-usw2-precompile",
                     "ml-shared/RayJob/ray-pretrain-usw2-train"]
    assert all("usw2-az1, usw2-az4" in f.message and f.severity == "mandatory" for f in found)


def test_zone_affinity_on_the_gang_also_holds_it_in_one_zone(today):
    def two_zones(pool):
        next(r for r in pool["spec"]["template"]["spec"]["requirements"]
             if r["key"] == "topology.k8s.aws/zone-id").update(values=["usw2-az1", "usw2-az4"])

    def zone_affinity(job):
        worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]
        worker["spec"]["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "topologyKey": "topology.kubernetes.io/zone",
            "labelSelector": {"matchLabels": dict(worker["metadata"]["labels"])}}]}}
    m = edit(edit(today, "NodePool trn1-efa", two_zones), "MPIJob ml-shared/nemo-pretrain-usw2-train", zone_affinity)
    gangs = [f.objects[0] for f in rules(scheduling.check(m), "scheduling/efa-zones")]
    assert "ml-shared/MPIJob/nemo-pretrain-usw2-train" not in gangs and gangs


def test_the_platform_gives_each_multi_node_efa_pool_one_zone():
    pool = NodePoolConfig(name="efa", family="trn1", instance_types=("trn1.32xlarge",), max_nodes=4, efa=True)
    offers = {"trn1.32xlarge": {"usw2-az1", "usw2-az4"}}
    assert network.pool_zone_ids(pool, offers, ["usw2-az4", "usw2-az1"]) == ["usw2-az4"]
    single = NodePoolConfig(name="one", family="trn1", instance_types=("trn1.32xlarge",), max_nodes=1, efa=False)
    assert network.pool_zone_ids(single, offers, ["usw2-az4", "usw2-az1"]) == ["usw2-az4", "usw2-az1"]


def test_a_pool_limit_below_the_gang_fails_it(today):
    limited = edit(today, "NodePool trn1-efa", lambda pool: pool["spec"]["limits"].update({"aws.amazon.com/neuron": "48"}))
    found = rules(scheduling.check(limited), "scheduling/pool-limit")
    assert any("nemo-pretrain-usw2-train" in f.objects[0] and "needs 4 trn1.32xlarge nodes" in f.message
               and "(3 nodes)" in f.message for f in found)


def test_a_selector_no_pool_carries_leaves_the_pod_pending(today):
    def wrong_pool(dep):
        dep["spec"]["template"]["spec"]["nodeSelector"] = {"trn-platform/pool": "inf2-large"}
    found = rules(scheduling.check(edit(today, "Deployment ml-shared/llm-serve-usw2", wrong_pool)), "scheduling/no-pool")
    assert len(found) == 1 and "llm-serve-usw2" in found[0].message


def test_requests_above_the_node_are_certain_to_fail(today):
    def too_big(dep):
        dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "200Gi"
        dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "200Gi"
    found = mandatory(rules(scheduling.check(edit(today, "Deployment ml-shared/llm-serve-usw2", too_big)),
                            "scheduling/does-not-fit"))
    assert len(found) == 1 and "memory 200.0Gi requested" in found[0].message
