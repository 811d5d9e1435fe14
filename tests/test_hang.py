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

TRAINING_STACKS = {"nemo-pretrain-usw2": "MPIJob", "ray-pretrain-usw2": "RayJob", "titan-pretrain-use2": "Job"}


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod template) of a rendered training object."""
    spec = obj.get("spec", {})
    if obj["kind"] == "MPIJob":
        return [(f"MPIJob {obj['metadata']['name']} {k}", v["template"]) for k, v in spec["mpiReplicaSpecs"].items()]
    if obj["kind"] == "RayJob":
        return [(f"RayJob {obj['metadata']['name']} submitter", spec["submitterPodTemplate"])]
    if obj["kind"] == "RayCluster":
        return [(f"RayCluster {obj['metadata']['name']} head", spec["headGroupSpec"]["template"])] + \
            [(f"RayCluster {obj['metadata']['name']} {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    if obj["kind"] == "Job" and obj["apiVersion"].startswith("batch.volcano.sh"):
        return [(f"vcjob {obj['metadata']['name']} {t['name']}", t["template"]) for t in spec["tasks"]]
    return []


def rendered(stack: str) -> list[dict]:
    return [m for _, m in rendered_workload(stack).manifests]


@pytest.mark.parametrize("stack", sorted(TRAINING_STACKS))
def test_each_gang_has_one_restart_pod_and_one_scraped_step_counter(stack):
    templates = [t for obj in rendered(stack) for t in pod_templates(obj)]
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
    [cluster] = [o for o in objs if o["kind"] == "RayCluster"]
    assert all(g["template"]["metadata"]["labels"]["trn-platform/gang-restart"] == "true"
               for g in cluster["spec"]["workerGroupSpecs"])


def test_titan_restarts_the_gang_through_its_volcano_policy():
    [vcjob] = [o for o in rendered("titan-pretrain-use2") if o["kind"] == "Job"]
    assert {"event": "PodEvicted", "action": "RestartJob"} in vcjob["spec"]["policies"]
    assert vcjob["spec"]["maxRetry"] == 3
