"""What the MPI operator (kubeflow/mpi-operator v0.8.2, infra/versions.py MPI_OPERATOR_VERSION) makes of an MPIJob,
and what a rank that its launcher's `mpirun` starts over ssh on a worker sees.

The operator rules restate `pkg/controller/mpi_job_controller.go` at kubeflow/mpi-operator@b10758da (release-0.8,
"Prepare v0.8.2"; the mirror has no v0.8.2 tag, infra/manifests/mpi-operator cites the same commit). Our
deployment runs the upstream manifest without `--gang-scheduling` or `--cluster-domain` (infra/manifests/mpi-operator,
manifests/base/deployment.yaml args `-alsologtostderr` only), so no PodGroup is made and hostfile names end in `.svc`.
"""
from __future__ import annotations

import base64
import copy
import re

from trnctl.operators import OWNER_ANNOTATION, Context, describe
from trnctl.operators import kubernetes
from trnctl.operators.kubernetes import make_pod

KINDS = frozenset({("kubeflow.org/v2beta1", "MPIJob")})
VERSION = "v0.8.2"  # infra/versions.py MPI_OPERATOR_VERSION (a test checks they agree)
SOURCE = "kubeflow/mpi-operator@b10758da:pkg/controller/mpi_job_controller.go"

# source: kubeflow/mpi-operator@b10758da:pkg/controller/mpi_job_controller.go (const block)
CONFIG_SUFFIX, CONFIG_VOLUME, CONFIG_MOUNT_PATH = "-config", "mpi-job-config", "/etc/mpi"
HOSTFILE, DISCOVER_HOSTS = "hostfile", "discover_hosts.sh"
SSH_SECRET_SUFFIX, SSH_VOLUME, ROOT_SSH_PATH = "-ssh", "ssh-auth", "/root/.ssh"
LAUNCHER_SUFFIX, WORKER_SUFFIX = "-launcher", "-worker"
SSH_PRIVATE_KEY, SSH_PUBLIC_KEY = "ssh-privatekey", "ssh-publickey"  # corev1.SSHAuthPrivateKey, sshPublicKey
DEFAULT_WORKER_COMMAND = ["/usr/sbin/sshd", "-De"]  # newWorker: when the worker has no command or args
# source: kubeflow/mpi-operator@b10758da:pkg/apis/kubeflow/v2beta1/constants.go
OPERATOR_NAME_LABEL, JOB_NAME_LABEL = "training.kubeflow.org/operator-name", "training.kubeflow.org/job-name"
JOB_ROLE_LABEL, REPLICA_INDEX_LABEL = "training.kubeflow.org/job-role", "training.kubeflow.org/replica-index"
OPERATOR_NAME = "mpi-operator"


def _name(obj: dict) -> str:
    return obj["metadata"]["name"]


def _ns(obj: dict) -> str:
    return obj["metadata"].get("namespace", "default")


def _replica(obj: dict, kind: str) -> dict:
    return obj["spec"]["mpiReplicaSpecs"][kind]


def _slots(obj: dict) -> int:
    return int(obj["spec"].get("slotsPerWorker", 1))


def _implementation(obj: dict) -> str:
    return obj["spec"].get("mpiImplementation", "OpenMPI")


def _launcher_as_worker(obj: dict) -> bool:
    return bool(obj["spec"].get("runLauncherAsWorker", False))


def worker_count(obj: dict) -> int:
    return int(_replica(obj, "Worker").get("replicas") or 0) if "Worker" in obj["spec"]["mpiReplicaSpecs"] else 0


# --- names ---------------------------------------------------------------------------------------------------

def worker_name(job: str, index: int) -> str:
    """Worker pod name and hostname `<job>-worker-<i>`. source: mpi_job_controller.go (workerName)"""
    return f"{job}{WORKER_SUFFIX}-{index}"


def worker_hostname(job: str, index: int, namespace: str) -> str:
    """A worker's name in the hostfile: `<job>-worker-<i>.<job>.<ns>.svc` (no cluster domain: the operator runs
    without --cluster-domain). source: mpi_job_controller.go (newConfigMap domainFormat "%s.%s.%s.svc")"""
    return f"{worker_name(job, index)}.{job}.{namespace}.svc"


def launcher_job_name(job: str) -> str:
    """source: mpi_job_controller.go (newLauncherJob: `<job>-launcher`)"""
    return f"{job}{LAUNCHER_SUFFIX}"


def config_map_name(job: str) -> str:
    return f"{job}{CONFIG_SUFFIX}"


def ssh_secret_name(job: str) -> str:
    return f"{job}{SSH_SECRET_SUFFIX}"


# --- objects the controller creates ----------------------------------------------------------------------------

def hostfile(obj: dict) -> str:
    """`<host> slots=N` per worker for Open MPI (`<host>:N` for Intel MPI and MPICH), the launcher first when it
    also runs as a worker. source: mpi_job_controller.go (newConfigMap)"""
    job, ns, slots = _name(obj), _ns(obj), _slots(obj)
    hosts = ([f"{launcher_job_name(job)}.{job}.{ns}.svc"] if _launcher_as_worker(obj) else [])
    hosts += [worker_hostname(job, i, ns) for i in range(worker_count(obj))]
    sep = " slots=" if _implementation(obj) == "OpenMPI" else ":"
    return "".join(f"{h}{sep}{slots}\n" for h in hosts)


def discover_hosts(obj: dict) -> str:
    """One `echo <host>` per running worker pod, sorted by pod name (here: every worker).
    source: mpi_job_controller.go (updateDiscoverHostsInConfigMap)"""
    job, ns = _name(obj), _ns(obj)
    names = ([launcher_job_name(job)] if _launcher_as_worker(obj) else [])
    names += sorted(worker_name(job, i) for i in range(worker_count(obj)))
    return "#!/bin/sh\n" + "".join(f"echo {n}.{job}.{ns}.svc\n" for n in names)


def _owned(meta: dict, obj: dict) -> dict:
    meta.setdefault("annotations", {})[OWNER_ANNOTATION] = describe(obj)
    return meta


def config_objects(obj: dict, ctx) -> list[dict]:
    """The `<job>-config` ConfigMap (hostfile, discover_hosts.sh) and the `<job>-ssh` Secret (type
    kubernetes.io/ssh-auth: private key and its public key; the key pair comes from ctx.generate_ssh_keypair,
    the operator generates an ECDSA P-521 pair). source: mpi_job_controller.go (newConfigMap, newSSHAuthSecret)"""
    job = _name(obj)
    private, public = ctx.generate_ssh_keypair(f"MPIJob/{_ns(obj)}/{job}")
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": _owned({"name": config_map_name(job), "namespace": _ns(obj), "labels": {"app": job}}, obj),
              "data": {HOSTFILE: hostfile(obj), DISCOVER_HOSTS: discover_hosts(obj)}}
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth",
              "metadata": _owned({"name": ssh_secret_name(job), "namespace": _ns(obj), "labels": {"app": job}}, obj),
              "data": {SSH_PRIVATE_KEY: base64.b64encode(private.encode()).decode(),
                       SSH_PUBLIC_KEY: base64.b64encode(public.encode()).decode()}}
    return [config, secret]


def services(obj: dict, ctx) -> list[dict]:
    """One headless Service named after the job, selecting launcher and workers (the subdomain of every pod);
    publishNotReadyAddresses only with runLauncherAsWorker. source: mpi_job_controller.go (newJobService, newService)"""
    job = _name(obj)
    return [{"apiVersion": "v1", "kind": "Service",
             "metadata": _owned({"name": job, "namespace": _ns(obj), "labels": {"app": job}}, obj),
             "spec": {"clusterIP": "None", "selector": {OPERATOR_NAME_LABEL: OPERATOR_NAME, JOB_NAME_LABEL: job},
                      "publishNotReadyAddresses": _launcher_as_worker(obj)}}]


def _default_labels(job: str, role: str) -> dict:
    """source: mpi_job_controller.go (defaultLabels)"""
    return {OPERATOR_NAME_LABEL: OPERATOR_NAME, JOB_NAME_LABEL: job, JOB_ROLE_LABEL: role}


def _restart_policy(replica: dict) -> str:
    """source: mpi_job_controller.go (setRestartPolicy: ExitCode becomes Never)"""
    policy = replica.get("restartPolicy", "Never")  # v2beta1 DefaultRestartPolicy
    return "Never" if policy == "ExitCode" else policy


def _setup_ssh(spec: dict, obj: dict) -> None:
    """The ssh Secret as id_rsa, id_rsa.pub and authorized_keys at sshAuthMountPath on the first container;
    mode 0600 only when that path is /root/.ssh, else the Secret volume default (0644).
    source: mpi_job_controller.go (setupSSHOnPod, sshVolumeItems)"""
    path = obj["spec"].get("sshAuthMountPath", ROOT_SSH_PATH)
    secret: dict = {"secretName": ssh_secret_name(_name(obj)),
                    "items": [{"key": SSH_PRIVATE_KEY, "path": "id_rsa"}, {"key": SSH_PUBLIC_KEY, "path": "id_rsa.pub"},
                              {"key": SSH_PUBLIC_KEY, "path": "authorized_keys"}]}
    if path == ROOT_SSH_PATH:
        secret["defaultMode"] = 0o600
    spec.setdefault("volumes", []).append({"name": SSH_VOLUME, "secret": secret})
    spec["containers"][0].setdefault("volumeMounts", []).append({"name": SSH_VOLUME, "mountPath": path})


def worker_pods(obj: dict, ctx) -> list[dict]:
    """Workers: `<job>-worker-<i>`, hostname = name and subdomain = job (DNS under the job's Service), a DNS search
    for the job's Service, `sshd -De` when the container has no command, K_MPI_JOB_ROLE=worker and the ssh keys:
    nothing else (no /etc/mpi, no OMPI_* env). source: mpi_job_controller.go (newWorker)"""
    job, ns = _name(obj), _ns(obj)
    replica = _replica(obj, "Worker")
    out = []
    for i in range(worker_count(obj)):
        template = copy.deepcopy(replica["template"])
        meta, spec = template.get("metadata") or {}, template["spec"]
        labels = {**(meta.get("labels") or {}), **_default_labels(job, "worker"),
                  REPLICA_INDEX_LABEL: str(i + 1 if _launcher_as_worker(obj) else i)}
        spec["hostname"], spec["subdomain"] = worker_name(job, i), job
        if spec.get("hostNetwork"):
            spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        # hard-coded cluster.local in the source, whatever --cluster-domain says
        search = f"{job}.{ns}.svc.cluster.local"
        spec.setdefault("dnsConfig", {}).setdefault("searches", []).append(search)
        spec["restartPolicy"] = _restart_policy(replica)
        container = spec["containers"][0]
        if not container.get("command") and not container.get("args"):
            container["command"] = list(DEFAULT_WORKER_COMMAND)
        container.setdefault("env", []).append({"name": "K_MPI_JOB_ROLE", "value": "worker"})
        _setup_ssh(spec, obj)
        template["metadata"] = {**meta, "labels": labels}
        out.append(make_pod(template, name=worker_name(job, i), namespace=ns, owner=obj))
    return out


def _launcher_env(obj: dict) -> list[dict]:
    """source: mpi_job_controller.go (launcherEnvVars, ompiEnvVars, intelEnvVars, mpichEnvVars, openMPISlotsEnv,
    intelMPISlotsEnv, nvidiaDisableEnvVars)"""
    env = [{"name": "K_MPI_JOB_ROLE", "value": "launcher"}]
    hostfile_path = f"{CONFIG_MOUNT_PATH}/{HOSTFILE}"
    slots = str(_slots(obj))
    impl = _implementation(obj)
    if impl == "OpenMPI":
        env += [{"name": "OMPI_MCA_orte_keep_fqdn_hostnames", "value": "true"},
                {"name": "OMPI_MCA_orte_default_hostfile", "value": hostfile_path},
                {"name": "OMPI_MCA_plm_rsh_args", "value": "-o ConnectionAttempts=10"},
                {"name": "OMPI_MCA_orte_set_default_slots", "value": slots}]
    elif impl == "Intel":
        env += [{"name": "I_MPI_HYDRA_HOST_FILE", "value": hostfile_path},
                {"name": "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS", "value": "-o ConnectionAttempts=10"},
                {"name": "I_MPI_PERHOST", "value": slots}]
    elif impl == "MPICH":
        env += [{"name": "HYDRA_HOST_FILE", "value": hostfile_path},
                {"name": "HYDRA_LAUNCH_EXTRA_ARGS", "value": "-o ConnectionAttempts=10"}]
    if not _launcher_as_worker(obj):
        env += [{"name": "NVIDIA_VISIBLE_DEVICES"}, {"name": "NVIDIA_DRIVER_CAPABILITIES"}]
    return env


def launcher_job(obj: dict, ctx) -> dict:
    """The batch/v1 Job `<job>-launcher`: the launcher template with hostname `<job>-launcher`, subdomain job, the
    MPI env, the ssh keys and `/etc/mpi` (hostfile 0444, discover_hosts.sh 0555); runPolicy's TTL, deadline and
    backoff on the Job. source: mpi_job_controller.go (newLauncherJob, newLauncherPodTemplate)"""
    job, ns = _name(obj), _ns(obj)
    replica = _replica(obj, "Launcher")
    template = copy.deepcopy(replica["template"])
    meta, spec = template.get("metadata") or {}, template["spec"]
    labels = {**(meta.get("labels") or {}), **_default_labels(job, "launcher")}
    if _launcher_as_worker(obj):
        labels[REPLICA_INDEX_LABEL] = "0"
    spec["hostname"], spec["subdomain"] = launcher_job_name(job), job
    if spec.get("hostNetwork"):
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    container = spec["containers"][0]
    container.setdefault("env", []).extend(_launcher_env(obj))
    _setup_ssh(spec, obj)
    spec["restartPolicy"] = _restart_policy(replica)
    spec["volumes"].append({"name": CONFIG_VOLUME, "configMap": {
        "name": config_map_name(job), "items": [{"key": HOSTFILE, "path": HOSTFILE, "mode": 0o444},
                                                {"key": DISCOVER_HOSTS, "path": DISCOVER_HOSTS, "mode": 0o555}]}})
    container.setdefault("volumeMounts", []).append({"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT_PATH})
    run_policy = obj["spec"].get("runPolicy") or {}
    job_spec = {"template": {"metadata": {"labels": labels, "annotations": dict(meta.get("annotations") or {})},
                             "spec": spec},
                "podReplacementPolicy": "Failed"}
    for ours, theirs in (("ttlSecondsAfterFinished", "ttlSecondsAfterFinished"),
                         ("activeDeadlineSeconds", "activeDeadlineSeconds"), ("backoffLimit", "backoffLimit")):
        if run_policy.get(theirs) is not None:
            job_spec[ours] = run_policy[theirs]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _owned({"name": launcher_job_name(job), "namespace": ns, "labels": {"app": job}}, obj),
            "spec": job_spec}


def launcher_waits_for_workers(obj: dict) -> bool:
    """WaitForWorkersReady: the launcher Job is created only once every worker pod is ready; AtStartup (the
    default): at once. source: mpi_job_controller.go (syncHandler, LauncherCreationPolicy)"""
    return obj["spec"].get("launcherCreationPolicy", "AtStartup") == "WaitForWorkersReady"


def launcher_pods(obj: dict, ctx: Context, attempt: int = 0) -> list[dict]:
    """The launcher Job's pod (named by the Job controller: trnctl.operators.kubernetes); `attempt` > 0: the
    replacement the Job creates after that many failed launcher pods (kubernetes.job_retry)."""
    launcher = kubernetes.job_pods(launcher_job(obj, ctx), attempt=attempt)
    for pod in launcher:
        pod["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = describe(obj)
    return launcher


def launcher_retry(obj: dict, ctx: Context, pod_name: str, *, failed: int = 0, restarts: int = 0,
                   deleted: bool = False) -> kubernetes.JobRetry:
    """What follows when the launcher's mpirun exits non-zero (a rank died: mpirun aborts the job) or the launcher
    pod is deleted (the hang watchdog, workloads/progress.py): the launcher is a batch Job whose backoffLimit is
    runPolicy.backoffLimit and whose restartPolicy is the Launcher replica's (newLauncherJob, setRestartPolicy:
    OnFailure stays OnFailure, ExitCode becomes Never), so the Job rule decides (kubernetes.job_retry). The
    workers are not restarted: their sshd keeps running and the next mpirun starts every rank again over ssh."""
    return kubernetes.job_retry(launcher_job(obj, ctx), pod_name, failed=failed, restarts=restarts, deleted=deleted)


def pods(obj: dict, ctx: Context) -> list[dict]:
    """Workers, then the launcher Job's pod."""
    return worker_pods(obj, ctx) + launcher_pods(obj, ctx)


VALIDATION = "kubeflow/mpi-operator@b10758da:pkg/apis/kubeflow/validation/validation.go"
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def admission_problems(obj: dict, ctx) -> list[str]:
    """What the operator's validation refuses (the MPIJob then fails with a ValidationError event, no pods)."""
    what = f"MPIJob {_ns(obj)}/{_name(obj)}"
    spec = obj["spec"]
    problems = []
    last = worker_name(_name(obj), max(worker_count(obj), 1) - 1)
    if len(last) > 63 or not _DNS1035.fullmatch(last):
        problems.append(f"{what}: worker hostname {last!r} is not a DNS-1035 label (source: {VALIDATION} "
                        "validateMPIJobName)")
    for key, why in (("slotsPerWorker", "must have number of slots per worker"),
                     ("sshAuthMountPath", "must have a mount path for SSH credentials")):
        if spec.get(key) in (None, ""):
            problems.append(f"{what}: spec.{key} {why} (source: {VALIDATION} validateMPIJobSpec)")
    if _implementation(obj) not in ("OpenMPI", "Intel", "MPICH"):
        problems.append(f"{what}: spec.mpiImplementation {_implementation(obj)!r} is not OpenMPI, Intel or MPICH "
                        f"(source: {VALIDATION} validateMPIJobSpec)")
    specs = spec.get("mpiReplicaSpecs") or {}
    if "Launcher" not in specs:
        problems.append(f"{what}: spec.mpiReplicaSpecs must have a Launcher (source: {VALIDATION})")
    for kind, replica in specs.items():
        where = f"spec.mpiReplicaSpecs[{kind}]"
        if replica.get("replicas") is None:
            problems.append(f"{what}: {where}.replicas must be set (source: {VALIDATION} validateReplicaSpec)")
        elif kind == "Launcher" and int(replica["replicas"]) != 1:
            problems.append(f"{what}: {where}.replicas must be 1 (source: {VALIDATION} validateLauncherReplicaSpec)")
        elif kind == "Worker" and int(replica["replicas"]) < 1:
            problems.append(f"{what}: {where}.replicas must be >= 1 (source: {VALIDATION} validateWorkerReplicaSpec)")
        if replica.get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append(f"{what}: {where}.restartPolicy {replica.get('restartPolicy')!r} is not Never or OnFailure "
                            f"(source: {VALIDATION} validateReplicaSpec)")
        if not ((replica.get("template") or {}).get("spec") or {}).get("containers"):
            problems.append(f"{what}: {where}.template must define at least one container (source: {VALIDATION})")
    return problems


# --- what mpirun gives the ranks it starts over ssh -------------------------------------------------------------
# Open MPI 4.1 (Debian openmpi-bin 4.1.4 here): mpirun(1) `-x <env>` "Export the specified environment variables to
# the remote nodes", `-x NAME=value` defines one; the runtime defines OMPI_COMM_WORLD_SIZE/RANK/LOCAL_SIZE/
# LOCAL_RANK on every process (https://docs.open-mpi.org/en/v5.0.x/tuning-apps/environment-var.html, same set in
# the 4.1 FAQ "What environment variables are available to my MPI processes").

def mpirun_forwarded_env(mpirun_argv: list[str], launcher_env: dict[str, str]) -> dict[str, str]:
    """The variables `-x` carries from the launcher's environment (or defines) to every rank."""
    out: dict[str, str] = {}
    for i, arg in enumerate(mpirun_argv[:-1]):
        if arg == "-x":
            name, sep, value = mpirun_argv[i + 1].partition("=")
            if sep:
                out[name] = value
            elif name in launcher_env:
                out[name] = launcher_env[name]
    return out


def rank_env(forwarded: dict[str, str], *, rank: int, size: int, local_rank: int = 0, local_size: int = 1,
             login_env: dict[str, str] | None = None) -> dict[str, str]:
    """A rank's environment on a worker: the ssh session's login environment (sshd does not pass its own
    environment, i.e. the worker container's env, to sessions: sshd(8) "LOGIN PROCESS", environment is built
    from scratch; only AcceptEnv/PermitUserEnvironment add to it, off by default in sshd_config(5)), what `-x`
    forwarded, and the OMPI_COMM_WORLD_* variables Open MPI defines on every process."""
    return {**(login_env or {}), **forwarded, "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank), "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size)}


def await_kind(obj: dict) -> str:
    """"complete" when `pulumi up` waits for the MPIJob's Succeeded condition (the launcher Job completed), "ready"
    for Running (a launcher pod and every worker running: mpi_job_controller.go updateMPIJobStatus)."""
    wait = (obj["metadata"].get("annotations") or {}).get("pulumi.com/waitFor", "")
    return "ready" if wait.endswith("=Running") else "complete"
