"""The hang path's pieces in the rehearsal (trnctl/rehearse/hangwatch.py), without running pods: the rendered rule
with its windows compressed, the watchdog's settings from its rendered Deployment, label selectors, and the API
stand-in's authorization from the rendered RBAC (trnctl.operators.kubernetes.rbac_allows) and its conflicts. The
whole path runs in tests/test_rehearse_titan.py (and the nemo and ray rehearsals)."""
from __future__ import annotations

import copy

import pytest

from infra.monitoring import hang
from trnctl.operators import kubernetes
from trnctl.rehearse import hangwatch
from trnctl.rehearse.hangwatch import RehearsalApi, compressed, compressed_expression, selector_matches
from tests.platform_helpers import rendered_platform
from trn_workloads import watchdog
from trn_workloads.kube_api import ApiError


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return [m for _, m in rendered_platform("dev-usw2").manifests]


def test_durations_compressed():
    assert compressed("20m") == "12000ms" and compressed("2m") == "1200ms" and compressed("1h30m", 60) == "90000ms"
    assert compressed_expression("increase(x[20m]) > 0 and (x offset 20m) or y[5m:1m]") == \
        "increase(x[12000ms]) > 0 and (x offset 12000ms) or y[5m:1m]"  # subqueries are not used by the rule


def test_rendered_hang_rule_is_taken_and_only_its_windows_change(objects):
    group = hangwatch.hang_rule_group(objects)
    [rule] = [r for r in group["rules"] if r["alert"] == hang.ALERT]
    deployed = hang.hung_expression("20m")  # dev-usw2's trainingHangAfter
    assert rule["expr"] == compressed_expression(deployed) != deployed
    assert rule["for"] == "1200ms"


def test_watchdog_settings_come_from_its_deployment(objects):
    s, sa = hangwatch.watchdog_settings(objects)
    dep = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == hang.WATCHDOG)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert s.state_namespace == dep["metadata"]["namespace"] and s.state_configmap == env["STATE_CONFIGMAP"]
    assert s.cooldown_seconds == float(env["COOLDOWN_SECONDS"]) / hangwatch.TIME_SCALE
    assert s.max_restarts == int(env["MAX_RESTARTS"])
    assert sa == (dep["metadata"]["namespace"], hang.WATCHDOG)


@pytest.mark.parametrize("selector, expected", [
    ("a=1,b=2", True), ("a==1", True), ("a=2", False), ("a!=2", True), ("c!=1", True), ("a=1,c=3", False), ("", True)])
def test_equality_selectors(selector, expected):
    assert selector_matches(selector, {"a": "1", "b": "2"}) is expected


def test_set_based_selectors_are_refused_not_guessed():
    with pytest.raises(ValueError, match="only equality-based"):
        selector_matches("a in (1,2)", {"a": "1"})


def test_rbac_of_the_rendered_watchdog(objects):
    _, sa = hangwatch.watchdog_settings(objects)
    workload_ns = next(b["metadata"]["namespace"] for b in objects if b["kind"] == "RoleBinding"
                       and b["metadata"]["name"] == hang.WATCHDOG and b["metadata"]["namespace"] != sa[0])

    def allows(verb, resource, ns, name=""):
        return kubernetes.rbac_allows(objects, sa, verb, "", resource, ns, name)

    assert allows("list", "pods", workload_ns) and allows("delete", "pods", workload_ns, "p")
    assert not allows("list", "pods", sa[0]) and not allows("get", "pods", workload_ns, "p")
    assert allows("get", "configmaps", sa[0], hang.WATCHDOG_STATE)
    assert allows("update", "configmaps", sa[0], hang.WATCHDOG_STATE)
    assert not allows("get", "configmaps", sa[0], "other") and not allows("list", "configmaps", sa[0])
    assert not kubernetes.rbac_allows(objects, (sa[0], "default"), "list", "", "pods", workload_ns)


class _NoPods:
    def live_pods(self) -> list[dict]:
        return []


def api(objects) -> RehearsalApi:
    s, sa = hangwatch.watchdog_settings(objects)
    state = copy.deepcopy(next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == s.state_configmap))
    state["metadata"]["resourceVersion"] = "1"
    return RehearsalApi("https://kubernetes.default.svc", rehearsal=_NoPods(), objects=objects, service_account=sa,
                        configmaps={(s.state_namespace, s.state_configmap): state}), s


def test_api_stand_in_answers_the_watchdog_client_and_refuses_what_rbac_does_not_grant(objects):
    kube, s = api(objects)
    cm = kube.get_configmap(s.state_namespace, s.state_configmap)
    kube.replace_configmap(s.state_namespace, s.state_configmap, {**cm, "data": {"k": "1"}})
    with pytest.raises(ApiError) as stale:  # the resourceVersion read before the update: a conflict
        kube.replace_configmap(s.state_namespace, s.state_configmap, {**cm, "data": {"k": "2"}})
    assert stale.value.status == 409
    with pytest.raises(ApiError) as forbidden:
        kube.list_pods(s.state_namespace, "a=b")
    assert forbidden.value.status == 403 and "cannot list resource \"pods\"" in str(forbidden.value)
    with pytest.raises(ApiError) as missing:
        kube.delete_pod(next(b["metadata"]["namespace"] for b in objects if b["kind"] == "RoleBinding"
                             and b["metadata"]["name"] == hang.WATCHDOG and b["metadata"]["namespace"] != s.state_namespace),
                        "gone")
    assert missing.value.status == 404
    assert watchdog.run_once(kube, lambda q: {"status": "success", "data": {"result": []}}, s, 0.0) == []
