"""Burn-in gate: the parsers on documented command outputs (tests/fixtures/burnin/README.md),
the checks for healthy and broken nodes of each family, the taint/replace decisions and
their hourly bound, the program's actions against a recorded API, and the specs (NodePool
startupTaints, DaemonSet, RBAC pinned) as the platform renders them."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from infra import burnin, catalog, config, nodepools, versions
from stackfiles import ConfigError
from tests.agent_helpers import import_with_standard_library_only
from tests.platform_helpers import PLATFORM_STACKS, rendered_platform, stack_config
from trn_workloads.burnin import __main__ as program
from trn_workloads.burnin import checks, decisions, parsers
from trn_workloads import rate_bound
from trn_workloads.kube_api import ApiError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "burnin"
BASE = stack_config("platform", "dev-usw2")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def pool(family: str, instance_type: str, *, efa: bool = False, lnc: int | None = None, **burn_in) -> config.NodePoolConfig:
    setting = catalog.family_lnc(family)
    return config.NodePoolConfig(name=f"{family}-pool", family=family, instance_types=(instance_type,), max_nodes=4,
                                 efa=efa, lnc=lnc or (setting.default if setting else None),
                                 burn_in=config.BurnInConfig(enabled=True, **burn_in))


def expect(p: config.NodePoolConfig) -> checks.Expectations:
    return checks.Expectations.from_dict(burnin.expectations(p, p.instance_types[0]))


TRN1 = pool("trn1", "trn1.32xlarge", efa=True)
TRN2 = pool("trn2", "trn2.48xlarge", efa=True)
INF2 = pool("inf2", "inf2.xlarge")


# --------------------------------------------------------------------------- parsers


def test_neuron_ls_json_of_each_family():
    trn2 = parsers.parse_neuron_ls(fixture("neuron-ls-trn2.48xlarge.json"))
    assert [(d.index, d.cores, d.memory_bytes, d.lnc) for d in trn2[:1]] == [(0, 4, 96 * 2**30, 2)]
    assert len(trn2) == 16 and sum(d.cores for d in trn2) == 64
    trn1 = parsers.parse_neuron_ls(fixture("neuron-ls-trn1.32xlarge.json"))
    assert len(trn1) == 16 and {d.cores for d in trn1} == {2} and {d.lnc for d in trn1} == {None}
    with pytest.raises(ValueError, match="expected a JSON list"):
        parsers.parse_neuron_ls('{"neuron_device": 0}')


def test_fi_info_counts_devices_not_interfaces():
    text = fixture("fi-info-efa-trn1.32xlarge.txt")
    assert len(parsers.parse_fi_info(text)) == 24  # 8 devices x (efa rdm, efa-direct rdm, efa-direct dgram)
    assert len(parsers.efa_devices(text)) == 8
    assert parsers.efa_devices("") == []


def test_nccom_test_outputs():
    healthy = parsers.parse_nccom_test(fixture("nccom-test-allr-healthy.txt"))
    assert healthy.avg_bus_bandwidth_gbps == pytest.approx(40.6901) and not healthy.failures
    assert healthy.rows == [{"size_bytes": 33554432.0, "time_us": 768.0, "algbw_gbps": 40.69, "busbw_gbps": 40.69}]
    sweep = parsers.parse_nccom_test(fixture("nccom-test-allr-sweep.txt"))
    assert len(sweep.rows) == 11 and sweep.rows[-1]["busbw_gbps"] == 52.83
    assert parsers.parse_nccom_test(fixture("nccom-test-allg-time-avg.txt")).rows[-1]["time_us"] == 23.11
    failed = parsers.parse_nccom_test(fixture("nccom-test-allr-failed.txt"))
    assert failed.avg_bus_bandwidth_gbps is None and len(failed.failures) == 2


# --------------------------------------------------------------------------- checks: healthy nodes


@pytest.mark.parametrize("p, neuron_ls, efa", [
    (TRN1, "neuron-ls-trn1.32xlarge.json", "fi-info-efa-trn1.32xlarge.txt"),
    (TRN2, "neuron-ls-trn2.48xlarge.json", None),
    (INF2, "neuron-ls-inf2.xlarge.json", None),
], ids=["trn1.32xlarge", "trn2.48xlarge", "inf2.xlarge"])
def test_healthy_nodes_pass(p, neuron_ls, efa):
    e = expect(p)
    assert checks.check_devices(e, parsers.parse_neuron_ls(fixture(neuron_ls))) == []
    if efa:
        assert checks.check_efa(e, parsers.efa_devices(fixture(efa))) == []
    assert checks.check_collective(e, parsers.parse_nccom_test(fixture("nccom-test-allr-healthy.txt"))) == []


def test_expectations_are_the_catalog_facts_at_the_pool_lnc():
    assert burnin.expectations(TRN2, "trn2.48xlarge") == {
        "instanceType": "trn2.48xlarge", "neuronDevices": 16, "deviceMemoryGiB": 96.0, "neuronCores": 64, "lnc": 2,
        "efaDevices": 16, "busBandwidthFloorGBps": 20.0}
    at_lnc1 = burnin.expectations(pool("trn2", "trn2.48xlarge", efa=True, lnc=1), "trn2.48xlarge")
    assert (at_lnc1["neuronCores"], at_lnc1["lnc"]) == (128, 1)
    # A pool without EFA does not ask for EFA devices; a floor set in the stack wins.
    assert burnin.expectations(pool("trn1", "trn1.32xlarge", efa=False), "trn1.32xlarge")["efaDevices"] == 0
    custom = pool("trn1", "trn1.32xlarge", efa=True, bus_bandwidth_floor_gbps={"trn1.32xlarge": 35.0})
    assert burnin.expectations(custom, "trn1.32xlarge")["busBandwidthFloorGBps"] == 35.0


def test_every_instance_type_of_a_gated_family_can_be_burned_in():
    for family in config.BURN_IN_FAMILIES:
        for t in catalog.instance_types_of(family):
            if catalog.instance_type(t).neuron_devices:
                assert burnin.expectations(pool(family, t, efa=catalog.instance_type(t).efa_interfaces > 0), t)


# --------------------------------------------------------------------------- checks: broken nodes


def test_missing_device():
    devices = json.loads(fixture("neuron-ls-trn1.32xlarge.json"))
    del devices[7]  # a device the driver did not bring up
    problems = checks.check_devices(expect(TRN1), parsers.parse_neuron_ls(json.dumps(devices)))
    assert problems == ["neuron-ls lists 15 Neuron devices; trn1.32xlarge has 16",
                        "neuron-ls counts 30 NeuronCores; trn1.32xlarge at LNC 1 has 32"]


def test_wrong_device_memory():
    devices = json.loads(fixture("neuron-ls-trn2.48xlarge.json"))
    devices[3]["memory_size"] = 72 * 2**30  # one HBM stack missing
    problems = checks.check_devices(expect(TRN2), parsers.parse_neuron_ls(json.dumps(devices)))
    assert problems == ["Neuron device 3 reports 72.0 GiB of memory; trn2.48xlarge devices have 96 GiB"]


def test_wrong_lnc():
    problems = checks.check_devices(expect(pool("trn2", "trn2.48xlarge", efa=True, lnc=1)),
                                    parsers.parse_neuron_ls(fixture("neuron-ls-trn2.48xlarge.json")))
    assert problems == ["neuron-ls counts 64 NeuronCores; trn2.48xlarge at LNC 1 has 128",
                        "devices run at logical NeuronCore config 2; the pool sets LNC 1"]


def test_missing_efa_device():
    blocks = fixture("fi-info-efa-trn1.32xlarge.txt").split("provider: ")
    without_last = "provider: ".join(b for b in blocks if "rdmap128s0" not in b)  # device 8 gone
    problems = checks.check_efa(expect(TRN1), parsers.efa_devices(without_last))
    assert len(problems) == 1 and problems[0].startswith("fi_info -p efa lists 7 EFA devices")


def test_low_bandwidth_and_failed_collective():
    low = fixture("nccom-test-allr-healthy.txt").replace("40.69 ", "12.10 ").replace("40.6901", "12.1000")
    assert checks.check_collective(expect(TRN1), parsers.parse_nccom_test(low)) == [
        "nccom-test all-reduce bus bandwidth 12.1 GB/s is below the floor of 20 GB/s for trn1.32xlarge"]
    failed = checks.check_collective(expect(TRN1), parsers.parse_nccom_test(fixture("nccom-test-allr-failed.txt")))
    assert failed[0].startswith("nccom-test all-reduce failed: 33554432    Failure running neuron-bench")
    assert checks.check_collective(expect(TRN1), parsers.parse_nccom_test("")) == [
        "nccom-test printed no 'Avg bus bandwidth' line"]


def test_burn_in_runs_the_commands_and_stops_before_the_collective_on_missing_devices(monkeypatch):
    outputs = {"neuron-ls": fixture("neuron-ls-trn1.32xlarge.json"), "fi_info": fixture("fi-info-efa-trn1.32xlarge.txt"),
               "nccom-test": fixture("nccom-test-allr-healthy.txt")}
    ran: list[list[str]] = []

    def fake_run(cmd, *, timeout, env):
        ran.append(cmd)
        return 0, outputs[Path(cmd[0]).name]

    monkeypatch.setattr(program, "run", fake_run)
    assert program.burn_in(expect(TRN1), program.Commands(), {}) == []
    assert [Path(c[0]).name for c in ran] == ["neuron-ls", "fi_info", "nccom-test"]
    assert ran[-1][1:] == ["-r", "32", "--check", "allr"]  # every NeuronCore of the node
    ran.clear()
    outputs["fi_info"] = ""
    assert program.burn_in(expect(TRN1), program.Commands(), {})[0].startswith("fi_info -p efa lists 0 EFA devices")
    assert [Path(c[0]).name for c in ran] == ["neuron-ls", "fi_info"]


# --------------------------------------------------------------------------- decisions


def test_replacements_are_bounded_per_pool_and_hour():
    history: dict = {}
    for t in (0.0, 60.0):
        d = decisions.decide_replacement(history, pool="trn1-efa", now=t, max_per_hour=2)
        assert d.allowed
        history = d.history
    third = decisions.decide_replacement(history, pool="trn1-efa", now=120.0, max_per_hour=2)
    assert not third.allowed and third.history == history and "next possible in 3480s" in third.reason
    assert decisions.decide_replacement(history, pool="inf2", now=120.0, max_per_hour=2).allowed  # other pools
    later = decisions.decide_replacement(history, pool="trn1-efa", now=3600.0, max_per_hour=2)
    assert later.allowed and later.history == {"trn1-efa": [60.0, 3600.0]}  # the first fell out of the hour
    assert not decisions.decide_replacement({}, pool="p", now=0.0, max_per_hour=0).allowed


def test_history_round_trip_and_unreadable_entries():
    data = rate_bound.history_to_configmap({"b": [2.0], "a": [1.0, 1.5]})
    assert list(data) == ["a", "b"] and rate_bound.history_from_configmap(data) == {"a": [1.0, 1.5], "b": [2.0]}
    assert rate_bound.history_from_configmap({"a": "not json", "b": "[3]"}) == {"a": [], "b": [3.0]}
    assert rate_bound.history_from_configmap(None) == {}


def test_rate_bound_cooldown():
    first = rate_bound.decide({}, key="j", now=0.0, limit=3, window_seconds=86400, what="restarts", cooldown_seconds=600)
    assert first.allowed
    assert not rate_bound.decide(first.history, key="j", now=300.0, limit=3, window_seconds=86400, what="restarts",
                                 cooldown_seconds=600).allowed
    assert rate_bound.decide(first.history, key="j", now=700.0, limit=3, window_seconds=86400, what="restarts",
                             cooldown_seconds=600).allowed


def test_taint_removal_keeps_other_taints():
    taints = [dict(nodepools.NEURON_TAINT), dict(nodepools.BURN_IN_TAINT), {"key": "x", "effect": "NoExecute"}]
    assert decisions.taints_without_burn_in(taints) == [dict(nodepools.NEURON_TAINT), {"key": "x", "effect": "NoExecute"}]
    assert decisions.TAINT_KEY == nodepools.BURN_IN_TAINT["key"]  # the image and the platform agree
    assert program.POOL_LABEL == nodepools.POOL_LABEL


def test_efa_expected_only_when_the_nodeclaim_asked_for_it():
    with_efa = {"spec": {"resources": {"requests": {"vpc.amazonaws.com/efa": "8", "cpu": "100"}}}}
    without = {"spec": {"resources": {"requests": {"aws.amazon.com/neuron": "16"}}}}
    assert decisions.efa_devices_expected(8, with_efa) == 8
    assert decisions.efa_devices_expected(8, without) == 0  # e.g. a LoRA pod on the EFA pool
    assert decisions.efa_devices_expected(8, None) == 0
    assert decisions.efa_devices_expected(8, {"spec": {}}) == 0


def test_nodeclaim_of_a_node():
    claims = [{"metadata": {"name": "a"}, "status": {"nodeName": "n1", "providerID": "aws:///z/i-1"}},
              {"metadata": {"name": "b"}, "status": {"providerID": "aws:///z/i-2"}}]
    assert decisions.nodeclaim_of(claims, node_name="n1", provider_id=None)["metadata"]["name"] == "a"
    assert decisions.nodeclaim_of(claims, node_name="n2", provider_id="aws:///z/i-2")["metadata"]["name"] == "b"
    assert decisions.nodeclaim_of(claims, node_name="n3", provider_id="aws:///z/i-3") is None


# --------------------------------------------------------------------------- the program against a recorded API


class FakeKube:
    """The API calls the program makes (kube.Kube's methods), on in-memory objects."""

    def __init__(self, node: dict, claims: list[dict], history: dict | None = None):
        self.node, self.claims = node, claims
        self.configmap = {"metadata": {"name": "s", "resourceVersion": "1"}, "data": history or {}}
        self.events: list[dict] = []
        self.conditions: list[dict] = []
        self.deleted: list[str] = []
        self.conflicts = 0

    def get_node(self, name):
        return copy.deepcopy(self.node)

    def set_taints(self, name, resource_version, taints):
        if self.conflicts:
            self.conflicts -= 1
            raise ApiError(409, "conflict")
        self.node["spec"]["taints"] = taints

    def set_condition(self, name, condition):
        self.conditions.append(condition)

    def create_event(self, event):
        self.events.append(event)

    def list_nodeclaims(self):
        return self.claims

    def delete_nodeclaim(self, name):
        self.deleted.append(name)

    def get_configmap(self, namespace, name):
        return copy.deepcopy(self.configmap)

    def replace_configmap(self, namespace, name, cm):
        self.configmap = cm


class Stop(Exception):
    pass


@pytest.fixture
def harness(monkeypatch, tmp_path):
    spec = burnin.expectations_document([TRN1])
    path = tmp_path / "expectations.json"
    path.write_text(json.dumps(spec))
    node = {"metadata": {"name": "n1", "uid": "u1", "resourceVersion": "7",
                         "labels": {nodepools.POOL_LABEL: TRN1.name, program.INSTANCE_TYPE_LABEL: "trn1.32xlarge"}},
            "spec": {"providerID": "aws:///z/i-1", "taints": [dict(nodepools.NEURON_TAINT), dict(nodepools.BURN_IN_TAINT)]}}
    for k, v in {"NODE_NAME": "n1", "POD_NAMESPACE": "kube-system", "BURNIN_STATE_CONFIGMAP": "s"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(program, "idle", lambda: 0)

    def stop(_seconds):
        raise Stop

    monkeypatch.setattr(program.time, "sleep", stop)

    def start(kube: FakeKube, problems: list[str]):
        monkeypatch.setattr(program.Kube, "in_cluster", classmethod(lambda cls: kube))
        monkeypatch.setattr(program, "burn_in", lambda *a: list(problems))
        return program.main(["--expectations", str(path)])

    return node, start


def test_a_passing_node_loses_its_taint_only(harness):
    node, start = harness
    kube = FakeKube(node, claims=[])
    kube.conflicts = 1  # a concurrent change of the node is retried, not overwritten
    assert start(kube, []) == 0
    assert kube.node["spec"]["taints"] == [dict(nodepools.NEURON_TAINT)]
    assert kube.conditions[0]["type"] == "BurnInPassed" and kube.conditions[0]["status"] == "True"
    assert [e["reason"] for e in kube.events] == ["BurnInPassed"] and kube.deleted == []


def test_a_failing_node_keeps_its_taint_and_is_replaced_within_the_bound(harness):
    node, start = harness
    kube = FakeKube(node, claims=[{"metadata": {"name": "claim-1"}, "status": {"nodeName": "n1"}}])
    assert start(kube, ["neuron-ls lists 15 Neuron devices; trn1.32xlarge has 16"]) == 0
    assert nodepools.BURN_IN_TAINT in kube.node["spec"]["taints"]
    assert kube.conditions[0]["status"] == "False" and "15 Neuron devices" in kube.conditions[0]["message"]
    assert kube.events[0]["type"] == "Warning" and kube.events[0]["involvedObject"]["name"] == "n1"
    assert kube.deleted == ["claim-1"]
    assert len(json.loads(kube.configmap["data"][TRN1.name])) == 1


def test_a_node_launched_without_efa_passes_on_an_efa_pool(harness, monkeypatch, tmp_path):
    """Karpenter attached no EFA (its NodeClaim requested none): fi_info is not even run."""
    node, start = harness
    kube = FakeKube(node, claims=[{"metadata": {"name": "c"}, "status": {"nodeName": "n1"},
                                   "spec": {"resources": {"requests": {"aws.amazon.com/neuron": "16"}}}}])
    ran = []

    def fake_run(cmd, *, timeout, env):
        ran.append(Path(cmd[0]).name)
        return 0, {"neuron-ls": fixture("neuron-ls-trn1.32xlarge.json"),
                   "nccom-test": fixture("nccom-test-allr-healthy.txt")}.get(Path(cmd[0]).name, "")

    monkeypatch.setattr(program, "run", fake_run)
    monkeypatch.setattr(program.Kube, "in_cluster", classmethod(lambda cls: kube))
    spec = tmp_path / "expectations-efa.json"
    spec.write_text(json.dumps(burnin.expectations_document([TRN1])))
    assert program.main(["--expectations", str(spec)]) == 0
    assert ran == ["neuron-ls", "nccom-test"] and kube.conditions[0]["status"] == "True"
    kube.claims[0]["spec"]["resources"]["requests"]["vpc.amazonaws.com/efa"] = "8"  # asked for EFA, got none
    kube.node["spec"]["taints"].append(dict(nodepools.BURN_IN_TAINT))
    kube.conditions.clear()
    ran.clear()
    assert program.main(["--expectations", str(spec)]) == 0
    assert ran == ["neuron-ls", "fi_info"] and kube.deleted == ["c"] and kube.conditions[0]["status"] == "False"


def test_a_failing_node_without_nodeclaim_spends_no_replacement(harness):
    node, start = harness
    kube = FakeKube(node, claims=[{"metadata": {"name": "other"}, "status": {"nodeName": "n9"}}])
    assert start(kube, ["low bandwidth"]) == 0
    assert kube.deleted == [] and kube.configmap["data"] == {}


def test_a_failing_node_over_the_bound_waits(harness):
    node, start = harness
    import time as _time
    now = _time.time()
    kube = FakeKube(node, claims=[{"metadata": {"name": "claim-1"}, "status": {"nodeName": "n1"}}],
                    history={TRN1.name: json.dumps([now - 10, now - 20])})
    with pytest.raises(Stop):  # it sleeps until the hour allows a replacement
        start(kube, ["low bandwidth"])
    assert kube.deleted == [] and nodepools.BURN_IN_TAINT in kube.node["spec"]["taints"]


# --------------------------------------------------------------------------- specs


def test_nodepool_startup_taint_only_on_gated_accelerator_pools():
    cfg = config.parse(config.raw_from_bag(BASE)[0], stack="dev-usw2", region="us-west-2")
    for p in cfg.node_pools:
        spec = nodepools.nodepool_spec(p, zone_ids=["usw2-az1"])["template"]["spec"]
        assert spec.get("startupTaints") == ([nodepools.BURN_IN_TAINT] if p.is_accelerator else None), p.name
    off = pool("trn1", "trn1.2xlarge")
    off = config.NodePoolConfig(**{**off.__dict__, "burn_in": config.BurnInConfig(enabled=False)})
    assert "startupTaints" not in nodepools.nodepool_spec(off, zone_ids=["usw2-az1"])["template"]["spec"]
    # Workloads tolerate the Neuron taint only: they never land on a node before its burn-in passed.
    assert all(t["key"] != nodepools.BURN_IN_TAINT["key"] for t in nodepools.pool_scheduling(TRN1, daemonset_pods=[])["tolerations"])


def test_rbac_is_pinned():
    rules = {(m["kind"], m["metadata"].get("namespace")): m["rules"] for m in burnin.rbac() if "rules" in m}
    assert rules == {
        ("ClusterRole", None): [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
            {"apiGroups": ["karpenter.sh"], "resources": ["nodeclaims"], "verbs": ["get", "list", "delete"]}],
        ("Role", "kube-system"): [{"apiGroups": [""], "resources": ["configmaps"],
                                   "resourceNames": ["trn-burnin-replacements"], "verbs": ["get", "update"]},
                                  {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}],
    }
    bindings = [m for m in burnin.rbac() if m["kind"].endswith("Binding")]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == {
        ("ClusterRole", "trn-burnin"), ("Role", "trn-burnin")}
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "trn-burnin", "namespace": "kube-system"}]
               for b in bindings)


# Each Kube method: the (API group, resource, verb) it needs (images/trn_workloads/kube_api.py).
KUBE_CALLS = {
    "get_node": ("", "nodes", "get"), "set_taints": ("", "nodes", "patch"), "set_condition": ("", "nodes/status", "patch"),
    "create_event": ("", "events", "create"), "list_nodeclaims": ("karpenter.sh", "nodeclaims", "list"),
    "delete_nodeclaim": ("karpenter.sh", "nodeclaims", "delete"), "list_pods": ("", "pods", "list"),
    "delete_pod": ("", "pods", "delete"), "get_configmap": ("", "configmaps", "get"),
    "replace_configmap": ("", "configmaps", "update"),
}


def kube_methods_called(source: str) -> set[str]:
    import re
    return set(re.findall(r"\bkube\.(\w+)\(", source))


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_kube_client_table_covers_every_method():
    import inspect

    from trn_workloads import kube_api
    methods = {n for n, _ in inspect.getmembers(kube_api.Kube, inspect.isfunction)
               if not n.startswith("_") and n not in ("request", "in_cluster")}
    assert methods == set(KUBE_CALLS)


def test_burn_in_calls_exactly_what_its_rbac_grants():
    source = "".join(p.read_text() for p in burnin.PACKAGE_DIR.glob("*.py"))
    needed = {KUBE_CALLS[m] for m in kube_methods_called(source)}
    assert kube_methods_called(source) == {"get_node", "set_taints", "set_condition", "create_event", "list_nodeclaims",
                                           "delete_nodeclaim", "get_configmap", "replace_configmap"}
    assert granted([r for m in burnin.rbac() if "rules" in m for r in m["rules"]]) == needed | {
        ("karpenter.sh", "nodeclaims", "get")}  # get by name, as the issue grants it; nothing beyond


def test_burn_in_code_runs_with_the_standard_library_only(tmp_path):
    """The ConfigMap's files, laid out as the volume items put them, import with `python -S -I`
    (no site-packages), as in the Neuron DLC where nothing of ours is installed."""
    proc = import_with_standard_library_only(tmp_path, burnin.code(), "trn_workloads.burnin.__main__")
    assert proc.returncode == 0, proc.stderr


def test_daemonset_tolerates_only_its_taint_and_runs_the_whole_package():
    ds = burnin.daemonset(image="img:1.2.3", pools=["b", "a"])
    spec = ds["spec"]["template"]["spec"]
    assert spec["tolerations"] == [
        {"key": "trn-platform/burn-in", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": nodepools.POOL_LABEL, "operator": "In", "values": ["a", "b"]}]}]
    assert spec["serviceAccountName"] == "trn-burnin"
    items = {i["path"] for i in spec["volumes"][0]["configMap"]["items"]}
    modules = {f"trn_workloads/burnin/{p.name}" for p in burnin.PACKAGE_DIR.glob("*.py")}
    assert items == modules | {"trn_workloads/__init__.py", "trn_workloads/kube_api.py", "trn_workloads/rate_bound.py"}
    assert set(burnin.configmaps([TRN1])[0]["data"]) == {i["key"] for i in spec["volumes"][0]["configMap"]["items"]}


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_rendered_stacks_gate_every_accelerator_pool_the_burn_in_knows(stack):
    result = rendered_platform(stack)
    cfg = config.load_stack_file(Path(__file__).resolve().parent.parent, stack)
    objs = [m for _, m in result.manifests]
    tainted = {m["metadata"]["name"] for m in objs if m["kind"] == "NodePool"
               and m["spec"]["template"]["spec"].get("startupTaints") == [nodepools.BURN_IN_TAINT]}
    assert tainted == {p.name for p in cfg.accelerator_pools if p.family in config.BURN_IN_FAMILIES}
    daemonsets = [m for m in objs if m["kind"] == "DaemonSet" and m["metadata"]["name"] == burnin.NAME]
    if not tainted:
        assert daemonsets == []
        return
    [ds] = daemonsets
    spec = ds["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert set(terms[0]["matchExpressions"][0]["values"]) == tainted
    assert spec["containers"][0]["image"] == versions.base_image("xla", "training")


# --------------------------------------------------------------------------- config


def pools_with(index: int, **changes) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg["trn-platform:nodePools"][index].update(changes)
    return cfg


def problems_of(cfg: dict) -> list[str]:
    raw, region = config.raw_from_bag(cfg)
    with pytest.raises(ConfigError) as err:
        config.parse(raw, stack="dev-usw2", region=region)
    return err.value.problems


def test_burn_in_is_off_where_its_tools_do_not_know_the_family():
    assert config.BURN_IN_FAMILIES == ("trn1", "trn1n", "inf2", "trn2")
    problems: list[str] = []
    assert not config._parse_burn_in(None, "nodePools[0].burnIn", "trn3", ("trn3.48xlarge",), problems).enabled
    assert problems == []
    config._parse_burn_in({"enabled": True}, "nodePools[0].burnIn", "trn3", ("trn3.48xlarge",), problems)
    assert problems == ["nodePools[0].burnIn.enabled: true is not possible for trn3: the burn-in's Neuron tools "
                        "(SDK 2.26.1) know trn1, trn1n, inf2, trn2 only; set enabled: false"]


def test_burn_in_config_defaults_and_overrides():
    cfg = config.parse(config.raw_from_bag(BASE)[0], stack="dev-usw2", region="us-west-2")
    assert {p.name: p.burn_in.enabled for p in cfg.node_pools} == {"trn1-single": True, "trn1-efa": True, "inf2": True,
                                                                   "cpu": False}
    raw = pools_with(1, burnIn={"enabled": True, "maxReplacementsPerHour": 1, "timeoutSeconds": 300,
                                "busBandwidthFloorGBps": {"trn1.32xlarge": 30}})
    p = config.parse(config.raw_from_bag(raw)[0], stack="dev-usw2", region="us-west-2").pool("trn1-efa")
    assert p.burn_in == config.BurnInConfig(True, 1, {"trn1.32xlarge": 30.0}, 300)
    assert p.burn_in.bus_bandwidth_floor_gbps == {"trn1.32xlarge": 30.0}


@pytest.mark.parametrize("changes, expected", [
    ((3, {"burnIn": {"enabled": True}}), "nodePools[3].burnIn: a cpu pool has no burn-in"),
    ((1, {"burnIn": {"maxReplacementsPerHour": 50}}), "nodePools[1].burnIn.maxReplacementsPerHour: 50 is not allowed; must be 0 to 20"),
    ((1, {"burnIn": {"busBandwidthFloorGBps": {"trn1.2xlarge": 10}}}),
     "nodePools[1].burnIn.busBandwidthFloorGBps.trn1.2xlarge: 'trn1.2xlarge' is not an instance type of this pool; allowed: trn1.32xlarge"),
    ((1, {"burnIn": {"busBandwidthFloorGBps": {"trn1.32xlarge": -1}}}),
     "nodePools[1].burnIn.busBandwidthFloorGBps.trn1.32xlarge: -1 is not allowed; a positive number of GB/s such as 20"),
    ((1, {"burnIn": {"enable": False}}), "nodePools[1].burnIn.enable: unknown key"),
    ((1, {"burnIn": {"timeoutSeconds": 5}}), "nodePools[1].burnIn.timeoutSeconds: 5 is not allowed; must be 60 to 3600"),
])
def test_bad_burn_in_config(changes, expected):
    index, change = changes
    assert any(p.startswith(expected) for p in problems_of(pools_with(index, **change))), problems_of(pools_with(index, **change))
