"""Order (trnctl/cluster/order.py): create/destroy order from each stack's dependency graph."""
from __future__ import annotations

import copy

import pytest

from tests.cluster_helpers import mandatory, model, rules
from trnctl.cluster import Model, order


@pytest.fixture(scope="module")
def today():
    return model("dev-usw2", "ray-pretrain-usw2", "nemo-pretrain-usw2", "llm-serve-usw2")


def _record(m: Model, typ: str, name_part: str) -> dict:
    hits = [r for r in m.platform.records if r["type"] == typ and name_part in r["name"]]
    assert len(hits) == 1, [r["name"] for r in hits]
    return hits[0]


def _without_dependency(m: Model, typ: str, name_part: str, on: str) -> Model:
    """`m` with one record's dependency on the resource named `on` (and everything it alone brought) removed."""
    m = Model(copy.deepcopy(m.platform), m.workloads)
    urns = {r["name"]: r["urn"] for r in m.platform.records}
    rec = _record(m, typ, name_part)
    rec["dependsOn"] = [d for d in rec["dependsOn"] if d != urns[on]]
    # also cut the transitive route through the CRD release / node class, so only the edge under test is gone
    rec["dependsOn"] = [d for d in rec["dependsOn"] if urns[on] not in order.ancestors(m.platform).get(d, set())]
    return m


def test_todays_stacks_create_and_destroy_in_order(today):
    assert mandatory(order.check(today)) == []
    # the graph is non-trivial: a NodePool depends on the Karpenter controller and its CRDs
    anc = order.ancestors(today.platform)
    pool = _record(today, "kubernetes:karpenter.sh/v1:NodePool", "trn1-efa")
    names = {r["urn"]: r["name"] for r in today.platform.records}
    assert {"karpenter", "karpenter-crd"} <= {names[u] for u in anc[pool["urn"]]}


def test_a_node_pool_not_depending_on_the_karpenter_controller_is_reported(today):
    broken = _without_dependency(today, "kubernetes:karpenter.sh/v1:NodePool", "pools-trn1-efa", "karpenter")
    found = rules(order.check(broken), "order/missing-dependency")
    assert len(found) == 1 and "NodePool trn1-efa" in found[0].message and "(karpenter)" in found[0].message


def test_an_fsx_volume_not_depending_on_the_csi_driver_is_reported(today):
    broken = _without_dependency(today, "kubernetes:core/v1:PersistentVolume", "storage-pv", "storage-csi")
    found = rules(order.check(broken), "order/missing-dependency")
    assert any("PersistentVolume fsx-shared-pv" in f.message and "FSx CSI driver" in f.message for f in found)


def test_an_object_not_depending_on_its_namespace_is_reported(today):
    broken = _without_dependency(today, "kubernetes:networking.k8s.io/v1:NetworkPolicy", "workload-ingress", "storage-ns")
    found = rules(order.check(broken), "order/missing-dependency")
    assert len(found) == 1 and "namespace ml-shared" in found[0].message


def test_a_workload_custom_resource_needs_its_operator_in_the_platform(today):
    assert order.check_workload_kinds(today) == []
    m = Model(copy.deepcopy(today.platform), today.workloads)
    m.platform.records = [r for r in m.platform.records if not (r["type"].startswith("kubernetes:kustomize/")
                                                                and "mpi-operator" in r["name"])]
    found = rules(order.check(m), "order/missing-operator")
    assert found and all("MPIJob" in f.message and "needs mpi-operator" in f.message for f in found)
