"""Reachability (trnctl/cluster/reachability.py): NetworkPolicy semantics, and every flow the
platform needs against the `ml-shared` policy of today's stacks, with a broken case each."""
from __future__ import annotations

import pytest

from tests.cluster_helpers import edit, mandatory, model, rules
from trnctl.cluster import Model, Render
from trnctl.cluster import reachability as reach
from trnctl.cluster.reachability import ANY_PORT, Endpoint, allowed

POLICY = "NetworkPolicy ml-shared/workload-ingress"


def _model(*objects: dict) -> Model:
    return Model(Render("trn-platform", "t", [], list(objects)))


def _ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _policy(ns: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": ns}, "spec": spec}


WEB = Endpoint("Pod apps/web", "apps", {"app": "web"}, {"http": (8080, "TCP")})
PROM = Endpoint("Prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, {})
OTHER = Endpoint("Pod default/x", "default", {}, {})


def test_no_policy_admits_everything_and_an_empty_ingress_denies_all():
    assert allowed(_model(), OTHER, WEB, 8080)
    deny = _policy("apps", {"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not allowed(_model(deny), OTHER, WEB, 8080)
    assert not allowed(_model(deny), Endpoint("Pod apps/y", "apps", {}, {}), WEB, 8080)


def test_namespace_selector_uses_the_automatic_metadata_name_label():
    policy = _policy("apps", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}]})
    m = _model(policy, _ns("monitoring"))  # the Namespace object carries no labels of its own
    assert allowed(m, PROM, WEB, 8080)
    assert not allowed(m, Endpoint("Grafana", "monitoring", {"app.kubernetes.io/name": "grafana"}, {}), WEB, 8080)
    assert not allowed(m, OTHER, WEB, 8080)


def test_pod_selector_alone_means_the_policy_namespace():
    policy = _policy("apps", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]})
    assert allowed(_model(policy), Endpoint("Pod apps/w2", "apps", {"app": "web"}, {}), WEB, 8080)
    assert not allowed(_model(policy), Endpoint("Pod other/w", "other", {"app": "web"}, {}), WEB, 8080)


def test_named_ports_resolve_on_the_destination_pod_and_any_port_needs_an_unrestricted_rule():
    policy = _policy("apps", {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})
    m = _model(policy)
    assert allowed(m, OTHER, WEB, 8080)
    assert not allowed(m, OTHER, WEB, 9090)
    assert not allowed(m, OTHER, Endpoint("Pod apps/z", "apps", {}, {"http": (80, "TCP")}), 8080)
    assert not allowed(m, OTHER, WEB, ANY_PORT)
    ranged = _policy("apps", {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8100}]}]})
    assert allowed(_model(ranged), OTHER, WEB, 8080) and not allowed(_model(ranged), OTHER, WEB, 8101)


def test_egress_isolation_of_the_source_counts_too():
    egress = _policy("default", {"podSelector": {}, "policyTypes": ["Egress"], "egress": []})
    assert not allowed(_model(egress), OTHER, WEB, 8080)
    assert allowed(_model(egress), WEB, OTHER, 8080)


@pytest.fixture(scope="module")
def today() -> Model:
    return model("dev-usw2", "ray-pretrain-usw2", "llm-serve-usw2", "nemo-pretrain-usw2")


def test_every_platform_flow_holds_on_todays_stacks_and_nothing_else_opens(today):
    flows = reach.needed_flows(today)
    kinds = {f.why.split(" ")[0] + " " + f.why.split(" ")[1] for f in flows}
    # the flows exist (a model that finds no pods would pass vacuously)
    assert any(f.src.name.startswith("Prometheus") and f.dst.name.startswith("Pod ml-shared/ray-pretrain-usw2-train-")
               and "head" in f.dst.name for f in flows)
    assert any(f.src.name.startswith("Prometheus") and "llm-serve" in f.dst.name for f in flows)
    assert any(f.src.name.startswith("KubeRay operator") and f.port == 8265 for f in flows)
    assert any(f.why.startswith("KEDA queries Prometheus") for f in flows)
    assert any(f.why.startswith("gang MPIJob/nemo-pretrain-usw2-train") for f in flows), kinds
    assert reach.check(today) == []


def test_each_rayjob_submitter_reaches_its_own_heads_dashboard(today):
    # KubeRay creates each RayJob's cluster (rayClusterSpec) and a submitter pod that calls the dashboard
    # address it is given (env RAY_DASHBOARD_ADDRESS), resolved by cluster DNS to that cluster's head.
    flows = [f for f in reach.needed_flows(today) if "RayJob submitter" in f.why]
    assert len(flows) == 3 and all(f.port == 8265 and "head" in f.dst.name for f in flows)
    for step in ("data", "precompile", "train"):
        assert any(f"ray-pretrain-usw2-{step}-" in f.src.name and f"ray-pretrain-usw2-{step}-" in f.dst.name for f in flows)


def test_the_old_same_namespace_only_policy_blocks_prometheus_and_the_kuberay_operator(today):
    broken = edit(today, POLICY, lambda p: p["spec"].update(ingress=[{"from": [{"podSelector": {}}]}]))
    blocked = rules(reach.check(broken), "reachability/blocked")
    text = "\n".join(str(f) for f in blocked)
    assert "Prometheus scrapes Pod ml-shared/llm-serve-usw2" in text and "port metrics (8000)" in text
    assert "Prometheus scrapes Pod ml-shared/ray-pretrain-usw2-train-" in text and "(8080)" in text
    assert "the KubeRay operator polls the Ray dashboard" in text and "port 8265" in text
    assert all(f.severity == "mandatory" for f in blocked)


def test_a_native_sidecars_named_port_is_not_admitted_by_name(today):
    """The progress sidecar (an init container with restartPolicy Always) serves `metrics` on 9400; the EKS network
    policy controller resolves a named port among the containers only, so a policy admitting Prometheus on
    `metrics` alone blocks the step counter of the nemo launcher and the ray submitter (and with it the hang
    alert). The policy also admits the number (infra/storage.py workload_ingress_policy)."""
    def by_name_only(policy):
        policy["spec"]["ingress"][1]["ports"] = [{"protocol": "TCP", "port": "metrics"}]
    blocked = rules(reach.check(edit(today, POLICY, by_name_only)), "reachability/blocked")
    text = "\n".join(str(f) for f in blocked)
    assert "Prometheus scrapes Pod ml-shared/nemo-pretrain-usw2-train-launcher" in text and "(9400)" in text, text
    assert "Prometheus scrapes Pod ml-shared/ray-pretrain-usw2-train-" in text, text
    assert len(blocked) == 2, text  # the two sidecars; the containers' `metrics` ports still resolve by name
    sidecar = Endpoint("Pod apps/s", "apps", {}, {}, {"metrics": (9400, "TCP")})
    named = _policy("apps", {"podSelector": {}, "ingress": [{"ports": [{"port": "metrics"}]}]})
    assert not allowed(_model(named), OTHER, sidecar, 9400)


def test_a_prometheus_peer_without_ports_opens_more_than_scraping(today):
    def widen(policy):
        policy["spec"]["ingress"][1].pop("ports")
    over = rules(reach.check(edit(today, POLICY, widen)), "reachability/over-open")
    assert over and all("Prometheus" in f.message for f in over)
    assert any("port 8265" in f.message or "port 22" in f.message for f in over)


def test_a_peer_admitting_every_namespace_is_over_open(today):
    def any_namespace(policy):
        policy["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]
    over = mandatory(rules(reach.check(edit(today, POLICY, any_namespace)), "reachability/over-open"))
    assert any("any pod in namespace default" in f.message for f in over)
