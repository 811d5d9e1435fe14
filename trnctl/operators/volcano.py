"""What Volcano's job controller (v1.15.1, infra/versions.py VOLCANO_VERSION) makes of a batch.volcano.sh Job:
its pods, the plugins' env, files, Service, NetworkPolicy and Secrets, and what its admission webhook refuses.

Rules restate volcano-sh/volcano@v1.15.1 (paths below); the label and annotation keys are volcano.sh/apis v1.15.1
(`staging/src/volcano.sh/apis/pkg/apis/batch/v1alpha1/labels.go`, `scheduling/v1beta1/labels.go`). The job
controller runs the plugins in Go map order (job_controller_plugins.go pluginOnPodCreate); we run them sorted by
name, which yields the same env set (no plugin reads another's env). The PodGroup name carries the Job's UID,
stood in for by `trnctl.operators.kubernetes.object_uid`.
"""
from __future__ import annotations

import base64
import copy
import re

from trnctl.operators import OWNER_ANNOTATION, Context, describe
from trnctl.operators.kubernetes import make_pod, object_uid

KINDS = frozenset({("batch.volcano.sh/v1alpha1", "Job")})
VERSION = "1.15.1"  # infra/versions.py VOLCANO_VERSION (a test checks they agree)
SOURCE = "volcano-sh/volcano@v1.15.1"

# source: volcano-sh/volcano@v1.15.1:staging/src/volcano.sh/apis/pkg/apis/batch/v1alpha1/labels.go
TASK_SPEC_KEY, TASK_INDEX_KEY = "volcano.sh/task-spec", "volcano.sh/task-index"
JOB_NAME_KEY, JOB_NAMESPACE_KEY, QUEUE_NAME_KEY = "volcano.sh/job-name", "volcano.sh/job-namespace", "volcano.sh/queue-name"
JOB_VERSION_KEY, TEMPLATE_KEY, RETRY_COUNT_KEY = "volcano.sh/job-version", "volcano.sh/template-uid", "volcano.sh/job-retry-count"
# source: volcano-sh/volcano@v1.15.1:staging/src/volcano.sh/apis/pkg/apis/scheduling/v1beta1/labels.go
GROUP_NAME_ANNOTATION = "scheduling.k8s.io/group-name"

# source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/distributed-framework/pytorch/pytorch.go
PYTORCH_DEFAULT_PORT, PYTORCH_DEFAULT_MASTER, PYTORCH_DEFAULT_WORKER = 23456, "master", "worker"
PYTORCH_PORT_NAME = "pytorchjob-port"
PYTORCH_WAIT_MASTER_IMAGE = "busybox:1.36.1"
# source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/svc/const.go
SVC_MOUNT_PATH = "/etc/volcano"
# source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/env/const.go
ENV_TASK_INDEX_NAMES = ("VK_TASK_INDEX", "VC_TASK_INDEX")
# source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/ssh/const.go
SSH_DEFAULT_PATH = "/root/.ssh"
# source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/factory.go (registered job plugins)
KNOWN_PLUGINS = ("env", "svc", "ssh", "tensorflow", "mpi", "pytorch", "ray", "hcclrank")
# source: volcano-sh/volcano@v1.15.1:pkg/webhooks/admission/jobs/mutate/mutate_job.go (patchDefaultPlugins)
NEEDS_SVC = ("tensorflow", "mpi", "pytorch", "ray")
DEFAULT_QUEUE = "default"  # mutate_job.go DefaultQueue


def _name(obj: dict) -> str:
    return obj["metadata"]["name"]


def _ns(obj: dict) -> str:
    return obj["metadata"].get("namespace", "default")


def pod_name(job: str, task: str, index: int) -> str:
    """source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/helpers/helpers.go (MakePodName, PodNameFmt)"""
    return f"{job}-{task}-{index}"


def _parse_flags(args: list[str], defaults: dict) -> dict:
    """Go `flag` parsing of a plugin's argument list (`--name=value`, `-name=value`, bare bools)."""
    out = dict(defaults)
    for arg in args or []:
        key, sep, value = arg.lstrip("-").partition("=")
        if key in out:
            default = defaults[key]
            if isinstance(default, bool):
                out[key] = (value.lower() in ("1", "t", "true")) if sep else True
            elif isinstance(default, int):
                out[key] = int(value)
            else:
                out[key] = value
    return out


def plugins(obj: dict) -> dict[str, list[str]]:
    """The plugins after the admission webhook's defaults: svc added for pytorch/mpi/tensorflow/ray, ssh for mpi.
    source: volcano-sh/volcano@v1.15.1:pkg/webhooks/admission/jobs/mutate/mutate_job.go (patchDefaultPlugins)"""
    out = {k: list(v or []) for k, v in (obj["spec"].get("plugins") or {}).items()}
    if out and any(p in out for p in NEEDS_SVC):
        out.setdefault("svc", [])
    if "mpi" in out:
        out.setdefault("ssh", [])
    return out


def pytorch_settings(obj: dict) -> dict:
    """source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/distributed-framework/pytorch/pytorch.go
    (addFlags)"""
    return _parse_flags(plugins(obj).get("pytorch", []), {
        "master": PYTORCH_DEFAULT_MASTER, "worker": PYTORCH_DEFAULT_WORKER, "port": PYTORCH_DEFAULT_PORT,
        "wait-master-enabled": False, "wait-master-timeout": 300, "wait-master-image": PYTORCH_WAIT_MASTER_IMAGE})


def _task(obj: dict, name: str) -> dict | None:
    return next((t for t in obj["spec"].get("tasks") or [] if t["name"] == name), None)


def task_host(obj: dict, task: dict, index: int) -> str:
    """`<hostname>.<subdomain>`: the template's, else `<job>-<task>-<i>.<job>`.
    source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/svc/svc.go (GenerateHosts),
    distributed-framework/pytorch/pytorch.go (generateMasterAddr)"""
    spec = task["template"].get("spec") or {}
    return f"{spec.get('hostname') or pod_name(_name(obj), task['name'], index)}.{spec.get('subdomain') or _name(obj)}"


def master_addr(obj: dict) -> str | None:
    """MASTER_ADDR the pytorch plugin gives every pod: the master task's first pod `<job>-master-0.<job>`
    (a short name: resolved through the pod's DNS search path in its namespace)."""
    master = _task(obj, pytorch_settings(obj)["master"])
    return task_host(obj, master, 0) if master else None


def _env_key(task: str) -> str:
    return task.replace("-", "_").upper()


def svc_hosts(obj: dict) -> dict[str, str]:
    """The `<job>-svc` ConfigMap data: `<task>.host` (newline-separated), VC_<TASK>_HOSTS (comma-separated),
    VC_<TASK>_NUM. source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/svc/svc.go (GenerateHosts)"""
    data: dict[str, str] = {}
    for task in obj["spec"].get("tasks") or []:
        hosts = []
        for i in range(int(task.get("replicas", 0))):
            hosts.append(task_host(obj, task, i))
            if (task["template"].get("spec") or {}).get("hostname"):
                break  # a fixed hostname is one host
        data[f"{task['name'].replace('-', '_')}.host"] = "\n".join(hosts)
        data[f"VC_{_env_key(task['name'])}_HOSTS"] = ",".join(hosts)
        data[f"VC_{_env_key(task['name'])}_NUM"] = str(len(hosts))
    return data


def svc_config_map_name(job: str) -> str:
    return f"{job}-svc"  # svc.go cmName


def ssh_secret_name(job: str) -> str:
    return f"{job}-ssh"  # ssh.go secretName


def _containers(spec: dict) -> list[dict]:
    return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])


def _plugin_env(pod: dict) -> None:
    """source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/env/env.go (OnPodCreate)"""
    index = pod["metadata"]["name"].split("-")[-1]  # helpers.GetPodIndexUnderTask
    for c in _containers(pod["spec"]):
        c.setdefault("env", []).extend({"name": n, "value": index} for n in ENV_TASK_INDEX_NAMES)


def _plugin_svc(pod: dict, obj: dict) -> None:
    """Hostname (pod name) and subdomain (job) if unset, VC_<TASK>_HOSTS/NUM of every task from the ConfigMap,
    which is also mounted whole at /etc/volcano. source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/
    svc/svc.go (OnPodCreate, mountConfigmap)"""
    spec, job = pod["spec"], _name(obj)
    spec["hostname"] = spec.get("hostname") or pod["metadata"]["name"]
    spec["subdomain"] = spec.get("subdomain") or job
    names = [f"VC_{_env_key(t['name'])}_{kind}" for t in obj["spec"].get("tasks") or [] for kind in ("HOSTS", "NUM")]
    env = [{"name": n, "valueFrom": {"configMapKeyRef": {"name": svc_config_map_name(job), "key": n}}} for n in names]
    spec.setdefault("volumes", []).append({"name": svc_config_map_name(job),
                                           "configMap": {"name": svc_config_map_name(job)}})
    for c in _containers(spec):
        c.setdefault("env", []).extend(copy.deepcopy(env))
        c.setdefault("volumeMounts", []).append({"name": svc_config_map_name(job), "mountPath": SVC_MOUNT_PATH})


def _plugin_pytorch(pod: dict, obj: dict) -> None:
    """MASTER_ADDR, MASTER_PORT, WORLD_SIZE (pods of the master and worker tasks), RANK (0 for the master, pod
    index + 1 for workers) on every container, a `pytorchjob-port` container port, and with wait-master-enabled a
    busybox init container on workers. Nothing at all when the master task does not exist.
    source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/distributed-framework/pytorch/pytorch.go"""
    cfg = pytorch_settings(obj)
    master = _task(obj, cfg["master"])
    if master is None:
        return  # klog.Errorf "job doesn't have task": no env
    task = pod["metadata"]["annotations"][TASK_SPEC_KEY]
    addr = task_host(obj, master, 0)
    world = sum(int(t.get("replicas", 0)) for t in obj["spec"]["tasks"] if t["name"] in (cfg["master"], cfg["worker"]))
    rank = None
    if task == cfg["worker"]:
        rank = int(pod["metadata"]["name"].split("-")[-1]) + 1
        if cfg["wait-master-enabled"]:
            pod["spec"].setdefault("initContainers", []).append({
                "name": "wait-for-master", "image": cfg["wait-master-image"],
                "command": ["sh", "-c", f"until {{ nc -z {addr} {cfg['port']} || echo > /dev/tcp/{addr}/{cfg['port']}; }} "
                                        f"2>/dev/null; do sleep 2; done"]})
    elif task == cfg["master"]:
        rank = 0
    for c in pod["spec"]["containers"]:
        if not any(p.get("containerPort") == cfg["port"] for p in c.get("ports") or []):
            c.setdefault("ports", []).append({"name": PYTORCH_PORT_NAME, "containerPort": cfg["port"]})
        env = c.setdefault("env", [])
        env += [{"name": "MASTER_ADDR", "value": addr}, {"name": "MASTER_PORT", "value": str(cfg["port"])},
                {"name": "WORLD_SIZE", "value": str(world)}]
        if rank is not None:
            env.append({"name": "RANK", "value": str(rank)})


def _plugin_ssh(pod: dict, obj: dict) -> None:
    """The `<job>-ssh` Secret's .ssh/{id_rsa,id_rsa.pub,authorized_keys,config} mounted (subPath .ssh) at
    --ssh-key-file-path (default /root/.ssh, mode 0600; 0644 elsewhere).
    source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/ssh/ssh.go (mountRsaKey)"""
    path = _parse_flags(plugins(obj)["ssh"], {"ssh-key-file-path": SSH_DEFAULT_PATH})["ssh-key-file-path"]
    name = ssh_secret_name(_name(obj))
    items = [{"key": k, "path": f".ssh/{k}"} for k in ("id_rsa", "id_rsa.pub", "authorized_keys", "config")]
    pod["spec"].setdefault("volumes", []).append({"name": name, "secret": {
        "secretName": name, "items": items, "defaultMode": 0o600 if path == SSH_DEFAULT_PATH else 0o644}})
    for c in _containers(pod["spec"]):
        c.setdefault("volumeMounts", []).append({"name": name, "mountPath": path, "subPath": ".ssh"})


_PLUGINS = {"env": lambda pod, obj: _plugin_env(pod), "svc": _plugin_svc, "pytorch": _plugin_pytorch, "ssh": _plugin_ssh}


def pods(obj: dict, ctx: Context) -> list[dict]:
    """Every task's replicas `<job>-<task>-<i>` with Volcano's labels and annotations, then each plugin's
    OnPodCreate. source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/job_controller_util.go (createJobPod),
    job_controller_actions.go (task template name = task name), job_controller_plugins.go (pluginOnPodCreate)"""
    if admission_problems(obj, ctx):
        return []
    job, ns = _name(obj), _ns(obj)
    queue = obj["spec"].get("queue") or DEFAULT_QUEUE
    out = []
    for task in obj["spec"]["tasks"]:
        for i in range(int(task.get("replicas", 0))):
            template = copy.deepcopy(task["template"])
            meta, spec = template.get("metadata") or {}, template["spec"]
            if not spec.get("schedulerName"):
                spec["schedulerName"] = obj["spec"].get("schedulerName") or "volcano"
            if not spec.get("priorityClassName") and obj["spec"].get("priorityClassName"):
                spec["priorityClassName"] = obj["spec"]["priorityClassName"]
            annotations = {**(meta.get("annotations") or {}), TASK_INDEX_KEY: str(i), TASK_SPEC_KEY: task["name"],
                           GROUP_NAME_ANNOTATION: f"{job}-{object_uid(obj)}", JOB_NAME_KEY: job, QUEUE_NAME_KEY: queue,
                           JOB_VERSION_KEY: "0", TEMPLATE_KEY: f"{job}-{task['name']}", RETRY_COUNT_KEY: "0"}
            labels = {**(meta.get("labels") or {}), TASK_INDEX_KEY: str(i), JOB_NAME_KEY: job,
                      TASK_SPEC_KEY: task["name"], JOB_NAMESPACE_KEY: ns, QUEUE_NAME_KEY: queue}
            template["metadata"] = {**meta, "labels": labels, "annotations": annotations}
            pod = make_pod(template, name=pod_name(job, task["name"], i), namespace=ns, owner=obj)
            for name in sorted(plugins(obj)):
                if name in _PLUGINS:
                    _PLUGINS[name](pod, obj)
            out.append(pod)
    return out


def services(obj: dict, ctx) -> list[dict]:
    """svc plugin: a headless Service named after the job selecting its pods.
    source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/svc/svc.go (createServiceIfNotExist)"""
    if "svc" not in plugins(obj):
        return []
    flags = _parse_flags(plugins(obj)["svc"], {"publish-not-ready-addresses": False, "disable-network-policy": False})
    return [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": _name(obj), "namespace": _ns(obj),
                          "annotations": {OWNER_ANNOTATION: describe(obj)}},
             "spec": {"clusterIP": "None", "selector": {JOB_NAME_KEY: _name(obj), JOB_NAMESPACE_KEY: _ns(obj)},
                      "publishNotReadyAddresses": flags["publish-not-ready-addresses"]}}]


def config_objects(obj: dict, ctx) -> list[dict]:
    """svc plugin: the `<job>-svc` ConfigMap and (unless --disable-network-policy) a NetworkPolicy `<job>` that
    admits ingress to the job's pods only from the job's pods; ssh plugin: the `<job>-ssh` Secret (id_rsa,
    id_rsa.pub, authorized_keys, config with StrictHostKeyChecking no).
    source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/plugins/svc/svc.go (OnJobAdd,
    createNetworkPolicyIfNotExist), ssh/ssh.go (OnJobAdd, generateRsaKey, generateSSHConfig)"""
    job, ns = _name(obj), _ns(obj)
    owner = {OWNER_ANNOTATION: describe(obj)}
    out: list[dict] = []
    active = plugins(obj)
    if "svc" in active:
        flags = _parse_flags(active["svc"], {"publish-not-ready-addresses": False, "disable-network-policy": False})
        out.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": svc_config_map_name(job), "namespace": ns, "annotations": dict(owner)},
                    "data": svc_hosts(obj)})
        if not flags["disable-network-policy"]:
            selector = {"matchLabels": {JOB_NAME_KEY: job, JOB_NAMESPACE_KEY: ns}}
            out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": job, "namespace": ns, "annotations": dict(owner)},
                        "spec": {"podSelector": selector, "ingress": [{"from": [{"podSelector": selector}]}],
                                 "policyTypes": ["Ingress"]}})
    if "ssh" in active:
        private, public = ctx.generate_ssh_keypair(f"VolcanoJob/{ns}/{job}")
        config = "StrictHostKeyChecking no\nUserKnownHostsFile /dev/null\n"
        data = {"id_rsa": private, "id_rsa.pub": public, "authorized_keys": public, "config": config}
        out.append({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": ssh_secret_name(job), "namespace": ns, "annotations": dict(owner)},
                    "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
    return out


_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def admission_problems(obj: dict, ctx, objects: list[dict] | None = None) -> list[str]:
    """What Volcano's job admission webhook refuses, and plugins that silently do nothing.
    source: volcano-sh/volcano@v1.15.1:pkg/webhooks/admission/jobs/validate/admit_job.go (validateJobCreate)"""
    what = f"Job.batch.volcano.sh {_ns(obj)}/{_name(obj)}"
    webhook = f"{SOURCE}:pkg/webhooks/admission/jobs/validate/admit_job.go validateJobCreate"
    spec = obj["spec"]
    tasks = spec.get("tasks") or []
    problems = []
    if not tasks:
        return [f"{what}: no task specified in job spec (source: {webhook})"]
    names = [t.get("name") for t in tasks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{what}: duplicated task name {dup} (source: {webhook})")
    total = sum(int(t.get("replicas", 0)) for t in tasks)
    if int(spec.get("minAvailable", 0)) > total:
        problems.append(f"{what}: minAvailable {spec['minAvailable']} is greater than the {total} replicas of its "
                        f"tasks (source: {webhook})")
    for t in tasks:
        if t.get("minAvailable") is not None and int(t["minAvailable"]) > int(t.get("replicas", 0)):
            problems.append(f"{what}: task {t['name']} minAvailable is greater than its replicas (source: {webhook})")
        longest = pod_name(_name(obj), t["name"], max(int(t.get("replicas", 1)), 1) - 1)
        if len(longest) > 63 or not _DNS1123.fullmatch(longest):
            problems.append(f"{what}: pod name {longest!r} is not a valid DNS-1123 name of at most 63 characters "
                            f"(source: {webhook} validateK8sPodNameLength)")
    for name in spec.get("plugins") or {}:
        if name not in KNOWN_PLUGINS:
            problems.append(f"{what}: unable to find job plugin {name} (source: {webhook})")
    if "pytorch" in (spec.get("plugins") or {}) and _task(obj, pytorch_settings(obj)["master"]) is None:
        problems.append(f"{what}: the pytorch plugin's master task {pytorch_settings(obj)['master']!r} does not exist, "
                        f"so no pod gets MASTER_ADDR/RANK/WORLD_SIZE (source: {SOURCE}:pkg/controllers/job/plugins/"
                        f"distributed-framework/pytorch/pytorch.go OnPodCreate)")
    if objects is not None:
        queue = spec.get("queue") or DEFAULT_QUEUE
        found = [o for o in objects if o.get("kind") == "Queue" and o["metadata"]["name"] == queue]
        if not found:
            problems.append(f"{what}: unable to find job queue {queue!r} (source: {webhook})")
        elif (found[0].get("spec") or {}).get("state", "Open") != "Open":
            problems.append(f"{what}: can only submit job to a queue in state Open (source: {webhook})")
    return problems


def await_kind(obj: dict) -> str:
    """"ready" when `pulumi up` waits for status.state.phase Running (minAvailable pods running: Volcano's
    job state machine, pkg/controllers/job/state/pending.go), else "complete"."""
    wait = (obj["metadata"].get("annotations") or {}).get("pulumi.com/waitFor", "")
    return "ready" if wait.endswith("=Running") else "complete"


def policy_action(job: dict, task: str, event: str) -> str:
    """The action Volcano's job controller takes on `event` (PodFailed, PodEvicted, ...) of a pod of `task`: the
    task's policies first, then the Job's; none matching = SyncJob (no restart).
    source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/job_controller_util.go (applyPolicies)"""
    tasks = {t["name"]: t for t in job["spec"].get("tasks") or []}
    for policies in ((tasks.get(task) or {}).get("policies") or [], job["spec"].get("policies") or []):
        for policy in policies:
            events = policy.get("events") or ([policy["event"]] if policy.get("event") else [])
            if event in events and policy.get("action"):
                return policy["action"]
    return "SyncJob"


DEFAULT_MAX_RETRY = 3  # volcano-sh/volcano@v1.15.1:pkg/webhooks/admission/jobs/mutate/mutate_job.go DefaultMaxRetry


def task_of(pod: dict) -> str:
    return pod["metadata"]["annotations"][TASK_SPEC_KEY]


def restarts_left(job: dict, retry_count: int) -> bool:
    """Whether a RestartJob still restarts the Job after `retry_count` restarts: the job controller fails the Job
    once status.retryCount reaches spec.maxRetry (source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/state/
    running.go and restarting.go, `status.RetryCount >= maxRetry` -> Failed)."""
    return retry_count < int(job["spec"].get("maxRetry", DEFAULT_MAX_RETRY))
