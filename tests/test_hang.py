"""Hang detection and gang restart: the TrainingGangHung alert under promtool (fires only after a
job's first step, only for a series that existed for the whole window, not for a restarted
attempt until it had that window itself), the step counter and restart label on each training
workload as rendered, and the stack config keys."""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from infra import config
from infra.config import MonitoringConfig
from infra.monitoring import hang, rules
from stackfiles import ConfigError
from tests.agent_helpers import import_with_standard_library_only
from tests.platform_helpers import rendered_workload, stack_config
from tests.test_monitoring_rules import promtool, write_rules

CFG = MonitoringConfig(alert_emails=("a@example.com",), training_hang_after="20m")
GROUPS = rules.rule_groups(CFG, fsx_capacity_gib=1200, prices={"trn1.32xlarge": 21.5})


def firing(labels: dict[str, str], value: str) -> dict:
    a = hang.alert(CFG).rule()
    all_labels = {**a["labels"], **labels}
    ann = {k: v.replace("{{ $labels.workload }}", labels["workload"]).replace("{{ $labels.stack }}", labels["stack"])
           .replace("{{ $value }}", value) for k, v in a["annotations"].items()}
    return {"exp_labels": all_labels, "exp_annotations": ann}


def job(stack: str, workload: str = "nemo-pretrain") -> dict[str, str]:
    return {"namespace": "ml", "workload": workload, "stack": stack}


SERIES = [
    # s1: 30 steps of 10, then stuck at 300 (hung from minute 30)
    {"series": 'trn_training_steps_total{namespace="ml", workload="nemo-pretrain", stack="s1", pod="l0"}',
     "values": "0+10x30 300x60"},
    # s2: progressing the whole time
    {"series": 'trn_training_steps_total{namespace="ml", workload="ray-pretrain", stack="s2", pod="sub"}',
     "values": "0+10x90"},
    # s3: never made its first step (compiling, loading): not hung, whatever the time
    {"series": 'trn_training_steps_total{namespace="ml", workload="titan-pretrain", stack="s3", pod="m0"}',
     "values": "0x90"},
    # s4: an attempt that ended at minute 20, and the restarted attempt from minute 40, resumed at step 200 and stuck
    {"series": 'trn_training_steps_total{namespace="ml", workload="nemo-pretrain", stack="s4", pod="l0"}',
     "values": "0+10x20"},
    {"series": 'trn_training_steps_total{namespace="ml", workload="nemo-pretrain", stack="s4", pod="l1"}',
     "values": "_x40 200x50"},
]


def run_case(tmp_path, alert_tests: list[dict]) -> str:
    write_rules(tmp_path, GROUPS)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": SERIES, "alert_rule_test": alert_tests}]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


def test_hang_alert_fires_after_the_window_for_started_jobs_only(tmp_path):
    assert run_case(tmp_path, [
        {"eval_time": "45m", "alertname": hang.ALERT, "exp_alerts": []},  # s1 still for 15m < 20m
        {"eval_time": "55m", "alertname": hang.ALERT, "exp_alerts": [firing(job("s1"), "300")]},
        # s4's new attempt existed 20 minutes at minute 60; +2m `for`
        {"eval_time": "58m", "alertname": hang.ALERT, "exp_alerts": [firing(job("s1"), "300")]},
        {"eval_time": "70m", "alertname": hang.ALERT,
         "exp_alerts": [firing(job("s1"), "300"), firing(job("s4"), "200")]},
    ]) == ""


def test_harness_fails_when_the_never_started_job_is_expected(tmp_path):
    """The case can fail: expecting the alert for s3 (no first step) is a failed test."""
    assert run_case(tmp_path, [{"eval_time": "80m", "alertname": hang.ALERT, "exp_alerts": [
        firing(job("s1"), "300"), firing(job("s4"), "200"), firing(job("s3", "titan-pretrain"), "0")]}]) != ""


def test_hang_rule_is_its_own_group_and_the_window_comes_from_config():
    group = hang.rule_group(MonitoringConfig(alert_emails=("a@example.com",), training_hang_after="45m"))
    [rule] = group["rules"]
    assert group["name"] == "trn-platform.training-hang" and rule["alert"] == "TrainingGangHung"
    assert "[45m]" in rule["expr"] and "offset 45m" in rule["expr"]
    assert "TrainingGangHung" not in {a.name for a in rules.alerts(CFG, fsx_capacity_gib=1200)}
    off = hang.alert(MonitoringConfig(alert_emails=("a@example.com",), training_hang_restarts=0))
    assert "Restarts are off" in off.action


# --------------------------------------------------------------------------- config


def test_hang_config_keys():
    base = stack_config("platform", "dev-usw2")
    raw, region = config.raw_from_bag(base)
    assert config.parse(raw, stack="dev-usw2", region=region).monitoring.training_hang_restarts == 3
    bad = copy.deepcopy(base)
    bad["trn-platform:monitoring"].update(trainingHangAfter="soon", trainingHangRestarts=99)
    raw, region = config.raw_from_bag(bad)
    with pytest.raises(ConfigError) as err:
        config.parse(raw, stack="dev-usw2", region=region)
    assert any(p.startswith("monitoring.trainingHangAfter: must be a Prometheus duration") for p in err.value.problems)
    assert any(p.startswith("monitoring.trainingHangRestarts: 99 is not allowed; must be 0 to 10")
               for p in err.value.problems)


# --------------------------------------------------------------------------- the workloads as rendered

TRAINING_STACKS = ("nemo-pretrain-usw2", "ray-pretrain-usw2", "titan-pretrain-use2")


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod template) of a rendered training object."""
    spec = obj.get("spec", {})
    if obj["kind"] == "MPIJob":
        return [(f"MPIJob {obj['metadata']['name']} {k}", v["template"]) for k, v in spec["mpiReplicaSpecs"].items()]
    if obj["kind"] == "RayJob":
        cluster = spec.get("rayClusterSpec") or {"headGroupSpec": {"template": {"metadata": {"labels": {}}}},
                                                 "workerGroupSpecs": []}
        return [(f"RayJob {obj['metadata']['name']} submitter", spec["submitterPodTemplate"]),
                (f"RayJob {obj['metadata']['name']} head", cluster["headGroupSpec"]["template"])] + \
            [(f"RayJob {obj['metadata']['name']} {g['groupName']}", g["template"]) for g in cluster["workerGroupSpecs"]]
    if obj["kind"] == "RayCluster":
        return [(f"RayCluster {obj['metadata']['name']} head", spec["headGroupSpec"]["template"])] + \
            [(f"RayCluster {obj['metadata']['name']} {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    if obj["kind"] == "Job" and obj["apiVersion"].startswith("batch.volcano.sh"):
        return [(f"vcjob {obj['metadata']['name']} {t['name']}", t["template"]) for t in spec["tasks"]]
    return []


def rendered(stack: str) -> list[dict]:
    return [m for _, m in rendered_workload(stack).manifests]


def train_templates(stack: str) -> list[tuple[str, dict]]:
    """The pod templates of the stack's training gang (its other jobs run before it, not beside it)."""
    return [wt for obj in rendered(stack) if obj["metadata"]["name"].endswith("-train") for wt in pod_templates(obj)]


@pytest.mark.parametrize("stack", sorted(TRAINING_STACKS))
def test_each_gang_has_one_restart_pod_and_one_scraped_step_counter(stack):
    templates = [t for _, t in train_templates(stack)]
    assert sum(1 for obj in rendered(stack) for _, t in pod_templates(obj)
               if t["metadata"]["labels"].get("trn-platform/scrape") == "true") == 1  # nothing else is scraped
    templates = train_templates(stack)
    restart = [where for where, t in templates if t["metadata"]["labels"].get("trn-platform/gang-restart") == "true"]
    assert len(restart) == 1, restart
    scraped = [(where, t) for where, t in templates if t["metadata"]["labels"].get("trn-platform/scrape") == "true"]
    assert len(scraped) == 1, [w for w, _ in scraped]
    where, t = scraped[0]
    ports = [p for c in [*t["spec"]["containers"], *t["spec"].get("initContainers", [])] for p in c.get("ports", [])]
    assert {"name": "metrics", "containerPort": 9400} in ports, where
    assert "precompile" not in where  # only the training attempt counts steps


def test_nemo_counter_reads_the_train_logdir_and_the_launcher_restarts_the_gang():
    from trn_workloads.nemo.config import load_run_config
    from trn_workloads.nemo.nxdt import nxdt_config
    objs = rendered("nemo-pretrain-usw2")
    [train] = [o for o in objs if o["kind"] == "MPIJob" and o["metadata"]["name"].endswith("-train")]
    launcher = train["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]
    [sidecar] = launcher["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["command"][:3] == ["python", "-m", "trn_workloads.progress"]
    [cm] = [o for o in objs if o["kind"] == "ConfigMap" and "-run" in o["metadata"]["name"]]
    run = load_run_config(json.loads(next(iter(cm["data"].values()))))
    logdir = nxdt_config(run, "train")["exp_manager"]["explicit_log_dir"]
    assert sidecar["command"][3:5] == ["--tensorboard", logdir]
    assert launcher["metadata"]["labels"]["trn-platform/gang-restart"] == "true"
    assert train["spec"]["runPolicy"]["backoffLimit"] == 3  # the launcher Job's restarts


def test_ray_counter_reads_rank0_metrics_file_and_the_train_job_is_resubmitted():
    from trn_workloads.ray_train.config import config_from_dict
    from trn_workloads.ray_train.loop import metrics_path
    objs = rendered("ray-pretrain-usw2")
    jobs = {o["metadata"]["name"].rsplit("-", 1)[-1]: o for o in objs if o["kind"] == "RayJob"}
    assert jobs["train"]["spec"]["backoffLimit"] == 2 and "backoffLimit" not in jobs["data"]["spec"]
    [sidecar] = jobs["train"]["spec"]["submitterPodTemplate"]["spec"]["initContainers"]
    [cm] = [o for o in objs if o["kind"] == "ConfigMap" and "-run" in o["metadata"]["name"]]
    run = config_from_dict(json.loads(next(iter(cm["data"].values()))))
    assert sidecar["command"][3:5] == ["--jsonl", str(metrics_path(run))]
    assert all(g["template"]["metadata"]["labels"]["trn-platform/gang-restart"] == "true"
               for g in jobs["train"]["spec"]["rayClusterSpec"]["workerGroupSpecs"])


def test_titan_restarts_the_gang_through_its_volcano_policy():
    [vcjob] = [o for o in rendered("titan-pretrain-use2") if o["apiVersion"].startswith("batch.volcano.sh")]
    assert {"event": "PodEvicted", "action": "RestartJob"} in vcjob["spec"]["policies"]
    assert vcjob["spec"]["maxRetry"] == 3


# --------------------------------------------------------------------------- the watchdog

def test_watchdog_query_returns_the_hung_jobs_from_prometheus(tmp_path):
    """The watchdog's query (ALERTS of the firing alert) evaluated by promtool on the same series:
    the labels it gets are the job's namespace, workload and stack."""
    from trn_workloads import watchdog
    write_rules(tmp_path, GROUPS)
    base = {"__name__": "ALERTS", "alertname": hang.ALERT, "alertstate": "firing", "severity": "critical",
            "platform": "trn-platform"}
    samples = [{"labels": "ALERTS" + "{" + ", ".join(f'{k}="{v}"' for k, v in {**base, **job(s)}.items()
                                                     if k != "__name__") + "}", "value": 1} for s in ("s1", "s4")]
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": SERIES,
        "promql_expr_test": [{"expr": watchdog.QUERY, "eval_time": "70m", "exp_samples": samples}]}]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def prom_answer(*jobs: dict) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "ALERTS", "alertname": hang.ALERT, "alertstate": "firing", **j}, "value": [0, "1"]}
        for j in jobs]}}


def test_hung_jobs_and_restart_target():
    from trn_workloads import watchdog
    answer = prom_answer(job("s1"), job("s1"), {"namespace": "ml"})  # duplicates and incomplete labels
    assert watchdog.hung_jobs(answer) == [watchdog.HungJob("ml", "nemo-pretrain", "s1")]
    with pytest.raises(ValueError, match="query failed"):
        watchdog.hung_jobs({"status": "error", "error": "bad query"})
    pods = [{"metadata": {"name": "b"}, "status": {"phase": "Running"}},
            {"metadata": {"name": "a", "deletionTimestamp": "x"}, "status": {"phase": "Running"}},
            {"metadata": {"name": "c"}, "status": {"phase": "Succeeded"}}]
    assert watchdog.restart_target(pods)["metadata"]["name"] == "b"
    assert watchdog.restart_target(pods[1:]) is None


@pytest.mark.parametrize("stack", sorted(TRAINING_STACKS))
def test_watchdog_selector_matches_exactly_the_gang_restart_pod(stack):
    """The selector the watchdog lists pods with, applied to the rendered pod templates' labels."""
    from trn_workloads import watchdog
    templates = train_templates(stack)
    [workload] = {t["metadata"]["labels"]["app.kubernetes.io/name"] for _, t in templates
                  if "app.kubernetes.io/name" in t["metadata"]["labels"]}
    wanted = dict(kv.split("=") for kv in watchdog.selector(watchdog.HungJob("ml-shared", workload, stack)).split(","))
    matching = [w for w, t in templates if wanted.items() <= t["metadata"]["labels"].items()]
    assert len(matching) == 1, matching


class FakeKube:
    def __init__(self, pods: dict[str, list[dict]], history: dict | None = None, conflict: bool = False):
        self.pods, self.conflict = pods, conflict
        self.configmap = {"metadata": {"name": "s"}, "data": history or {}}
        self.deleted: list[tuple[str, str]] = []
        self.selectors: list[str] = []

    def get_configmap(self, namespace, name):
        return copy.deepcopy(self.configmap)

    def replace_configmap(self, namespace, name, cm):
        if self.conflict:
            from trn_workloads.kube_api import ApiError
            raise ApiError(409, "conflict")
        self.configmap = cm

    def list_pods(self, namespace, selector):
        self.selectors.append(selector)
        return self.pods.get(namespace, [])

    def delete_pod(self, namespace, name):
        self.deleted.append((namespace, name))


def settings(**kw):
    from trn_workloads import watchdog
    base = dict(prometheus_url="http://p", state_namespace="monitoring", state_configmap="s", max_restarts=2,
                window_seconds=86400, cooldown_seconds=1500)
    return watchdog.Settings(**{**base, **kw})


def test_watchdog_restarts_within_its_bound_and_cooldown():
    from trn_workloads import watchdog
    pods = {"ml": [{"metadata": {"name": "s1-launcher-x"}, "status": {"phase": "Running"}}]}
    kube = FakeKube(pods)
    answer = prom_answer(job("s1"))
    out = watchdog.run_once(kube, lambda q: answer, settings(), now=1000.0)
    assert kube.deleted == [("ml", "s1-launcher-x")] and "deleted pod s1-launcher-x" in out[0]
    assert kube.selectors == ["app.kubernetes.io/instance=s1,trn-platform/gang-restart=true"]
    assert json.loads(kube.configmap["data"]["ml/s1"]) == [1000.0]
    # still firing a minute later (the gang restarting): the cooldown holds
    out = watchdog.run_once(kube, lambda q: answer, settings(), now=1060.0)
    assert len(kube.deleted) == 1 and "waiting" in out[0]
    watchdog.run_once(kube, lambda q: answer, settings(), now=3000.0)
    assert len(kube.deleted) == 2
    out = watchdog.run_once(kube, lambda q: answer, settings(), now=5000.0)  # the bound: 2 a day
    assert len(kube.deleted) == 2 and "limit 2" in out[0]


def test_watchdog_does_nothing_without_a_target_or_on_a_conflict():
    from trn_workloads import watchdog
    kube = FakeKube({})
    assert "no live pod" in watchdog.run_once(kube, lambda q: prom_answer(job("s1")), settings(), now=0.0)[0]
    assert kube.configmap["data"] == {}  # no restart spent
    kube = FakeKube({"ml": [{"metadata": {"name": "p"}, "status": {"phase": "Running"}}]}, conflict=True)
    assert "changed meanwhile" in watchdog.run_once(kube, lambda q: prom_answer(job("s1")), settings(), now=0.0)[0]
    assert kube.deleted == []


def test_watchdog_rbac_is_exactly_its_calls_and_its_code_is_stdlib_only(tmp_path):
    from tests.test_burnin import KUBE_CALLS, granted, kube_methods_called
    from trn_workloads import watchdog
    source = open(watchdog.__file__).read()
    assert kube_methods_called(source) == {"get_configmap", "list_pods", "replace_configmap", "delete_pod"}
    rbac = hang.watchdog_rbac(namespace="monitoring", workload_namespace="ml-shared")
    by_ns = {m["metadata"]["namespace"]: granted(m["rules"]) for m in rbac if m["kind"] == "Role"}
    assert by_ns == {"ml-shared": {KUBE_CALLS["list_pods"], KUBE_CALLS["delete_pod"]},
                     "monitoring": {KUBE_CALLS["get_configmap"], KUBE_CALLS["replace_configmap"]}}
    assert not [m for m in rbac if m["kind"].startswith("Cluster")]
    proc = import_with_standard_library_only(tmp_path, hang.watchdog_code("monitoring"), "trn_workloads.watchdog")
    assert proc.returncode == 0, proc.stderr


def test_rendered_watchdog_and_off_switch():
    from tests.platform_helpers import rendered_platform
    objs = [m for _, m in rendered_platform("dev-usw2").manifests]
    [dep] = [m for m in objs if m["kind"] == "Deployment" and m["metadata"]["name"] == hang.WATCHDOG]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PROMETHEUS_URL"] == "http://kps-prometheus.monitoring.svc:9090"
    assert env["MAX_RESTARTS"] == "3" and env["COOLDOWN_SECONDS"] == str(20 * 60 + 300)
    assert {m["metadata"]["namespace"] for m in objs if m["kind"] == "Role"
            and m["metadata"]["name"] == hang.WATCHDOG} == {"monitoring", "ml-shared"}
    off = MonitoringConfig(alert_emails=("a@example.com",), training_hang_restarts=0)
    assert hang.watchdog_manifests(off, image="i:1.0.0", prometheus_url="u", workload_namespace="w",
                                   on_system_nodes={}) == []
