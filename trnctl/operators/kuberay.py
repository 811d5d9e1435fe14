"""What the KubeRay operator (v1.7.0, infra/versions.py KUBERAY_VERSION) makes of RayCluster and RayJob objects.

Every rule names the upstream file it restates, at tag v1.7.0 of github.com/ray-project/kuberay (paths below are
under `ray-operator/controllers/ray/`). Random name parts (`rand.String(5)` for generateName pods, a RayJob's
cluster and submission id) get `trnctl.operators.kubernetes.stand_in`, deterministic and of the same alphabet.
"""
from __future__ import annotations

import copy
import json
import math
import re
import urllib.error
import urllib.request
from typing import Any

import yaml

from trnctl.operators import OWNER_ANNOTATION, Context, describe
from trnctl.operators import kubernetes
from trnctl.operators.kubernetes import make_pod, stand_in

KINDS = frozenset({("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")})
VERSION = "v1.7.0"  # infra/versions.py KUBERAY_VERSION (a test checks they agree)

# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/constant.go (Default*Port, *PortName)
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
METRICS_PORT = 8080
SERVE_PORT = 8000
DASHBOARD_AGENT_LISTEN_PORT = 52365
METRICS_PORT_NAME = "metrics"
DASHBOARD_PORT_NAME = "dashboard"
DEFAULT_SERVICE_PORTS = {"client": CLIENT_PORT, "gcs-server": GCS_PORT, DASHBOARD_PORT_NAME: DASHBOARD_PORT,
                         METRICS_PORT_NAME: METRICS_PORT, "serve": SERVE_PORT}

# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/constant.go (label keys and values)
CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"
GROUP_LABEL = "ray.io/group"
IS_RAY_NODE_LABEL = "ray.io/is-ray-node"
IDENTIFIER_LABEL = "ray.io/identifier"
ORIGINATED_FROM_NAME_LABEL = "ray.io/originated-from-cr-name"
ORIGINATED_FROM_CRD_LABEL = "ray.io/originated-from-crd"
SUBMISSION_MODE_LABEL = "ray.io/job-submission-mode"
HEAD_GROUP = "headgroup"  # RayNodeHeadGroupLabelValue
SUBMITTER_GROUP = "submittergroup"  # RayNodeSubmitterGroupLabelValue
MAX_RAYJOB_NAME_LENGTH = 47  # MaxRayJobNameLength = MaxRayClusterNameLength (53) - 6

# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/batchscheduler/volcano/volcano_scheduler.go
VOLCANO_QUEUE_LABEL = "volcano.sh/queue-name"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"  # volcano.sh/apis scheduling/v1beta1 KubeGroupNameAnnotationKey
VOLCANO_TASK_SPEC_ANNOTATION = "volcano.sh/task-spec"  # volcano.sh/apis batch/v1alpha1 TaskSpecKey

# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (addEmptyDir for the object store)
SHARED_MEMORY_VOLUME, SHARED_MEMORY_PATH = "shared-mem", "/dev/shm"
# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (GetContainerCommand)
BASH_COMMAND = ["/bin/bash", "-c", "--"]
SUBMITTER_BASH_COMMAND = ["/bin/bash", "-ce", "--"]  # GetContainerCommand([]string{"e"}) for the submitter
# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (BuildPod ulimitCmd)
ULIMIT_COMMAND = "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}"
# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (customAcceleratorToRayResourceMap)
CUSTOM_ACCELERATORS = {"aws.amazon.com/neuroncore": "neuron_cores", "google.com/tpu": "TPU"}
# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (convertParamMap specialParameterOptions)
EXPLICIT_BOOLEAN_OPTIONS = ("log-color", "include-dashboard", "include-log-monitor")

SOURCE = "ray-project/kuberay@v1.7.0:ray-operator/controllers/ray"


def _name(obj: dict) -> str:
    return obj["metadata"]["name"]


def _ns(obj: dict) -> str:
    return obj["metadata"].get("namespace", "default")


def _volcano(ctx) -> bool:
    return getattr(ctx, "kuberay_batch_scheduler", None) == "volcano"


def _domain(ctx) -> str:
    return getattr(ctx, "cluster_domain", None) or "cluster.local"


# --- names ---------------------------------------------------------------------------------------------------

def head_service_name(cluster: dict | str) -> str:
    """`<cluster>-head-svc`, or the RayCluster's headService name when it sets one.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (GenerateHeadServiceName)"""
    if isinstance(cluster, str):
        return f"{cluster}-head-svc"
    override = (((cluster.get("spec") or {}).get("headGroupSpec") or {}).get("headService") or {}).get("metadata", {})
    return override.get("name") or f"{_name(cluster)}-head-svc"


def rayjob_service_name(job: str) -> str:
    """The RayJob's own head Service `<job>-head-svc` (RayJobs with rayClusterSpec only), stable across the
    cluster it creates: what a port-forward targets.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/job.go (BuildHeadServiceForRayJob),
    rayjob_controller.go (reconcileServices skips clusterSelector RayJobs)"""
    return f"{job}-head-svc"


def rayjob_cluster_name(job: dict) -> str:
    """The RayCluster a RayJob runs on: the clusterSelector's cluster, else `<job>-<rand5>`.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/rayjob_controller.go (initRayJobStatusIfNeed),
    utils/util.go (GenerateRayClusterName)"""
    selected = (job["spec"].get("clusterSelector") or {}).get(CLUSTER_LABEL)
    return selected or f"{_name(job)}-{stand_in('cluster/' + _name(job))}"


def submission_id(job: dict) -> str:
    """status.jobId `<job>-<rand5>`: the Ray job's submission id.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (GenerateRayJobId)"""
    return f"{_name(job)}-{stand_in('jobid/' + _name(job))}"


def head_fqdn(cluster: dict, ctx) -> str:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (GenerateFQDNServiceName)"""
    return f"{head_service_name(cluster)}.{_ns(cluster)}.svc.{_domain(ctx)}"


def head_port(cluster: dict) -> str:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (GetHeadPort)"""
    return str(cluster["spec"]["headGroupSpec"].get("rayStartParams", {}).get("port", GCS_PORT))


def pod_name_prefix(prefix: str, node_type: str) -> str:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (PodName, generateName form)"""
    return f"{prefix[:50]}-{node_type}-".lower()


def _check_label(value: str) -> str:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (CheckLabel)"""
    if len(value) > 63:
        value = value[len(value) - 63:]
    return "r" + value[1:] if not value[0].isalnum() else value


def dashboard_url(cluster: dict, ctx) -> str:
    """What the RayJob controller stores in status.dashboardURL: the head Service's `dashboard` port.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (FetchHeadServiceURL)"""
    port = _service_ports(cluster).get(DASHBOARD_PORT_NAME)
    return f"{head_service_name(cluster)}.{_ns(cluster)}.svc.{_domain(ctx)}:{port}"


# --- quantities ----------------------------------------------------------------------------------------------

_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60,
           "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def quantity(value: Any) -> float:
    """A Kubernetes resource.Quantity as a number (k8s.io/apimachinery resource/quantity.go suffixes)."""
    m = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|)", str(value).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _quantity_value(value: Any) -> int:
    """resource.Quantity.Value(): rounded up to an integer."""
    return math.ceil(quantity(value) - 1e-9)


# --- ray start -----------------------------------------------------------------------------------------------

def convert_param_map(params: dict[str, str]) -> str:
    """rayStartParams as `ray start` flags: sorted keys, `" --%s=%s "` per key, "true" as a bare flag and
    "false" dropped (except a few options that take explicit booleans). Values are NOT quoted: bash splits them.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (convertParamMap)"""
    flags = ""
    for option in sorted(params):
        argument = str(params[option])
        if argument.lower() in ("true", "false") and option not in EXPLICIT_BOOLEAN_OPTIONS:
            if argument.lower() == "true":
                flags += f" --{option} "
        else:
            flags += f" --{option}={argument} "
    return flags


def _resources_map(params: dict[str, str]) -> dict[str, float]:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (getResourcesMap: trims quotes)"""
    raw = params.get("resources")
    return {} if raw is None else json.loads(raw.strip("'\"` "))


def _go_json(resources: dict[str, float]) -> str:
    """encoding/json of map[string]float64: sorted keys, no spaces, integral floats without a fraction."""
    return json.dumps({k: (int(v) if float(v).is_integer() else v) for k, v in sorted(resources.items())},
                      separators=(",", ":"))


def _add_accelerator_resources(params: dict[str, str], limits: dict) -> None:
    """GPU and the first custom accelerator limit (only `aws.amazon.com/neuroncore` for Neuron, not
    `aws.amazon.com/neuron`) become num-gpus / a `neuron_cores` resource, written quoted as `'%s'`.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (addWellKnownAcceleratorResources)"""
    if not limits:
        return
    resources = _resources_map(params)
    added = any(name in resources for name in CUSTOM_ACCELERATORS.values())
    for key in sorted(limits):
        value = quantity(limits[key])
        if "num-gpus" not in params and key.endswith("gpu") and value:  # utils.IsGPUResourceKey
            params["num-gpus"] = str(_quantity_value(limits[key]))
        if not added and key in CUSTOM_ACCELERATORS and value:
            if CUSTOM_ACCELERATORS[key] not in resources:
                resources[CUSTOM_ACCELERATORS[key]] = value
                params["resources"] = f"'{_go_json(resources)}'"
            added = True


def complete_start_params(cluster: dict, group: dict | None, container: dict, ctx) -> dict[str, str]:
    """rayStartParams as KubeRay completes them for a head (group None) or worker group's Ray container.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (setMissingRayStartParams,
    generateRayStartCommand)"""
    spec = group if group is not None else cluster["spec"]["headGroupSpec"]
    params = {k: str(v) for k, v in (spec.get("rayStartParams") or {}).items()}
    if group is not None:
        params.setdefault("address", f"{head_fqdn(cluster, ctx)}:{head_port(cluster)}")
    else:
        params.setdefault("dashboard-host", "0.0.0.0")
    params.setdefault("metrics-export-port", str(METRICS_PORT))
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", str(DASHBOARD_AGENT_LISTEN_PORT))
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu and quantity(cpu):
            params["num-cpus"] = str(_quantity_value(cpu))
    if "memory" not in params and limits.get("memory") and quantity(limits["memory"]):
        params["memory"] = str(_quantity_value(limits["memory"]))
    _add_accelerator_resources(params, limits)
    return params


def ray_start_command(cluster: dict, group: dict | None, container: dict, ctx) -> str:
    """The `ray start` command line KubeRay generates (KUBERAY_GEN_RAY_START_CMD).
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (generateRayStartCommand)"""
    flags = convert_param_map(complete_start_params(cluster, group, container, ctx))
    return f"ray start --head {flags}" if group is None else f"ray start {flags}"


# --- pods ----------------------------------------------------------------------------------------------------

def _field_env(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _has_env(env: list[dict], name: str) -> bool:
    return any(e.get("name") == name for e in env)


def _ray_env(container: dict, *, head: bool, fqdn: str, port: str, start_cmd: str) -> None:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (setContainerEnvVars)"""
    env = container.setdefault("env", [])
    ip = "127.0.0.1" if head else fqdn  # utils.LOCAL_HOST for the head
    if not head:
        env += [{"name": "FQ_RAY_IP", "value": fqdn}, {"name": "RAY_IP", "value": fqdn.split(".")[0]}]
    env += [_field_env("RAY_CLUSTER_NAME", f"metadata.labels['{CLUSTER_LABEL}']"),
            _field_env("RAY_CLUSTER_NAMESPACE", "metadata.namespace"),
            _field_env("RAY_CLOUD_INSTANCE_ID", "metadata.name"),
            _field_env("RAY_NODE_TYPE_NAME", f"metadata.labels['{GROUP_LABEL}']"),
            {"name": "KUBERAY_GEN_RAY_START_CMD", "value": start_cmd}]
    if not _has_env(env, "RAY_PORT"):
        env.append({"name": "RAY_PORT", "value": port})
    if not _has_env(env, "RAY_ADDRESS"):
        env.append({"name": "RAY_ADDRESS", "value": f"{ip}:{port}"})
    if not _has_env(env, "RAY_USAGE_STATS_KUBERAY_IN_USE"):
        env.append({"name": "RAY_USAGE_STATS_KUBERAY_IN_USE", "value": "1"})
    if head:
        env.append({"name": "RAY_USAGE_STATS_EXTRA_TAGS", "value": f"kuberay_version={VERSION};kuberay_crd=RayCluster"})
    if not _has_env(env, "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE"):
        env.append({"name": "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "value": "1"})


def _ray_version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    try:
        return tuple(int(x) for x in version.split(".")[:3]) >= minimum
    except ValueError:
        return False  # version.ParseGeneric fails: KubeRay assumes no unified health check


def _probes(container: dict, *, head: bool, params: dict[str, str], ray_version: str) -> None:
    """Liveness and readiness probes where the Ray container has none: from Ray 2.53 an httpGet of the dashboard
    agent's /api/healthz, before that exec probes running wget (the timeouts as KubeRay writes them).
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (initLivenessAndReadinessProbe,
    supportsUnifiedHealthCheck), utils/constant.go (BaseWgetHealthCommand, RayNodeHealthPath, Default*Probe*)"""
    agent = int(params.get("dashboard-agent-listen-port", DASHBOARD_AGENT_LISTEN_PORT))
    dashboard = int(params.get("dashboard-port", DASHBOARD_PORT))
    if _ray_version_at_least(ray_version, (2, 53, 0)):
        action = {"httpGet": {"path": "/api/healthz", "port": agent}}
    else:
        commands = [f"wget --tries 1 -T 2 -q -O- http://localhost:{agent}/api/local_raylet_healthz | grep success"]
        if head:
            commands.append(f"wget --tries 1 -T 10 -q -O- http://localhost:{dashboard}/api/gcs_healthz | grep success")
        action = {"exec": {"command": ["bash", "-c", " && ".join(commands)]}}
    timeout = 5 if head else 2
    container.setdefault("livenessProbe", {"initialDelaySeconds": 30, "timeoutSeconds": timeout, "periodSeconds": 5,
                                           "successThreshold": 1, "failureThreshold": 120, **action})
    container.setdefault("readinessProbe", {"initialDelaySeconds": 10, "timeoutSeconds": timeout, "periodSeconds": 5,
                                            "successThreshold": 1, "failureThreshold": 10, **copy.deepcopy(action)})


def _pod_labels(node_type: str, cluster_name: str, group: str, template_labels: dict) -> dict:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (labelPod: cluster, node-type
    and group are not overridable)"""
    labels = {IS_RAY_NODE_LABEL: "yes", CLUSTER_LABEL: cluster_name, NODE_TYPE_LABEL: node_type, GROUP_LABEL: group,
              IDENTIFIER_LABEL: _check_label(f"{cluster_name}-{node_type}"),
              "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    for k, v in (template_labels or {}).items():
        if k not in (NODE_TYPE_LABEL, GROUP_LABEL, CLUSTER_LABEL):
            labels[k] = v
    return labels


def podgroup_name(obj: dict) -> str:
    """`ray-<name>-pg`, named after the RayJob for a cluster a RayJob created.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/batchscheduler/volcano/volcano_scheduler.go
    (getAppPodGroupName)"""
    labels = obj["metadata"].get("labels") or {}
    name = _name(obj)
    if labels.get(ORIGINATED_FROM_CRD_LABEL) == "RayJob" and labels.get(ORIGINATED_FROM_NAME_LABEL):
        name = labels[ORIGINATED_FROM_NAME_LABEL]
    return f"ray-{name}-pg"


def _add_volcano_metadata(parent: dict, child_meta: dict, child_spec: dict | None, group: str, ctx) -> None:
    """Queue label from the parent, PodGroup and task annotations, schedulerName volcano.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/batchscheduler/volcano/volcano_scheduler.go
    (AddMetadataToChildResource)"""
    if not _volcano(ctx):
        return
    labels = child_meta.setdefault("labels", {})
    for key in (VOLCANO_QUEUE_LABEL, "ray.io/priority-class-name"):
        value = (parent["metadata"].get("labels") or {}).get(key)
        if value:
            labels[key] = value
    annotations = child_meta.setdefault("annotations", {})
    annotations[VOLCANO_GROUP_ANNOTATION] = podgroup_name(parent)
    annotations[VOLCANO_TASK_SPEC_ANNOTATION] = group
    if child_spec is not None:
        child_spec["schedulerName"] = "volcano"


def _memory_of(container: dict) -> Any:
    res = container.get("resources") or {}
    return (res.get("limits") or {}).get("memory") or (res.get("requests") or {}).get("memory")


def _build_pod(cluster: dict, group: dict | None, name: str, ctx) -> dict:
    """One Ray pod: the group's template plus what DefaultHead/WorkerPodTemplate and BuildPod add.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (DefaultHeadPodTemplate,
    DefaultWorkerPodTemplate, BuildPod), raycluster_controller.go (buildHeadPod, buildWorkerPod)"""
    head = group is None
    spec_src = cluster["spec"]["headGroupSpec"] if head else group
    template = copy.deepcopy(spec_src["template"])
    meta, spec = template.setdefault("metadata", {}), template["spec"]
    cluster_name, port, fqdn = _name(cluster), head_port(cluster), head_fqdn(cluster, ctx)
    group_name = HEAD_GROUP if head else group["groupName"]
    ray = spec["containers"][0]  # utils.RayContainerIndex
    if not head:
        # wait-gcs-ready: a copy of the Ray container's image, env and mounts that polls the head's GCS.
        spec.setdefault("initContainers", []).append({
            "name": "wait-gcs-ready", "image": ray["image"], "imagePullPolicy": ray.get("imagePullPolicy"),
            "command": list(BASH_COMMAND),
            "args": [f"SECONDS=0; while true; do if ray health-check --address {fqdn}:{port} > /dev/null 2>&1; "
                     f"then echo \"GCS is ready.\"; break; fi; echo \"$SECONDS seconds elapsed: Waiting for GCS to be "
                     f"ready.\"; sleep 5; done"],
            "securityContext": copy.deepcopy(ray.get("securityContext")), "env": copy.deepcopy(ray.get("env", [])),
            "volumeMounts": copy.deepcopy(ray.get("volumeMounts", [])),
            "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}, "requests": {"cpu": "200m", "memory": "256Mi"}}})
    # metrics port 8080 when the Ray container has none named `metrics`
    ports = ray.setdefault("ports", [])
    if not any(p.get("name") == METRICS_PORT_NAME for p in ports):
        ports.append({"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT})
    params = complete_start_params(cluster, group, ray, ctx)
    if "plasma-directory" not in params and not any(m.get("mountPath") == SHARED_MEMORY_PATH
                                                    for m in ray.get("volumeMounts", [])):
        if not any(v.get("name") == SHARED_MEMORY_VOLUME for v in spec.get("volumes", [])):
            empty = {"medium": "Memory"}
            if _memory_of(ray):
                empty["sizeLimit"] = _memory_of(ray)
            spec.setdefault("volumes", []).append({"name": SHARED_MEMORY_VOLUME, "emptyDir": empty})
        ray.setdefault("volumeMounts", []).append({"name": SHARED_MEMORY_VOLUME, "mountPath": SHARED_MEMORY_PATH})
    start_cmd = ray_start_command(cluster, group, ray, ctx)
    user_cmd = " ".join(ray.get("command") or []) + " ".join(ray.get("args") or [])
    overwrite = (meta.get("annotations") or {}).get("ray.io/overwrite-container-cmd", "").lower() == "true"
    if not overwrite and "ray start" not in user_cmd:
        generated = f"{ULIMIT_COMMAND}; {start_cmd}"
        ray["command"] = list(BASH_COMMAND)
        ray["args"] = [f"{user_cmd} && {generated}" if user_cmd else generated]
    for init in spec.get("initContainers", []):
        init.setdefault("env", []).extend([{"name": "FQ_RAY_IP", "value": fqdn},
                                           {"name": "RAY_IP", "value": fqdn.split(".")[0]}])
    _ray_env(ray, head=head, fqdn=fqdn, port=port, start_cmd=start_cmd)
    _probes(ray, head=head, params=params, ray_version=str(cluster["spec"].get("rayVersion", "")))
    template["metadata"] = {**meta, "labels": _pod_labels("head" if head else "worker", cluster_name, group_name,
                                                          meta.get("labels"))}
    _add_volcano_metadata(cluster, template["metadata"], spec, group_name, ctx)
    return make_pod(template, name=name, namespace=_ns(cluster), owner=cluster)


def desired_worker_replicas(group: dict) -> int:
    """A worker group's pod count: replicas clamped to [minReplicas, maxReplicas] (0 when suspended), times
    numOfHosts (CRD default 1).
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils/util.go (GetWorkerGroupDesiredReplicas)"""
    if group.get("suspend"):
        return 0
    low, high = int(group.get("minReplicas") or 0), group.get("maxReplicas")
    replicas = group.get("replicas")
    replicas = low if replicas is None or int(replicas) < low else int(replicas)
    if high is not None:
        replicas = min(replicas, int(high))
    return replicas * int(group.get("numOfHosts") or 1)


def cluster_pods(cluster: dict, ctx) -> list[dict]:
    """Head + every worker replica of a RayCluster (no autoscaler: ours disable in-tree autoscaling)."""
    name = _name(cluster)
    pods = [_build_pod(cluster, None, pod_name_prefix(name, "head") + stand_in(f"{_ns(cluster)}/{name}/head"), ctx)]
    for group in cluster["spec"].get("workerGroupSpecs") or []:
        prefix = pod_name_prefix(f"{name}-{group['groupName']}", "worker")
        for i in range(desired_worker_replicas(group)):
            pods.append(_build_pod(cluster, group, prefix + stand_in(f"{_ns(cluster)}/{name}/{group['groupName']}/{i}"), ctx))
    return pods


def replacement_worker_pods(cluster: dict, present: list[dict], ctx, taken: set[str] = frozenset()) -> list[dict]:
    """The worker pods KubeRay creates when a worker group has fewer pods than it desires: a worker pod deleted
    (its node lost, the hang watchdog deleting the `trn-platform/gang-restart` pod) or one in a terminal phase
    (Failed/Succeeded, which KubeRay deletes first: shouldDeletePod) is replaced by a new pod built from the
    group's template, named `<cluster>-<group>-worker-<rand5>` (generateName: a new name, never the lost one's).
    A Running pod whose Ray container exited is left alone when its restartPolicy can restart it (Always, the
    default, as on our templates): the kubelet restarts the container in place, no new pod.
    `present`: the cluster's pods that still exist and are not terminal; `taken`: names already used (generateName
    never reuses a live name; the stand-in suffix is derived from the group and a counter, skipping these).
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/raycluster_controller.go (reconcilePods: "Delete
    unhealthy worker Pods", then diff = desired - running pods, createWorkerPod per missing pod; shouldDeletePod;
    buildWorkerPod: utils.PodName(<cluster>-<group>, worker, isGenerateName=true)), utils/util.go (PodName,
    GetWorkerGroupDesiredReplicas), common/pod.go (DefaultWorkerPodTemplate: GenerateName)"""
    name, taken = _name(cluster), set(taken) | {p["metadata"]["name"] for p in present}
    out = []
    for group in cluster["spec"].get("workerGroupSpecs") or []:
        have = [p for p in present if p["metadata"].get("labels", {}).get(GROUP_LABEL) == group["groupName"]
                and p["metadata"]["labels"].get(NODE_TYPE_LABEL) == "worker"]
        prefix, attempt = pod_name_prefix(f"{name}-{group['groupName']}", "worker"), 0
        for _ in range(desired_worker_replicas(group) - len(have)):
            while (pod_name := prefix + stand_in(f"{_ns(cluster)}/{name}/{group['groupName']}/new/{attempt}")) in taken:
                attempt += 1
            taken.add(pod_name)
            out.append(_build_pod(cluster, group, pod_name, ctx))
    return out


def rayjob_cluster(job: dict, ctx) -> dict | None:
    """The RayCluster a RayJob with rayClusterSpec creates: the job's labels and annotations plus the
    originated-from labels, and under Volcano its queue label and PodGroup annotation.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/rayjob_controller.go
    (constructRayClusterForRayJob, getOrCreateRayClusterInstance)"""
    if not job["spec"].get("rayClusterSpec"):
        return None
    meta = job["metadata"]
    labels = {**(meta.get("labels") or {}), ORIGINATED_FROM_NAME_LABEL: _name(job), ORIGINATED_FROM_CRD_LABEL: "RayJob",
              SUBMISSION_MODE_LABEL: job["spec"].get("submissionMode", "K8sJobMode")}
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
               "metadata": {"name": rayjob_cluster_name(job), "namespace": _ns(job), "labels": labels,
                            "annotations": dict(meta.get("annotations") or {})},
               "spec": copy.deepcopy(job["spec"]["rayClusterSpec"])}
    if job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
        _add_volcano_metadata(job, cluster["metadata"], None, "", ctx)
    return cluster


def _cluster_for_job(job: dict, objects: list[dict] | None, ctx) -> dict | None:
    own = rayjob_cluster(job, ctx)
    if own is not None:
        return own
    name = rayjob_cluster_name(job)
    return next((o for o in objects or [] if (o.get("apiVersion"), o.get("kind")) == ("ray.io/v1", "RayCluster")
                 and _name(o) == name and _ns(o) == _ns(job)), None)


def job_submit_command(job: dict, dashboard: str) -> list[str]:
    """K8sJobMode's submitter command, as the list KubeRay joins with spaces into one bash -ce argument.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/job.go (BuildJobSubmitCommand)"""
    address = dashboard if dashboard.startswith("http://") else f"http://{dashboard}"
    job_id = submission_id(job)
    health = (f"python -c \"import urllib.request; r=urllib.request.urlopen('{address}/api/gcs_healthz', timeout=10); "
              f"exit(0 if b'success' in r.read() else 1)\"")
    cmd = ["until", health, ">/dev/null", "2>&1", ";", "do", "echo",
           json.dumps(f"Waiting for Ray Dashboard GCS to become healthy at {address} ..."), ";", "sleep", "2", ";",
           "done", ";"]
    cmd += ["if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then"]
    cmd += ["ray", "job", "submit", "--address", address, "--no-wait"]
    runtime_env = job["spec"].get("runtimeEnvYAML")
    if runtime_env:
        # yaml.YAMLToJSON then strconv.Quote: a double-quoted JSON string
        cmd += ["--runtime-env-json", json.dumps(json.dumps(yaml.safe_load(runtime_env), separators=(",", ":")))]
    if job["spec"].get("metadata"):
        cmd += ["--metadata-json", json.dumps(json.dumps(job["spec"]["metadata"], separators=(",", ":")))]
    cmd += ["--submission-id", job_id]
    if job["spec"].get("entrypointNumCpus"):
        cmd += ["--entrypoint-num-cpus", f"{float(job['spec']['entrypointNumCpus']):f}"]
    if job["spec"].get("entrypointNumGpus"):
        cmd += ["--entrypoint-num-gpus", f"{float(job['spec']['entrypointNumGpus']):f}"]
    if job["spec"].get("entrypointResources"):
        cmd += ["--entrypoint-resources", json.dumps(job["spec"]["entrypointResources"])]
    cmd += ["--", job["spec"]["entrypoint"].strip(), ";", "fi", ";",
            "ray", "job", "logs", "--address", address, "--follow", job_id]
    return cmd


def submitter_job(job: dict, ctx, objects: list[dict] | None = None) -> dict | None:
    """The batch/v1 Job `<rayjob>` that runs `ray job submit` (K8sJobMode), once the cluster is ready.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/rayjob_controller.go (createK8sJobIfNeed,
    getSubmitterTemplate, configureSubmitterContainer, createNewK8sJob), common/job.go (GetSubmitterTemplate)"""
    if job["spec"].get("submissionMode", "K8sJobMode") != "K8sJobMode":
        return None
    cluster = _cluster_for_job(job, objects, ctx)
    if cluster is None:
        return None
    template = copy.deepcopy(job["spec"].get("submitterPodTemplate") or {
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "ray-job-submitter", "image": cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"],
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "200Mi"}}}]}})
    container = template["spec"]["containers"][0]
    dashboard = dashboard_url(cluster, ctx)
    if not container.get("command"):
        container["command"] = list(SUBMITTER_BASH_COMMAND)
        container["args"] = [" ".join(job_submit_command(job, dashboard))]
    container.setdefault("env", []).extend([
        {"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "RAY_DASHBOARD_ADDRESS", "value": dashboard},
        {"name": "RAY_JOB_SUBMISSION_ID", "value": submission_id(job)}])
    meta = template.setdefault("metadata", {})
    meta.setdefault("labels", {}).update({ORIGINATED_FROM_NAME_LABEL: _name(job), ORIGINATED_FROM_CRD_LABEL: "RayJob",
                                          "app.kubernetes.io/created-by": "kuberay-operator"})
    _add_volcano_metadata(job, meta, template["spec"], SUBMITTER_GROUP, ctx)
    backoff = ((job["spec"].get("submitterConfig") or {}).get("backoffLimit"))
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": _name(job), "namespace": _ns(job),
                         "labels": {ORIGINATED_FROM_NAME_LABEL: _name(job), ORIGINATED_FROM_CRD_LABEL: "RayJob",
                                    "app.kubernetes.io/created-by": "kuberay-operator"},
                         "annotations": {OWNER_ANNOTATION: describe(job)}},
            "spec": {"backoffLimit": 2 if backoff is None else backoff, "template": template}}


def pods(obj: dict, ctx: Context, objects: list[dict] | None = None) -> list[dict]:
    """RayCluster: head and workers. RayJob: the pods of the cluster it creates (none for clusterSelector:
    that cluster's pods belong to its RayCluster) and its submitter Job's pod (built by the Job controller,
    trnctl.operators.kubernetes). A RayJob KubeRay refuses (admission_problems) gets no pods."""
    if obj["kind"] == "RayCluster":
        return cluster_pods(obj, ctx)
    if admission_problems(obj, ctx):
        return []
    out = []
    own = rayjob_cluster(obj, ctx)
    if own is not None:
        out += [_owned_by(p, obj) for p in cluster_pods(own, ctx)]
    submitter = submitter_job(obj, ctx, objects)
    if submitter is not None:
        out += [_owned_by(p, obj) for p in kubernetes.pods(submitter, ctx)]
    return out


def _owned_by(pod: dict, job: dict) -> dict:
    pod["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = describe(job)
    return pod


def _service_ports(cluster: dict) -> dict[str, int]:
    """source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/service.go (getServicePorts,
    getPortsFromCluster, getDefaultPorts)"""
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {(p.get("name") or f"{p['containerPort']}-port"): int(p["containerPort"]) for p in head.get("ports") or []}
    ports = ports or dict(DEFAULT_SERVICE_PORTS)
    ports.setdefault(METRICS_PORT_NAME, METRICS_PORT)
    return ports


def head_service(cluster: dict, name: str | None = None, selector_labels: dict | None = None) -> dict:
    """The head Service: headless (clusterIP None, publishNotReadyAddresses) unless
    ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE is set (our chart does not), one port per head container port plus metrics.
    Its selector is KubeRay's head labels, where `selector_labels` override the same keys.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/service.go (BuildServiceForHeadPod,
    HeadServiceLabels)"""
    cluster_name = _name(cluster)
    selector = {CLUSTER_LABEL: cluster_name, NODE_TYPE_LABEL: "head",
                IDENTIFIER_LABEL: _check_label(f"{cluster_name}-head"),
                "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    selector = {k: (selector_labels or {}).get(k, v) for k, v in selector.items()}
    ports = [{"name": n, "port": p, "appProtocol": "tcp"} for n, p in sorted(_service_ports(cluster).items())]
    spec: dict = {"selector": selector, "ports": ports}
    service_type = cluster["spec"]["headGroupSpec"].get("serviceType")
    if service_type in (None, "", "ClusterIP"):
        spec.update(clusterIP="None", publishNotReadyAddresses=True)
    else:
        spec["type"] = service_type
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name or head_service_name(cluster), "namespace": _ns(cluster), "labels": dict(selector),
                         "annotations": {OWNER_ANNOTATION: describe(cluster)}},
            "spec": spec}


def cluster_head_service(cluster: dict) -> dict:
    """A RayCluster's own head Service selects `app.kubernetes.io/name` as the head template sets it (KubeRay's
    pods carry the template's value, which overrides its default `kuberay`).
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/raycluster_controller.go (reconcileServices)"""
    template_labels = cluster["spec"]["headGroupSpec"]["template"].get("metadata", {}).get("labels") or {}
    app = template_labels.get("app.kubernetes.io/name")
    return head_service(cluster, selector_labels={"app.kubernetes.io/name": app} if app else None)


def rayjob_head_service(job: dict, cluster: dict) -> dict:
    """A RayJob's `<job>-head-svc`: built with no label overrides, so it selects `app.kubernetes.io/name:
    kuberay`, and matches the head only if the head template leaves that label to KubeRay.
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/job.go (BuildHeadServiceForRayJob calls
    BuildServiceForHeadPod with nil labels)"""
    svc = head_service(cluster, name=rayjob_service_name(_name(job)))
    svc["metadata"]["namespace"] = _ns(job)
    svc["metadata"]["labels"] = {ORIGINATED_FROM_NAME_LABEL: _name(job), ORIGINATED_FROM_CRD_LABEL: "RayJob",
                                 NODE_TYPE_LABEL: "head", IDENTIFIER_LABEL: _check_label(f"{_name(job)}-head")}
    svc["metadata"]["annotations"][OWNER_ANNOTATION] = describe(job)
    return svc


def services(obj: dict, ctx: Context) -> list[dict]:
    """RayCluster: its head Service. RayJob with rayClusterSpec: the created cluster's head Service and the
    RayJob's own `<job>-head-svc` (created once the job runs; rayjob_controller.go reconcileServices)."""
    if obj["kind"] == "RayCluster":
        return [cluster_head_service(obj)]
    cluster = rayjob_cluster(obj, ctx)
    if cluster is None or admission_problems(obj, ctx):
        return []
    cluster_svc = cluster_head_service(cluster)
    cluster_svc["metadata"]["annotations"][OWNER_ANNOTATION] = describe(obj)
    return [cluster_svc, rayjob_head_service(obj, cluster)]


def config_objects(obj: dict, ctx) -> list[dict]:
    """KubeRay creates no ConfigMap or Secret for our objects (no GCS FT, no auth token, no TLS)."""
    return []


# RayJob spec.activeDeadlineSeconds (ray-project/kuberay@v1.7.0 ray-operator/apis/ray/v1/rayjob_types.go, *int32;
# utils/validation.go ValidateRayJobSpec: must be positive): counted from status.startTime, which KubeRay sets when
# it initializes the RayJob, before it creates the RayCluster (rayjob_controller.go initRayJobStatusIfNeed), so
# node launch and image pulls count; once passed, in Initializing or Running, KubeRay sets jobDeploymentStatus
# Failed with reason DeadlineExceeded (checkActiveDeadlineAndUpdateStatusIfNeeded) and, with
# shutdownAfterJobFinishes, deletes the cluster.
RAYJOB_DEADLINE_MAX = 2**31 - 1


def deletes_cluster_when_finished(job: dict) -> bool:
    """Whether KubeRay deletes the RayJob's RayCluster once the job ends (Complete or Failed): shutdownAfterJobFinishes
    on a RayJob that made its own cluster (no clusterSelector) and sets no deletionPolicy; after
    ttlSecondsAfterFinished (default 0). source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/
    rayjob_controller.go (case JobDeploymentStatusComplete, JobDeploymentStatusFailed: "Shutdown behavior is defined
    by the `ShutdownAfterJobFinishes` flag", deleteClusterResources)"""
    spec = job.get("spec") or {}
    return bool(spec.get("shutdownAfterJobFinishes")) and not spec.get("clusterSelector") and not spec.get("deletionPolicy")


# RayJob status.reason values after which KubeRay never retries, whatever backoffLimit says.
# source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/rayjob_controller.go (checkBackoffLimitAndUpdateStatusIfNeeded)
NOT_RETRIED_REASONS = frozenset({"DeadlineExceeded", "JobStatusCheckTimeoutExceeded"})


def retries_failed_rayjob(job: dict, failed_before: int, reason: str = "") -> bool:
    """Whether KubeRay retries a RayJob whose jobDeploymentStatus just became Failed (the Ray job FAILED, e.g. Ray
    Train past FailureConfig.max_failures): status.failed (counting this failure) below backoffLimit + 1
    (spec.backoffLimit, CRD default 0: never), and not after DeadlineExceeded / JobStatusCheckTimeoutExceeded.
    A retry (JobDeploymentStatus Retrying) deletes the RayJob's RayCluster and submitter Job, then starts over as
    New: a new RayCluster ("Each retry creates a new RayCluster") and a new submission id; the training resumes
    from its newest checkpoint under the same run name (the rehearsal: stop_rayjob, then run_rayjob).
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/rayjob_controller.go
    (checkBackoffLimitAndUpdateStatusIfNeeded; case JobDeploymentStatusRetrying: deleteClusterResources,
    deleteSubmitterJob, status reset to New), ray-operator/apis/ray/v1/rayjob_types.go (BackoffLimit)"""
    limit = (job.get("spec") or {}).get("backoffLimit")
    if limit is None or reason in NOT_RETRIED_REASONS:
        return False
    return failed_before + 1 < int(limit) + 1


def admission_problems(obj: dict, ctx) -> list[str]:
    """What KubeRay v1.7.0 refuses or never acts on, one message per problem."""
    problems: list[str] = []
    what = f"{obj['kind']} {_ns(obj)}/{_name(obj)}"
    if obj["kind"] == "RayJob":
        spec = obj["spec"]
        selector = spec.get("clusterSelector") or {}
        if len(_name(obj)) > MAX_RAYJOB_NAME_LENGTH or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", _name(obj)):
            problems.append(f"{what}: name must be a DNS-1035 label of at most {MAX_RAYJOB_NAME_LENGTH} characters "
                            f"(source: {SOURCE}/utils/validation.go ValidateRayJobMetadata)")
        if not spec.get("rayClusterSpec") and not selector:
            problems.append(f"{what}: one of rayClusterSpec or clusterSelector must be set "
                            f"(source: {SOURCE}/utils/validation.go ValidateRayJobSpec)")
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and not (isinstance(deadline, int) and 0 < deadline <= RAYJOB_DEADLINE_MAX):
            problems.append(f"{what}: activeDeadlineSeconds {deadline!r} must be a positive int32 "
                            f"(source: {SOURCE}/utils/validation.go ValidateRayJobSpec; ray-operator/apis/ray/v1/"
                            f"rayjob_types.go ActiveDeadlineSeconds *int32)")
        if selector and spec.get("submissionMode") == "SidecarMode":
            problems.append(f"{what}: clusterSelector is not supported in SidecarMode "
                            f"(source: {SOURCE}/utils/validation.go ValidateRayJobSpec)")
        if _volcano(ctx) and not spec.get("rayClusterSpec"):
            problems.append(
                f"{what}: references an existing RayCluster through clusterSelector, which KubeRay with "
                f"batchScheduler volcano refuses (\"gang scheduling does not support RayJob {_ns(obj)}/{_name(obj)} "
                f"referencing an existing RayCluster\") and requeues in Initializing forever: give the RayJob its own "
                f"rayClusterSpec (source: {SOURCE}/batchscheduler/volcano/volcano_scheduler.go handleRayJob, "
                f"called from rayjob_controller.go JobDeploymentStatusInitializing)")
    return problems


def start_param_problems(obj: dict) -> list[str]:
    """rayStartParams values that bash changes before `ray start` sees them. Not a refusal: KubeRay creates the
    pods and their `ray start` fails (e.g. "Got unexpected extra argument"), so this is for static checks; the
    rehearsal sees the failure itself by running the command."""
    what = f"{obj['kind']} {_ns(obj)}/{_name(obj)}"
    spec = obj["spec"] if obj["kind"] == "RayCluster" else (obj["spec"].get("rayClusterSpec") or {})
    if not spec:
        return []
    problems = []
    for group, params in [("head", spec["headGroupSpec"].get("rayStartParams") or {})] + [
            (g.get("groupName"), g.get("rayStartParams") or {}) for g in spec.get("workerGroupSpecs") or []]:
        problems += _start_param_problems(what, group, params)
    return problems


# Characters bash leaves alone in an unquoted word (no splitting, quote removal, brace, glob or $ expansion).
_BASH_SAFE = re.compile(r"[A-Za-z0-9_./:=@%+,-]*")


def reaches_ray_intact(value: str) -> bool:
    """Whether a rayStartParams value reaches `ray start` as written after `/bin/bash -c`: plain words, or a
    value wrapped whole in single quotes as KubeRay writes its own (`'%s'`)."""
    return bool(_BASH_SAFE.fullmatch(value) or re.fullmatch(r"'[^']*'", value))


def _start_param_problems(what: str, group: str, params: dict) -> list[str]:
    """A rayStartParams value that bash changes: KubeRay pastes values unquoted into `/bin/bash -c`."""
    out = []
    for key, value in params.items():
        value = str(value)
        if not reaches_ray_intact(value):
            out.append(f"{what}: rayStartParams[{key!r}] of group {group!r} = {value!r} is pasted unquoted into "
                       f"KubeRay's `ray start` command (' --%s=%s ' per key, run by /bin/bash -c), so bash splits or "
                       f"rewrites it (quotes removed, split at spaces, braces expanded); wrap it in single "
                       f"quotes as KubeRay does for the resources it adds (source: {SOURCE}/common/pod.go "
                       f"convertParamMap, addWellKnownAcceleratorResources)")
    return out


def await_kind(obj: dict) -> str:
    """How the rehearsal awaits an object's pods: "complete" when `pulumi up` waits for the RayJob's
    jobDeploymentStatus Complete (submitter exited 0), else "ready" (a RayCluster; a RayJob awaited at Running,
    which KubeRay sets once the cluster is Ready and the submitter Job created: rayjob_controller.go
    JobDeploymentStatusInitializing)."""
    wait = (obj["metadata"].get("annotations") or {}).get("pulumi.com/waitFor", "")
    return "complete" if obj["kind"] == "RayJob" and wait.endswith("=Complete") else "ready"


# The Ray job's status as KubeRay reads it (from the head's dashboard; the submitter pod's exit says nothing).
# source: ray-project/ray@ray-2.51.1:python/ray/dashboard/modules/job/job_head.py (GET /api/jobs/{job_or_submission_id})
# and ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/utils (the dashboard HTTP client: JobPath "/api/jobs/",
# GetJobInfo, the RayJob controller's view of the job; file within utils/ not confirmed at the tag here)
JOB_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}  # ray-2.51.1:python/ray/dashboard/modules/job/common.py JobStatus


def alive_node_addresses(address: str, port: int) -> set[str] | None:
    """Node IPs the head's GCS knows ALIVE, from the dashboard's state API (None while it does not answer).
    source: ray-project/ray@ray-2.51.1:python/ray/dashboard/modules/state/state_head.py (GET /api/v0/nodes)"""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/api/v0/nodes", timeout=5) as r:
            body = json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    nodes = (((body.get("data") or {}).get("result") or {}).get("result")) or []
    return {n.get("node_ip") for n in nodes if n.get("state") == "ALIVE"}


def job_status(address: str, port: int, job_id: str) -> dict:
    """The job's JobDetails from the dashboard, as the RayJob controller reads it to set the RayJob's status
    ({} while it does not answer or knows no such job)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/api/jobs/{job_id}", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return {}
