"""Schedulability (trnctl/cluster/scheduling.py) on today's stacks, and one-object breaks."""
from __future__ import annotations

import pytest

from infra import network
from infra.config import NodePoolConfig
from tests.cluster_helpers import edit, mandatory, model, rules
from trnctl.cluster import scheduling
from trnctl.operators import karpenter


@pytest.fixture(scope="module")
def today():
    return model("dev-usw2", "ray-pretrain-usw2", "nemo-pretrain-usw2", "llm-serve-usw2", "compile-usw2")


def test_every_pod_of_todays_stacks_has_a_pool_and_an_instance_type(today):
    assert today.pods, "no pods: the check would pass vacuously"
    assert mandatory(scheduling.check(today)) == []
    assert mandatory(scheduling.check(model("dev-trn2-use2", "titan-pretrain-use2"))) == []


def test_karpenter_allocatable_of_a_trn1_32xlarge():
    alloc = karpenter.allocatable("trn1.32xlarge")
    # 512 GiB - ceil(7.5%) VM overhead - kube-reserved (11 MiB x 247 ENI-limited pods + 255 MiB) - 100 MiB eviction;
    # 247 = 5 ENIs on the default network card x (50 IPv4 per ENI - 1) + 2
    assert alloc["pods"] == 247
    assert alloc["memory"] == (524288 - 39322 - (11 * 247 + 255) - 100) * 2**20
    assert alloc["cpu"] == pytest.approx(128 - (0.06 + 0.01 + 0.01 + 0.31))
    assert alloc["vpc.amazonaws.com/efa"] == 8


def test_eni_limited_pods_reserve_more_memory_on_inf2_24xlarge_and_less_on_trn2_48xlarge():
    # 15 ENIs x 49 + 2 = 737 pods: 8362 MiB kube-reserved, far above the old 250-pod bound
    assert karpenter.allocatable("inf2.24xlarge")["pods"] == 737
    assert karpenter.allocatable("trn2.48xlarge")["pods"] == 2 * 49 + 2
    assert karpenter.allocatable("trn3.48xlarge")["pods"] == 250  # no EC2 network facts: the EKS cap


def test_the_platform_exports_what_the_cluster_model_computes(today):
    """The per-pool schedulable outputs and the scheduling rule come from the same Karpenter model
    over the same DaemonSets (the rendered neuron-monitor included)."""
    outputs = today.platform.outputs["nodePools"]
    for pool in scheduling.pools(today):
        room = scheduling.schedulable(today, pool, scheduling.largest_type(pool))
        assert outputs[pool.name]["schedulableMemoryMiBPerNode"] == int(room["memory"] // 2**20), pool.name
        assert outputs[pool.name]["schedulableMilliCpuPerNode"] == int(room["cpu"] * 1000), pool.name
    # trn1.32xlarge: 481894 MiB allocatable - node-exporter 64 - neuron-monitor 128 + 48 MiB - burn-in 256 MiB
    assert outputs["trn1-efa"]["schedulableMemoryMiBPerNode"] == 481894 - 64 - 176 - 256
    assert outputs["trn1-efa"]["schedulableMilliCpuPerNode"] == 128000 - 390 - (50 + 25 + 100 + 250 + 20) - 100


def test_training_pods_fill_the_node_karpenter_launches_exactly(today):
    outputs = today.platform.outputs["nodePools"]["trn1-efa"]
    job = next(o for o in today.workloads[0].objects + today.workloads[1].objects
               if o["kind"] == "MPIJob" and o["metadata"]["name"] == "nemo-pretrain-usw2-train")
    requests = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests["memory"] == f"{outputs['schedulableMemoryMiBPerNode']}Mi"
    assert requests["cpu"] == str(outputs["schedulableMilliCpuPerNode"] // 1000)  # whole cores (workloads/common.py node_share)


@pytest.mark.parametrize("key,extra", [("memory", 2**20), ("cpu", 0.001)])
def test_one_unit_above_the_schedulable_room_fails_the_render(today, key, extra):
    """1Mi (or 1m CPU) more than Karpenter's first node of the type offers after the DaemonSets: mandatory."""
    room = scheduling.schedulable(today, next(p for p in scheduling.pools(today) if p.name == "trn1-efa"), "trn1.32xlarge")

    def grow(job):
        res = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]
        value = f"{int(room['memory'] // 2**20) + 1}Mi" if key == "memory" else f"{int(room['cpu'] * 1000) + 1}m"
        res["requests"][key] = res["limits"][key] = value
    found = rules(scheduling.check(edit(today, "MPIJob ml-shared/nemo-pretrain-usw2-train", grow)), "scheduling/does-not-fit")
    assert found and all(f.severity == "mandatory" for f in found)
    message = found[0].message
    assert "nemo-pretrain-usw2-train-worker" in message and "pool trn1-efa" in message and "trn1.32xlarge" in message
    if key == "memory":
        assert f"memory {int(room['memory'] // 2**20) + 1}Mi" in message and f"{int(room['memory'] // 2**20)}Mi" in message


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
    assert len(found) == 1 and "memory 204800Mi (200.0Gi) requested" in found[0].message


def test_a_rendered_daemonset_the_exported_room_does_not_count_fails_the_render(today):
    """A DaemonSet on the trn1 pools that the platform's outputs did not count: the exported room is too big."""
    def heavier(ds):
        ds["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "1Gi"
    assert rules(scheduling.check(today), "scheduling/exported-room") == []
    found = rules(scheduling.check(edit(today, "DaemonSet kube-system/neuron-monitor", heavier)), "scheduling/exported-room")
    assert {f.objects[0] for f in found} == {"NodePool trn1-efa", "NodePool trn1-single", "NodePool inf2"}
    assert all(f.severity == "mandatory" and "schedulableMemoryMiBPerNode" in f.message for f in found)
