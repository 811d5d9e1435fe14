"""The rehearsal runner on small hand-made stacks (fast) and the `trnctl rehearse` command: a failing pod is
named with its step and log tail, a pod listening outside 127.0.0.0/8 fails, every process and directory is
gone afterwards (also after Ctrl-C), bad input exits 2 with one line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trnctl.cli import main
from trnctl.operators import Context
from trnctl.rehearse.runner import Rehearsal
from trnctl.rehearse.stack import RehearsalStack

REPO = Path(__file__).resolve().parents[1]
IMAGE = "123456789012.dkr.ecr.us-west-2.amazonaws.com/trn-dev-usw2/serve:1.0.0"  # our serve image (Dockerfile)


def deployment(name: str, command: list[str], probe: dict | None = None) -> dict:
    container = {"name": "main", "image": IMAGE, "command": command, "ports": [{"containerPort": 8080, "name": "http"}]}
    if probe:
        container["readinessProbe"] = probe
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"automountServiceAccountToken": False, "containers": [container],
                                           "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}}}}


def job(name: str, command: list[str]) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                                           "containers": [{"name": "main", "image": IMAGE, "command": command}]}}}}


def hand_stack(*steps: list[dict]) -> RehearsalStack:
    return RehearsalStack(name="hand-made", workload="hand-made", result=None,
                          platform=SimpleNamespace(outputs={}), objects=[o for s in steps for o in s],
                          steps=list(steps), ctx=Context())


def session_alive(pid: int) -> bool:
    from trnctl.rehearse.network import _session_pids
    return bool(_session_pids(pid))


def test_failing_job_names_pod_step_and_log_tail_and_stops_the_run(tmp_path):
    stack = hand_stack([job("fails", ["sh", "-c", "echo preparing; echo broken >&2; exit 3"])],
                       [job("never", ["true"])])
    with Rehearsal(stack, work_dir=tmp_path / "work", s3=False, step_timeout=60) as r:
        result = r.run()
    assert not result.ok
    [pod] = result.pods  # step 1 never started
    assert pod.step == 0 and pod.exit_code == 3 and pod.name.startswith("fails-")
    assert "broken" in pod.log_tail and "exited with 3" in result.report()
    assert not (tmp_path / "work").exists()


WIDE_SERVER = ["python", "-m", "http.server", "8080", "--bind", "0.0.0.0"]


def test_a_pod_listening_on_all_addresses_fails_and_everything_is_cleaned_up(tmp_path):
    """Outside a namespace of its own (isolated=False), 0.0.0.0 is every interface of this machine: a failure."""
    stack = hand_stack([deployment("wide", WIDE_SERVER, {"tcpSocket": {"port": 8080}, "periodSeconds": 1})])
    r = Rehearsal(stack, work_dir=tmp_path / "work", s3=False, step_timeout=60, isolated=False)
    try:
        result = r.run()
        leaders = [c.proc.pid for c in r.containers]
    finally:
        r.close()
    [pod] = result.pods
    assert pod.ready is True and "listens outside 127.0.0.0/8: 0.0.0.0:8080" in pod.problem
    assert not any(session_alive(pid) for pid in leaders)
    assert not (tmp_path / "work").exists() and not r.memory.exists()


def test_in_its_namespace_a_wildcard_bind_passes_only_while_lo_is_the_only_interface(tmp_path):
    """Inside the rehearsal's own network namespace 0.0.0.0 reaches only `lo`; once the namespace has another
    interface (a tun device added here), the same pod fails the listener check."""
    stack = hand_stack([deployment("wide", WIDE_SERVER, {"tcpSocket": {"port": 8080}, "periodSeconds": 1})])
    with Rehearsal(stack, work_dir=tmp_path / "work", s3=False, step_timeout=60) as r:
        assert r.namespace.interfaces() == ["lo"]
        alone = r.run()
    with Rehearsal(stack, work_dir=tmp_path / "work2", s3=False, step_timeout=60) as r:
        subprocess.run(r.namespace.nsenter_argv(["ip", "tuntap", "add", "dev", "rehearse0", "mode", "tun"]), check=True,
                       capture_output=True)
        widened = r.run()
    assert alone.ok, alone.report()
    [pod] = widened.pods
    assert "listens outside 127.0.0.0/8: 0.0.0.0:8080" in pod.problem


def test_service_port_maps_to_target_port_and_names_resolve_inside_pods(tmp_path):
    server = ["python", "-m", "http.server", "8080", "--bind", "$(POD_IP)"]
    d = deployment("web", server, {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1})
    d["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}
    with Rehearsal(hand_stack([d], [svc]), work_dir=tmp_path / "work", s3=False, step_timeout=60) as r:
        result = r.run()
        assert result.ok, result.report()
        pod = result.pods[0].name
        fetch = "import urllib.request; print(urllib.request.urlopen('http://web.ns.svc.cluster.local/', timeout=10).status)"
        done = r.exec_in(pod, "main", ["python", "-c", fetch])
        assert done.stdout.strip() == "200", done.stderr
        env = r.exec_in(pod, "main", ["sh", "-c", "echo $WEB_SERVICE_HOST:$WEB_SERVICE_PORT; cat /etc/hostname"]).stdout
        assert env.splitlines() == [f"{r.service_address('ns', 'web')}:80", pod]  # kubelet service links


def test_unknown_stack_is_bad_input(capsys):
    assert main(["rehearse", "no-such-stack"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-stack" in err[0] and "compile-usw2" in err[0]


def test_platform_stack_is_not_a_workload_stack(capsys):
    assert main(["rehearse", "dev-usw2"]) == 2
    assert "not a workload stack" in capsys.readouterr().err


def test_a_kind_without_an_operator_module_is_bad_input(tmp_path):
    from trnctl.rehearse.runner import RehearsalError
    odd = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": {"name": "x"}}
    from trnctl import operators
    operators.CONTROLLERS[("keda.sh/v1alpha1", "ScaledJob")] = "trnctl.operators.no_such_operator"
    try:
        with pytest.raises(RehearsalError, match="ScaledJob/x: no operator module trnctl.operators.no_such_operator"):
            Rehearsal(hand_stack([odd]), work_dir=tmp_path / "w", s3=False)
    finally:
        del operators.CONTROLLERS[("keda.sh/v1alpha1", "ScaledJob")]
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_ctrl_c_stops_every_pod_and_removes_every_directory(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "trnctl.cli", "rehearse", "compile-usw2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list(tmp_path.glob("trn-rehearse-*/pods/*/*.log")):
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.5)
        assert list(tmp_path.glob("trn-rehearse-*/pods/*/*.log")), "no pod started within 180 s"
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground group
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out.decode()[-2000:]
    assert list(tmp_path.iterdir()) == []
    assert not session_alive(proc.pid)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps


def test_a_stack_whose_render_fails_is_bad_input_in_one_line(monkeypatch, capsys):
    from trnctl.rehearse import overlay
    monkeypatch.setattr(overlay, "stack_overlays", lambda: {"compile": {"compile": {"batchSize": 0}}})
    assert main(["rehearse", "compile-usw2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: rehearse compile-usw2: the render fails:") and "batchSize" in err[0]


def test_only_runs_the_named_step_and_an_unknown_step_is_bad_input(tmp_path):
    from trnctl.rehearse.runner import RehearsalError
    stack = hand_stack([job("first", ["false"])], [job("second", ["true"])])
    with Rehearsal(stack, work_dir=tmp_path / "work", s3=False, step_timeout=60) as r:
        by_name = r.run(only="second")
        by_number = r.run(only="1")
        with pytest.raises(RehearsalError, match="no step 'third'; steps: 0: Job/first; 1: Job/second"):
            r.run(only="third")
    assert by_name.ok and [p.step for p in by_name.pods] == [1] and by_name.pods[0].name.startswith("second-")
    assert by_number.ok and [p.step for p in by_number.pods] == [1]


def test_configmap_and_secret_volumes_are_files_with_their_modes_inside_the_pod(tmp_path):
    d = deployment("files", ["sleep", "600"])
    spec = d["spec"]["template"]["spec"]
    spec["volumes"] = [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "a", "mode": 0o600},
                                                                              {"key": "b", "path": "sub/b"}]}},
                       {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}}]
    spec["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/etc/cfg"},
                                             {"name": "sec", "mountPath": "/var/sec"}]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "ns"},
          "data": {"a": "alpha", "b": "beta", "c": "not projected"}}
    sec = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec", "namespace": "ns"},
           "stringData": {"token": "s3cret"}}
    with Rehearsal(hand_stack([cm, sec], [d]), work_dir=tmp_path / "work", s3=False, step_timeout=60) as r:
        result = r.run()
        assert result.ok, result.report()
        pod = result.pods[0].name
        out = r.exec_in(pod, "main", ["sh", "-c", "stat -L -c '%a %n' /etc/cfg/a /etc/cfg/sub/b /var/sec/token; "
                                      "ls /etc/cfg; cat /var/sec/token; touch /etc/cfg/x 2>&1 | grep -c Read-only"])
    lines = out.stdout.splitlines()
    assert lines[:3] == ["600 /etc/cfg/a", "644 /etc/cfg/sub/b", "400 /var/sec/token"], out.stderr
    assert lines[3:] == ["a", "sub", "s3cret1"]  # no key c; the volume is read-only


def test_a_native_sidecar_runs_beside_the_job_and_does_not_hold_it_up(tmp_path):
    """An init container with restartPolicy Always (a native sidecar, Kubernetes 1.29+) starts and keeps running;
    the main container starts after it and the Job completes when the main container exits."""
    pod_job = job("with-sidecar", ["sh", "-c", "exit 0"])
    pod_job["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "sidecar", "image": IMAGE, "restartPolicy": "Always", "command": ["sh", "-c", "sleep 600"]}]
    with Rehearsal(hand_stack([pod_job]), work_dir=tmp_path / "work", s3=False, step_timeout=30) as r:
        result = r.run()
    assert result.ok, result.report()
    [pod] = result.pods
    assert pod.exit_code == 0 and not pod.problem


def volcano_job(name: str, command: list[str]) -> dict:
    """A Volcano Job of one task, run by the Volcano runner (trnctl/rehearse/volcanojob.py)."""
    return {"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"minAvailable": 1, "schedulerName": "volcano", "queue": "default", "plugins": {"env": []},
                     "tasks": [{"name": "main", "replicas": 1, "template": {"spec": {
                         "restartPolicy": "Never", "automountServiceAccountToken": False,
                         "containers": [{"name": "main", "image": IMAGE, "command": command}]}}}]}}


def test_a_step_with_objects_of_several_controller_kinds_runs_each_through_its_controller(tmp_path):
    """One step holding a Volcano Job and a batch Job: the Volcano Job's pod comes from Volcano's rules (its
    `<job>-<task>-<index>` name and the env plugin's VC_TASK_INDEX), the Job's from Kubernetes' (generated name); both run."""
    queue = {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue", "metadata": {"name": "default"},
             "spec": {"reclaimable": True}}  # Volcano's admission needs the Job's queue
    step = [volcano_job("gang", ["sh", "-c", "echo task index $VC_TASK_INDEX"]), job("plain", ["sh", "-c", "echo plain"])]
    with Rehearsal(hand_stack([queue], step), work_dir=tmp_path / "work", s3=False, step_timeout=60) as r:
        result = r.run()
        logs = {p.name: (r.work / "pods" / p.name / "main.log").read_text() for p in result.pods}
    assert result.ok, result.report()
    gang = next(p for p in result.pods if p.name == "gang-main-0")
    plain = next(p for p in result.pods if p.name.startswith("plain-"))
    assert gang.exit_code == 0 and plain.exit_code == 0 and gang.step == plain.step == 1
    assert "task index 0" in logs[gang.name] and "plain" in logs[plain.name]
