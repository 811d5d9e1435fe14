"""trnctl.operators.mpi over the rendered nemo-pretrain stack: the worker and launcher pods, hostfile, Service and
ssh Secret the MPI operator v0.8.2 makes of our MPIJobs, and what the launch code sees on a worker once the
launcher's mpirun has started it there (issue 20 defect 3)."""
from __future__ import annotations

import json

import pytest

from infra import versions
from tests.operator_helpers import context, objects, one
from trn_workloads.nemo import launch, load_run_config, mpirun
from trn_workloads.nemo.command import FORWARDED_ENV, mpirun_command
from trn_workloads.nemo.config import ConfigError
from trnctl.operators import all_config_objects, all_services, controller_for, dns_records, mpi
from trnctl.operators.kubernetes import container_env, container_mounts

STACK = "nemo-pretrain-usw2"
NS = "ml-shared"


def mpijob(step: str) -> dict:
    return one(objects(STACK), "MPIJob", f"-{step}")


def role(pods: list[dict], name: str) -> list[dict]:
    return [p for p in pods if p["metadata"]["labels"].get(mpi.JOB_ROLE_LABEL) == name]


def test_module_is_for_the_pinned_version():
    assert mpi.VERSION == versions.MPI_OPERATOR_VERSION
    assert controller_for(mpijob("train")) is mpi


@pytest.mark.parametrize("step", ["precompile", "train"])
def test_todays_mpijobs_are_admitted(step):
    assert mpi.admission_problems(mpijob(step), context(STACK)) == []


def test_workers_get_ssh_keys_and_dns_names_and_nothing_else():
    job = mpijob("train")
    name, n = job["metadata"]["name"], mpi.worker_count(job)
    workers = role(mpi.pods(job, context(STACK)), "worker")
    assert [w["metadata"]["name"] for w in workers] == [mpi.worker_name(name, i) for i in range(n)]
    for i, worker in enumerate(workers):
        spec, container = worker["spec"], worker["spec"]["containers"][0]
        assert (spec["hostname"], spec["subdomain"]) == (f"{name}-worker-{i}", name)
        assert spec["dnsConfig"]["searches"] == [f"{name}.{NS}.svc.cluster.local"]
        assert container["command"][0] == "/usr/sbin/sshd"  # ours (port 2222 as the image's user), not the default
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[job["spec"]["sshAuthMountPath"]] == mpi.SSH_VOLUME and mpi.CONFIG_MOUNT_PATH not in mounts
        names = {e["name"] for e in container["env"]}
        assert "K_MPI_JOB_ROLE" in names and not any(n.startswith(("OMPI_", "MASTER_")) for n in names)
        [ssh] = [v for v in spec["volumes"] if v["name"] == mpi.SSH_VOLUME]
        assert "defaultMode" not in ssh["secret"]  # 0600 only at /root/.ssh
        assert sorted(i["path"] for i in ssh["secret"]["items"]) == ["authorized_keys", "id_rsa", "id_rsa.pub"]


def test_launcher_gets_hostfile_mpi_env_and_waits_for_workers():
    ctx = context(STACK)
    job = mpijob("train")
    name = job["metadata"]["name"]
    [launcher] = role(mpi.pods(job, ctx), "launcher")
    assert launcher["metadata"]["name"].startswith(f"{name}-launcher-")
    assert launcher["spec"]["hostname"] == f"{name}-launcher" and launcher["spec"]["subdomain"] == name
    env = {e["name"]: e.get("value") for e in launcher["spec"]["containers"][0]["env"]}
    assert env["OMPI_MCA_orte_default_hostfile"] == "/etc/mpi/hostfile" and env["OMPI_MCA_orte_keep_fqdn_hostnames"] == "true"
    assert env["OMPI_MCA_plm_rsh_args"] == "-o ConnectionAttempts=10" and env["OMPI_MCA_orte_set_default_slots"] == "1"
    files = {f"{m.path}/{f.path}": (f.content.decode(), f.mode & 0o777)
             for m in container_mounts(launcher, launcher["spec"]["containers"][0], all_config_objects(objects(STACK), ctx),
                                       fs_group=1000) if m.kind == "files" for f in m.files}
    hostfile, mode = files["/etc/mpi/hostfile"]
    assert hostfile.splitlines() == [f"{name}-worker-{i}.{name}.{NS}.svc slots=1" for i in range(4)] and mode == 0o444
    assert files["/etc/mpi/discover_hosts.sh"][1] == 0o555
    assert mpi.launcher_waits_for_workers(job)  # launcherCreationPolicy WaitForWorkersReady


def test_job_service_and_dns_reach_every_worker():
    ctx = context(STACK)
    objs = objects(STACK)
    job = mpijob("train")
    name = job["metadata"]["name"]
    [svc] = [s for s in all_services(objs, ctx) if s["metadata"]["name"] == name]
    assert svc["spec"]["clusterIP"] == "None"
    records = dns_records(objs, ctx)
    for i in range(mpi.worker_count(job)):
        assert records[mpi.worker_hostname(name, i, NS)] == mpi.worker_name(name, i)


def test_ssh_secret_carries_the_generated_key_pair():
    ctx = context(STACK)
    config, secret = mpi.config_objects(mpijob("train"), ctx)
    assert secret["type"] == "kubernetes.io/ssh-auth" and secret["metadata"]["name"].endswith("-ssh")
    assert set(secret["data"]) == {mpi.SSH_PRIVATE_KEY, mpi.SSH_PUBLIC_KEY}
    assert config["metadata"]["name"].endswith("-config")


def launcher_view(tmp_path, step: str) -> tuple[dict, dict[str, str], list[dict]]:
    """The launcher pod's env as the kubelet computes it, with /etc/mpi written under tmp_path (the env's
    OMPI_MCA_orte_default_hostfile pointed there)."""
    ctx = context(STACK)
    objs = objects(STACK)
    job = one(objs, "MPIJob", f"-{step}")
    pods = mpi.pods(job, ctx)
    [launcher] = role(pods, "launcher")
    container = launcher["spec"]["containers"][0]
    config = all_config_objects(objs, ctx)
    for m in container_mounts(launcher, container, config, fs_group=None):
        if m.path == mpi.CONFIG_MOUNT_PATH:
            for f in m.files:
                (tmp_path / f.path).write_bytes(f.content)
    env = container_env(launcher, container, config + objs)
    env["OMPI_MCA_orte_default_hostfile"] = str(tmp_path / mpi.HOSTFILE)
    return launcher, env, pods


def mpirun_as_the_launcher_runs_it(launcher: dict, env: dict[str, str], monkeypatch) -> tuple[list[str], dict]:
    """Run the launcher container's command (python -m trn_workloads.nemo.mpirun ...) up to its exec of mpirun."""
    argv = launcher["spec"]["containers"][0]["command"]
    assert argv[:3] == ["python", "-m", "trn_workloads.nemo.mpirun"]
    execs = []

    def fake_exec(file, args, exec_env):
        execs.append((args, exec_env))
        raise SystemExit(0)

    monkeypatch.setattr(mpirun.os, "execvpe", fake_exec)
    monkeypatch.setattr(mpirun.os, "environ", env)
    with pytest.raises(SystemExit):
        mpirun.main(argv[3:])
    [(args, exec_env)] = execs
    return args, exec_env


@pytest.mark.parametrize("step", ["precompile", "train"])
def test_every_rank_learns_its_rank_and_rank0_from_mpirun(step, tmp_path, monkeypatch):
    """Issue 20 defect 3: the rank on worker i knows it is rank i and finds rank 0 at worker 0's DNS name,
    from nothing but what mpirun gives it: the -x forwarded launcher env and Open MPI's OMPI_COMM_WORLD_*."""
    launcher, env, pods = launcher_view(tmp_path, step)
    mpirun_argv, exec_env = mpirun_as_the_launcher_runs_it(launcher, env, monkeypatch)
    assert mpirun_argv[0] == "mpirun" and ["-x", "MASTER_ADDR"] == mpirun_argv[mpirun_argv.index("MASTER_ADDR") - 1:][:2]
    forwarded = mpi.mpirun_forwarded_env(mpirun_argv, exec_env)
    launch_argv = mpirun_argv[mpirun_argv.index("trn_workloads.nemo.launch") - 2:]
    config = all_config_objects(objects(STACK), context(STACK))
    run_json = next(o for o in config if o["kind"] == "ConfigMap" and "run.json" in (o.get("data") or {}))["data"]["run.json"]
    cfg = load_run_config(json.loads(run_json))
    workers = role(pods, "worker")
    size = int(mpirun_argv[mpirun_argv.index("-np") + 1])
    assert size == len(workers) == cfg.num_nodes
    records = dns_records(objects(STACK), context(STACK))
    job = launcher["metadata"]["labels"][mpi.JOB_NAME_LABEL]
    for rank, worker in enumerate(workers):
        # the worker's own container env does not reach a process started over ssh (sshd builds the session env)
        rank_env = mpi.rank_env(forwarded, rank=rank, size=size)
        assert launch.node_rank(cfg, rank_env) == rank
        master = launch.master_address(cfg, rank_env)
        assert master == mpi.worker_hostname(job, 0, NS) and records[master] == mpi.worker_name(job, 0)
        assert not any(m["mountPath"] == mpi.CONFIG_MOUNT_PATH for m in worker["spec"]["containers"][0]["volumeMounts"])
    assert launch_argv[:3] == ["python", "-m", "trn_workloads.nemo.launch"]


def test_without_master_addr_forwarded_the_workers_cannot_find_rank0(tmp_path, monkeypatch):
    """The defect put back: mpirun without `-x MASTER_ADDR` (the launch code then had only a hostfile that no
    worker has) leaves every multi-node rank without rank 0's address."""
    launcher, env, _ = launcher_view(tmp_path, "train")
    old = mpirun_command(4, ["python", "-m", "trn_workloads.nemo.launch"],
                         forward_env=tuple(n for n in FORWARDED_ENV if n != "MASTER_ADDR"))
    forwarded = mpi.mpirun_forwarded_env(old, {**env, "MASTER_ADDR": "set-in-launcher-only"})
    cfg = load_run_config({"preset": "llama2-7b", "tokenizer": "/shared/t", "dataset_prefix": "/shared/d",
                           "run_dir": "/shared/r", "compile_cache": "/shared/c"})
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        launch.master_address(cfg, mpi.rank_env(forwarded, rank=1, size=4))


def test_mpirun_wrapper_refuses_to_run_without_the_hostfile(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mpirun.os, "environ", {"OMPI_MCA_orte_default_hostfile": str(tmp_path / "absent")})
    assert mpirun.main(["--nodes", "2", "--", "true"]) == 2
    assert "cannot read the MPI hostfile" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda s: s["mpiReplicaSpecs"]["Launcher"].update(replicas=2), "Launcher].replicas must be 1"),
    (lambda s: s.update(mpiImplementation="MVAPICH"), "is not OpenMPI, Intel or MPICH"),
    (lambda s: s.pop("sshAuthMountPath"), "spec.sshAuthMountPath must have a mount path"),
    (lambda s: s["mpiReplicaSpecs"]["Worker"].update(restartPolicy="Always"), "is not Never or OnFailure"),
])
def test_operator_validation_refuses(change, message):
    job = mpijob("train")
    change(job["spec"])
    assert any(message in p for p in mpi.admission_problems(job, context(STACK)))


def test_the_launcher_job_retries_by_the_job_rule_with_the_mpijobs_backoff_limit():
    """mpi-operator@b10758da newLauncherJob: backoffLimit = runPolicy.backoffLimit, restartPolicy the Launcher's
    (OnFailure here): a failed mpirun is restarted in its pod; a deleted launcher pod is replaced by a new one."""
    job, ctx = mpijob("train"), context(STACK)
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3
    [launcher] = mpi.launcher_pods(job, ctx)
    name = launcher["metadata"]["name"]
    assert mpi.launcher_job(job, ctx)["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    crashed = mpi.launcher_retry(job, ctx, name)
    assert (crashed.action, crashed.pod) == ("restart-container", name)
    deleted = mpi.launcher_retry(job, ctx, name, restarts=crashed.restarts, deleted=True)
    [replacement] = mpi.launcher_pods(job, ctx, attempt=1)
    assert deleted.action == "new-pod" and deleted.pod == replacement["metadata"]["name"] != name
    assert replacement["metadata"]["labels"][mpi.JOB_ROLE_LABEL] == "launcher"
    assert mpi.launcher_retry(job, ctx, name, restarts=2).action == "failed"
