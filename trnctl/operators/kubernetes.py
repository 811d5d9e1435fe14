"""Kubernetes' own controllers and the kubelet, for the version the stacks pin (kubernetesVersion 1.34).

Pods of the built-in workload controllers (Pod, Job, Deployment/ReplicaSet, StatefulSet, DaemonSet) and
what the kubelet and container runtime make of a pod's container: `container_process()` returns the argv,
environment, working directory, user and files it runs with.

Random name parts (the API server's generateName suffix, a Deployment's pod-template-hash) are replaced by
deterministic stand-ins of the same alphabet and length (derived from the object), documented per rule, so a
rehearsal and its tests see stable names that still match what selects the real ones.

Sources: kubernetes/kubernetes@v1.34.0 (paths per rule). The tag itself could not be fetched here (the
repository is larger than the mirror limit); rules were checked against the file versions the code index
holds and the official documentation named next to them.
"""
from __future__ import annotations

import base64
import re
import copy
import hashlib
import posixpath
from dataclasses import dataclass, field

from trnctl.operators import OWNER_ANNOTATION, Context, describe, pod_hostname
from trnctl.operators.images import ImageConfig

KINDS = frozenset({("v1", "Pod"), ("batch/v1", "Job"), ("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"),
                   ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet")})

# source: kubernetes/kubernetes@v1.34.0:staging/src/k8s.io/apimachinery/pkg/util/rand/rand.go
# (`alphanums`: no vowels, no 0/1/3) used by names.SimpleNameGenerator (5 chars,
# staging/src/k8s.io/apiserver/pkg/storage/names/generate.go) and SafeEncodeString (pod-template-hash).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATED_SUFFIX_LEN = 5

# source: kubernetes/kubernetes@v1.34.0:staging/src/k8s.io/api/core/v1/types.go
# (ConfigMapVolumeSourceDefaultMode, SecretVolumeSourceDefaultMode, ProjectedVolumeSourceDefaultMode = 0644)
DEFAULT_VOLUME_FILE_MODE = 0o644
# source: kubernetes/kubernetes@v1.34.0:pkg/volume/volume_linux.go (SetVolumeOwnership: with fsGroup, files get
# group fsGroup and the group bits roMask 0440 for read-only volume plugins: configMap, secret, projected;
# read here at commit 03e060242dcb, the rule `chmod(mode | roMask)` for GetAttributes().ReadOnly)
FSGROUP_READONLY_MASK = 0o440
# source: kubernetes/kubernetes@v1.34.0:plugin/pkg/admission/serviceaccount/admission.go (DefaultAPITokenMountPath)
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

# Job pod labels. source: kubernetes/kubernetes@v1.34.0:pkg/registry/batch/job/strategy.go (generateSelector adds
# batch.kubernetes.io/job-name and batch.kubernetes.io/controller-uid, and the legacy job-name/controller-uid,
# to the pod template) and staging/src/k8s.io/api/batch/v1/types.go (the label names).
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"
JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# source: kubernetes/kubernetes@v1.34.0:staging/src/k8s.io/api/apps/v1/types.go
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"  # DefaultDeploymentUniqueLabelKey
STATEFULSET_POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def stand_in(seed: str, length: int = GENERATED_SUFFIX_LEN) -> str:
    """A deterministic stand-in for a random name part: `length` chars of SAFE_ALPHABET from sha256(seed)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:length])


def object_uid(obj: dict) -> str:
    """A stable stand-in for metadata.uid (the API server assigns a random UUID)."""
    meta = obj.get("metadata") or {}
    h = hashlib.sha256(f"{obj.get('kind')}/{meta.get('namespace')}/{meta.get('name')}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def make_pod(template: dict, *, name: str, namespace: str, owner: dict, extra_labels: dict | None = None,
             extra_annotations: dict | None = None, hostname: str | None = None,
             subdomain: str | None = None) -> dict:
    """A Pod from a pod template as a controller creates it (GetPodFromTemplate: template labels,
    annotations and spec; owner reference; controller-specific labels)."""
    # source: kubernetes/kubernetes@v1.34.0:pkg/controller/controller_utils.go (GetPodFromTemplate)
    meta = copy.deepcopy(template.get("metadata") or {})
    spec = copy.deepcopy(template.get("spec") or {})
    labels = {**(meta.get("labels") or {}), **(extra_labels or {})}
    annotations = {**(meta.get("annotations") or {}), **(extra_annotations or {}), OWNER_ANNOTATION: describe(owner)}
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations,
                         "ownerReferences": [{"apiVersion": owner.get("apiVersion"), "kind": owner.get("kind"),
                                              "name": (owner.get("metadata") or {}).get("name"),
                                              "uid": object_uid(owner), "controller": True}]},
            "spec": spec}


def _ns(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("namespace") or "default"


def job_pod_seed(name: str, index: int, attempt: int) -> str:
    """The seed of a Job pod's generated name: pod `index` of the Job, `attempt` the how-many-th pod the controller
    made for it (0 first; each replacement is a new pod with a new random suffix)."""
    return f"{name}/{index}" if attempt == 0 else f"{name}/{index}/{attempt}"


def job_pods(job: dict, attempt: int = 0) -> list[dict]:
    """`parallelism` pods (default 1) named `<job>-<5 chars>` (generateName `<job>-`; Indexed jobs:
    `<job>-<index>-<5 chars>` with the completion index label/annotation and hostname `<job>-<index>`); `attempt` > 0:
    the replacement pods the controller creates after failures (job_retry), each with a new suffix.
    source: kubernetes/kubernetes@v1.34.0:pkg/controller/job/job_controller.go (podGenerateNameWithIndex,
    manageJob) and pkg/controller/job/indexed_job_utils.go (addCompletionIndexEnvVariables, hostname)."""
    name, spec = job["metadata"]["name"], job.get("spec") or {}
    uid = object_uid(job)
    labels = {LEGACY_CONTROLLER_UID_LABEL: uid, CONTROLLER_UID_LABEL: uid, LEGACY_JOB_NAME_LABEL: name,
              JOB_NAME_LABEL: name}
    count = min(int(spec.get("parallelism", 1)), int(spec.get("completions", spec.get("parallelism", 1))))
    pods = []
    for i in range(count):
        if spec.get("completionMode") == "Indexed":
            template = copy.deepcopy(spec["template"])
            for c in template["spec"].get("containers", []) + template["spec"].get("initContainers", []):
                c.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.labels['{JOB_COMPLETION_INDEX}']"}}})
            pods.append(make_pod(template, name=f"{name}-{i}-{stand_in(job_pod_seed(name, i, attempt))}", namespace=_ns(job),
                                 owner=job, extra_labels={**labels, JOB_COMPLETION_INDEX: str(i)},
                                 extra_annotations={JOB_COMPLETION_INDEX: str(i)}, hostname=f"{name}-{i}"))
        else:
            pods.append(make_pod(spec["template"], name=f"{name}-{stand_in(job_pod_seed(name, i, attempt))}", namespace=_ns(job),
                                 owner=job, extra_labels=labels))
    return pods


# What happens after a Job's pod fails or is deleted (a batch/v1 Job; kubernetes/kubernetes@v1.34.0):
# - restartPolicy OnFailure, a container exited non-zero: the kubelet restarts it in the same pod (the pod stays
#   Running; its native sidecars keep running) after its crash-loop back-off (10 s, doubling up to 300 s:
#   pkg/kubelet MaxContainerBackOff, not waited in a rehearsal). The Job counts the restarts: pastBackoffLimitOnFailure
#   (pkg/controller/job/job_controller.go) fails the Job (BackoffLimitExceeded) once the restartCounts of its
#   running/pending pods sum to >= backoffLimit (> 0 when backoffLimit is 0).
# - a pod that failed (restartPolicy Never) or was deleted: counted failed once it is Failed (isPodFailed; with
#   podReplacementPolicy Failed, as mpi-operator sets on its launcher Job, a deleted pod counts once it reaches the
#   Failed phase); the Job fails when failed > backoffLimit (syncJob exceedsBackoffLimit), else manageJob creates a
#   replacement pod from generateName `<job>-`: a new name (after the controller's own back-off, 10 s doubling,
#   also not waited in a rehearsal).
DEFAULT_BACKOFF_LIMIT = 6  # staging/src/k8s.io/api/batch/v1/types.go: backoffLimit "Defaults to 6"


@dataclass(frozen=True)
class JobRetry:
    action: str  # "restart-container" (same pod), "new-pod" (a replacement), "failed" (BackoffLimitExceeded)
    pod: str  # the pod that runs next (the same one for a container restart; the failed one when the Job failed)
    failed: int  # failed pods counted after this event
    restarts: int  # container restarts counted after this event
    reason: str


def job_retry(job: dict, pod_name: str, *, failed: int = 0, restarts: int = 0, deleted: bool = False) -> JobRetry:
    """The Job controller's and the kubelet's answer to pod `pod_name` of `job` failing (its container exited
    non-zero) or being deleted, given the failed pods and container restarts counted so far. The replacement's
    name comes from job_pods(job, attempt=failed) (attempt = the failed pods so far: one new pod per failure)."""
    spec = job.get("spec") or {}
    limit = int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
    policy = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy", "Never")
    what = f"Job {_ns(job)}/{job['metadata']['name']}"
    if policy == "OnFailure" and not deleted:
        restarts += 1
        if (restarts > 0) if limit == 0 else (restarts >= limit):
            return JobRetry("failed", pod_name, failed, restarts, f"{what}: {restarts} container restart(s) reach "
                            f"backoffLimit {limit}: BackoffLimitExceeded (job_controller.go pastBackoffLimitOnFailure)")
        return JobRetry("restart-container", pod_name, failed, restarts,
                        f"{what}: restartPolicy OnFailure: the kubelet restarts the container in pod {pod_name} "
                        f"(restart {restarts}; the Job fails at {max(limit, 1)})")
    failed += 1
    if failed > limit:
        return JobRetry("failed", pod_name, failed, restarts, f"{what}: {failed} failed pod(s) > backoffLimit {limit}: "
                        f"BackoffLimitExceeded (job_controller.go syncJob)")
    new = job_pods(job, attempt=failed)[0]["metadata"]["name"]
    return JobRetry("new-pod", new, failed, restarts, f"{what}: pod {pod_name} {'deleted' if deleted else 'failed'} "
                    f"({failed} of backoffLimit {limit}): the Job controller creates pod {new}")


def replicaset_pods(rs: dict, *, owner: dict | None = None) -> list[dict]:
    """`replicas` pods (default 1) named `<replicaset>-<5 chars>` (generateName `<rs>-`).
    source: kubernetes/kubernetes@v1.34.0:pkg/controller/replicaset/replica_set.go (manageReplicas)."""
    spec = rs.get("spec") or {}
    name = rs["metadata"]["name"]
    return [make_pod(spec["template"], name=f"{name}-{stand_in(f'{name}/{i}')}", namespace=_ns(rs),
                     owner=owner or rs) for i in range(int(spec.get("replicas", 1)))]


def pod_template_hash(deployment: dict) -> str:
    """Stand-in for the pod-template-hash (upstream: FNV-32a of the template, SafeEncodeString'd; source:
    kubernetes/kubernetes@v1.34.0:pkg/controller/controller_utils.go ComputeHash): same alphabet, 10 chars."""
    import json
    return stand_in(json.dumps(deployment["spec"]["template"], sort_keys=True), 10)


def deployment_pods(deployment: dict) -> list[dict]:
    """The pods of the Deployment's ReplicaSet `<deployment>-<pod-template-hash>`, whose template carries the
    pod-template-hash label. source: kubernetes/kubernetes@v1.34.0:pkg/controller/deployment/sync.go
    (getNewReplicaSet: name `deployment.Name + "-" + podTemplateSpecHash`, label DefaultDeploymentUniqueLabelKey)."""
    h = pod_template_hash(deployment)
    template = copy.deepcopy(deployment["spec"]["template"])
    template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH_LABEL] = h
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
          "metadata": {"name": f"{deployment['metadata']['name']}-{h}", "namespace": _ns(deployment)},
          "spec": {"replicas": deployment["spec"].get("replicas", 1), "template": template}}
    return replicaset_pods(rs, owner=deployment)


def statefulset_pods(sts: dict) -> list[dict]:
    """`<set>-<ordinal>` pods with hostname = pod name and subdomain = spec.serviceName.
    source: kubernetes/kubernetes@v1.34.0:pkg/controller/statefulset/stateful_set_utils.go
    (getPodName, initIdentity/updateIdentity, updateStorage: a PVC `<claim>-<pod>` per volumeClaimTemplate)."""
    spec, name = sts["spec"], sts["metadata"]["name"]
    start = int((spec.get("ordinals") or {}).get("start", 0))
    pods = []
    for i in range(start, start + int(spec.get("replicas", 1))):
        pod_name = f"{name}-{i}"
        template = copy.deepcopy(spec["template"])
        for claim in spec.get("volumeClaimTemplates") or []:
            cname = claim["metadata"]["name"]
            template["spec"].setdefault("volumes", []).append(
                {"name": cname, "persistentVolumeClaim": {"claimName": f"{cname}-{pod_name}"}})
        pods.append(make_pod(template, name=pod_name, namespace=_ns(sts), owner=sts,
                             extra_labels={STATEFULSET_POD_NAME_LABEL: pod_name, POD_INDEX_LABEL: str(i)},
                             hostname=pod_name, subdomain=spec.get("serviceName")))
    return pods


def daemonset_pods(ds: dict) -> list[dict]:
    """One pod per node; a rehearsal is one node: `<ds>-<5 chars>`.
    source: kubernetes/kubernetes@v1.34.0:pkg/controller/daemon/daemon_controller.go (syncNodes)."""
    name = ds["metadata"]["name"]
    return [make_pod(ds["spec"]["template"], name=f"{name}-{stand_in(name)}", namespace=_ns(ds), owner=ds)]


def bare_pod(pod: dict) -> list[dict]:
    out = copy.deepcopy(pod)
    out.setdefault("metadata", {}).setdefault("namespace", "default")
    out["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = describe(pod)
    return [out]


_BY_KIND = {"Pod": bare_pod, "Job": job_pods, "Deployment": deployment_pods, "ReplicaSet": replicaset_pods,
            "StatefulSet": statefulset_pods, "DaemonSet": daemonset_pods}


def pods(obj: dict, ctx: Context) -> list[dict]:
    return _BY_KIND[obj["kind"]](obj)


def services(obj: dict, ctx: Context) -> list[dict]:
    return []


def config_objects(obj: dict, ctx: Context) -> list[dict]:
    return []


def admission_problems(obj: dict, ctx: Context) -> list[str]:
    return []


# --------------------------------------------------------------------------- the kubelet's side


def expand(text: str, env: dict[str, str]) -> str:
    """`$(VAR)` expansion as the kubelet applies it to env values, command and args: a defined VAR is
    replaced, an undefined one is left as written, `$$` is an escaped `$`, anything else passes through.
    source: kubernetes/kubernetes@v1.34.0:third_party/forked/golang/expansion/expand.go (Expand,
    tryReadVariableName; read at commit 02604f7db394; behaviour as the cases of its expand_test.go read at
    490ffa432a87, used as fixtures in tests/test_operators_kubernetes.py)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")  # incomplete reference: kept, scanning resumes after "("
                i += 2
            else:
                name = text[i + 2:close]
                out.append(env[name] if name in env else f"$({name})")
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


@dataclass
class VolumeFile:
    path: str  # relative to the mount point
    content: bytes
    mode: int
    gid: int | None = None


@dataclass
class Mount:
    """One volumeMount of a container, resolved to what backs it."""
    path: str  # mountPath in the container
    kind: str  # emptyDir | memory | pvc | files | hostPath
    read_only: bool = False
    source: str = ""  # pvc: claim name; emptyDir: volume name; hostPath: host path
    files: list[VolumeFile] = field(default_factory=list)  # kind "files": ConfigMap/Secret/projected content
    sub_path: str = ""
    size_limit: str | None = None


@dataclass
class ContainerProcess:
    argv: list[str]
    env: dict[str, str]
    workdir: str
    uid: int
    gid: int
    supplemental_gids: list[int]
    mounts: list[Mount]
    hostname: str
    image: ImageConfig


class PodSpecError(ValueError):
    """The kubelet would refuse to start the container (missing ConfigMap/Secret key, ...)."""


def _find(objects: list[dict], kind: str, namespace: str, name: str) -> dict | None:
    for obj in objects:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == kind and meta.get("name") == name and (meta.get("namespace") or "default") == namespace:
            return obj
    return None


def object_data(obj: dict) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys as bytes (Secret `stringData` is merged into `data` by the API server:
    source: kubernetes/kubernetes@v1.34.0:pkg/registry/core/secret/strategy.go dropDisabledFields/ PrepareForCreate)."""
    out: dict[str, bytes] = {}
    if obj["kind"] == "Secret":
        out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        out.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
    else:
        out.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _key_ref(objects, kind, ns, ref, what) -> str | None:
    obj = _find(objects, kind, ns, ref["name"])
    if obj is None or ref["key"] not in object_data(obj):
        if ref.get("optional"):
            return None
        missing = f"{kind} {ns}/{ref['name']}" + ("" if obj is None else f" key {ref['key']!r}")
        raise PodSpecError(f"{what}: {missing} does not exist (the kubelet fails the container: "
                           f"CreateContainerConfigError)")
    return object_data(obj)[ref["key"]].decode()


def field_ref(pod: dict, path: str, pod_ip: str = "") -> str:
    """The downward API fields a fieldRef may name.
    source: kubernetes/kubernetes@v1.34.0:pkg/kubelet/kubelet_pods.go (podFieldSelectorRuntimeValue) and
    pkg/fieldpath/fieldpath.go (ExtractFieldPathAsString)."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    if path.startswith("metadata.labels['") or path.startswith("metadata.annotations['"):
        which, key = path.split("['", 1)
        return (meta.get(which.split(".")[1]) or {}).get(key.rstrip("']"), "")
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", "default"),
              "metadata.uid": object_uid(pod), "spec.nodeName": "rehearsal-node",
              "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
              "status.hostIP": pod_ip, "status.podIP": pod_ip, "status.podIPs": pod_ip,
              "status.hostIPs": pod_ip}
    if path not in simple:
        raise PodSpecError(f"fieldRef {path!r} is not a supported downward API field")
    return simple[path]


def _container(pod: dict, name: str) -> dict:
    spec = pod.get("spec") or {}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if c["name"] == name:
            return c
    raise PodSpecError(f"pod {pod['metadata']['name']} has no container {name!r}")


def service_env(services: list[dict], service_hosts: dict[tuple[str, str], str], namespace: str,
                enable_service_links: bool) -> dict[str, str]:
    """The Docker-links-style service variables the kubelet adds: for every Service of the pod's namespace
    when enableServiceLinks (default true), and always for `kubernetes` in `default`.
    source: kubernetes/kubernetes@v1.34.0:pkg/kubelet/kubelet_pods.go (getServiceEnvVarMap) and
    pkg/kubelet/envvars/envvars.go (FromServices)."""
    env: dict[str, str] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ns, name = meta.get("namespace", "default"), meta["name"]
        host = service_hosts.get((ns, name))
        if not host or spec.get("clusterIP") == "None":
            continue
        if not ((ns == namespace and enable_service_links) or (ns == "default" and name == "kubernetes")):
            continue
        prefix = name.upper().replace("-", "_")
        ports = spec.get("ports") or []
        if not ports:
            continue
        env[f"{prefix}_SERVICE_HOST"] = host
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
        proto = (ports[0].get("protocol") or "TCP")
        env[f"{prefix}_PORT"] = f"{proto.lower()}://{host}:{ports[0]['port']}"
        for p in ports:
            pr = (p.get("protocol") or "TCP")
            base = f"{prefix}_PORT_{p['port']}_{pr.upper()}"
            env[base] = f"{pr.lower()}://{host}:{p['port']}"
            env[f"{base}_PROTO"] = pr.lower()
            env[f"{base}_PORT"] = str(p["port"])
            env[f"{base}_ADDR"] = host
    return env


def container_env(pod: dict, container: dict, objects: list[dict], *, pod_ip: str = "",
                  base_env: dict[str, str] | None = None) -> dict[str, str]:
    """The container's env as the kubelet computes it: service variables, then envFrom (in order, prefix,
    keys that are not valid names skipped), then env (in order, each value `$(VAR)`-expanded against
    what is defined so far; valueFrom secretKeyRef/configMapKeyRef/fieldRef/resourceFieldRef).
    source: kubernetes/kubernetes@v1.34.0:pkg/kubelet/kubelet_pods.go (makeEnvironmentVariables)."""
    ns = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = dict(base_env or {})
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        ref = src.get("configMapRef") or src.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in src else "Secret"
        obj = _find(objects, kind, ns, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise PodSpecError(f"envFrom: {kind} {ns}/{ref['name']} does not exist")
        for k, v in object_data(obj).items():
            env[prefix + k] = v.decode()
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        vf = item["valueFrom"]
        what = f"pod {pod['metadata']['name']} container {container['name']} env {name}"
        if "secretKeyRef" in vf:
            value = _key_ref(objects, "Secret", ns, vf["secretKeyRef"], what)
        elif "configMapKeyRef" in vf:
            value = _key_ref(objects, "ConfigMap", ns, vf["configMapKeyRef"], what)
        elif "fieldRef" in vf:
            value = field_ref(pod, vf["fieldRef"]["fieldPath"], pod_ip)
        elif "resourceFieldRef" in vf:
            value = _resource_field(container, vf["resourceFieldRef"])
        else:
            raise PodSpecError(f"{what}: unsupported valueFrom {sorted(vf)}")
        if value is not None:
            env[name] = value
    return env


_CPU = {"m": 1e-3}
_MEM = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _quantity(q: str) -> float:
    q = str(q)
    for suffix, factor in sorted({**_CPU, **_MEM}.items(), key=lambda kv: -len(kv[0])):
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    return float(q)


def _resource_field(container: dict, ref: dict) -> str:
    """resourceFieldRef: the limit (or request) divided by the divisor, rounded up.
    source: kubernetes/kubernetes@v1.34.0:pkg/api/v1/resource/helpers.go (ExtractContainerResourceValue)."""
    import math
    which, _, res = ref["resource"].partition(".")
    value = (container.get("resources") or {}).get(which, {}).get(res)
    if value is None:
        raise PodSpecError(f"resourceFieldRef {ref['resource']}: not set on container {container['name']} "
                           "(the kubelet would use the node's allocatable)")
    return str(math.ceil(_quantity(value) / _quantity(ref.get("divisor", "1"))))


def _volume_files(pod: dict, volume: dict, objects: list[dict], fs_group: int | None) -> list[VolumeFile] | None:
    """The files of a ConfigMap/Secret/projected volume, with modes (items[].mode over defaultMode 0644;
    with fsGroup the group read bits are added). source: kubernetes/kubernetes@v1.34.0:pkg/volume/configmap/
    configmap.go and pkg/volume/secret/secret.go (MakePayload), pkg/volume/projected/projected.go."""
    ns = pod["metadata"].get("namespace", "default")

    def payload(kind: str, src: dict, default_mode: int) -> list[VolumeFile]:
        obj = _find(objects, kind, ns, src.get("name") or src.get("secretName"))
        if obj is None:
            if src.get("optional"):
                return []
            raise PodSpecError(f"pod {pod['metadata']['name']} volume {volume['name']}: {kind} "
                               f"{ns}/{src.get('name') or src.get('secretName')} does not exist (FailedMount)")
        data = object_data(obj)
        items = src.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        files = []
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise PodSpecError(f"pod {pod['metadata']['name']} volume {volume['name']}: key {item['key']!r} "
                                   f"not in {kind} {obj['metadata']['name']} (FailedMount)")
            mode = int(item.get("mode", default_mode))
            if fs_group is not None:
                mode |= FSGROUP_READONLY_MASK
            files.append(VolumeFile(item["path"], data[item["key"]], mode, fs_group))
        return files

    if "configMap" in volume:
        src = volume["configMap"]
        return payload("ConfigMap", src, int(src.get("defaultMode", DEFAULT_VOLUME_FILE_MODE)))
    if "secret" in volume:
        src = volume["secret"]
        return payload("Secret", src, int(src.get("defaultMode", DEFAULT_VOLUME_FILE_MODE)))
    if "projected" in volume:
        src = volume["projected"]
        mode = int(src.get("defaultMode", DEFAULT_VOLUME_FILE_MODE))
        files: list[VolumeFile] = []
        for s in src.get("sources") or []:
            if "configMap" in s:
                files += payload("ConfigMap", s["configMap"], mode)
            elif "secret" in s:
                files += payload("Secret", s["secret"], mode)
            elif "serviceAccountToken" in s:
                # No API server in a rehearsal: a token file that authenticates to nothing.
                files.append(VolumeFile(s["serviceAccountToken"]["path"], b"rehearsal-token-not-valid", mode, fs_group))
            elif "downwardAPI" in s:
                for item in s["downwardAPI"].get("items") or []:
                    value = field_ref(pod, item["fieldRef"]["fieldPath"])
                    files.append(VolumeFile(item["path"], value.encode(), int(item.get("mode", mode)), fs_group))
        return files
    return None


def service_account_volume(pod: dict) -> tuple[dict, dict] | None:
    """The `kube-api-access-*` projected volume the ServiceAccount admission plugin adds to every container
    unless automountServiceAccountToken is false (pod, else the ServiceAccount's; the SA is not consulted
    here: ours set it on the pod). source: kubernetes/kubernetes@v1.34.0:plugin/pkg/admission/serviceaccount/
    admission.go (mountServiceAccountToken, TokenVolumeSource: token, ca.crt, namespace)."""
    spec = pod.get("spec") or {}
    if spec.get("automountServiceAccountToken") is False:
        return None
    name = f"kube-api-access-{stand_in(pod['metadata']['name'])}"
    volume = {"name": name, "projected": {"defaultMode": DEFAULT_VOLUME_FILE_MODE, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}
    return volume, {"name": name, "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": True}


def container_mounts(pod: dict, container: dict, objects: list[dict], fs_group: int | None) -> list[Mount]:
    volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
    mounts_spec = list(container.get("volumeMounts") or [])
    sa = service_account_volume(pod)
    if sa and not any(m["mountPath"] == SERVICE_ACCOUNT_MOUNT for m in mounts_spec):
        volumes[sa[0]["name"]] = sa[0]
        mounts_spec.append(sa[1])
    out = []
    for vm in mounts_spec:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise PodSpecError(f"pod {pod['metadata']['name']} container {container['name']}: volumeMount "
                               f"{vm['name']!r} names no volume of the pod")
        ro = bool(vm.get("readOnly"))
        sub = vm.get("subPath", "")
        if "emptyDir" in vol:
            ed = vol["emptyDir"] or {}
            out.append(Mount(vm["mountPath"], "memory" if ed.get("medium") == "Memory" else "emptyDir", ro,
                             vm["name"], sub_path=sub, size_limit=ed.get("sizeLimit")))
        elif "persistentVolumeClaim" in vol:
            pvc = vol["persistentVolumeClaim"]
            out.append(Mount(vm["mountPath"], "pvc", ro or bool(pvc.get("readOnly")), pvc["claimName"],
                             sub_path=sub))
        elif "hostPath" in vol:
            out.append(Mount(vm["mountPath"], "hostPath", ro, vol["hostPath"]["path"], sub_path=sub))
        else:
            files = _volume_files(pod, vol, objects, fs_group)
            if files is None:
                raise PodSpecError(f"pod {pod['metadata']['name']} volume {vm['name']}: volume type "
                                   f"{sorted(k for k in vol if k != 'name')} is not modelled")
            # configMap/secret/projected/downwardAPI volumes are always mounted read-only since 1.9.
            # source: kubernetes/kubernetes@v1.34.0:pkg/volume/configmap/configmap.go (GetAttributes ReadOnly: true)
            out.append(Mount(vm["mountPath"], "files", True, vm["name"], files=files, sub_path=sub))
    return out


def container_process(pod: dict, container_name: str, objects: list[dict], image: ImageConfig, *,
                      pod_ip: str = "", services: list[dict] | None = None,
                      service_hosts: dict[tuple[str, str], str] | None = None) -> ContainerProcess:
    """What the kubelet and the runtime start for one container of `pod`.

    argv: `command` replaces ENTRYPOINT (and drops CMD); `args` replaces CMD; each `$(VAR)`-expanded against
    the container env (source: kubernetes/kubernetes@v1.34.0:pkg/kubelet/container/helpers.go
    ExpandContainerCommandAndArgs; docs: kubernetes.io/docs/tasks/inject-data-application/
    define-command-argument-container/#notes). env: the image's ENV under the container's (the runtime merges
    them, the container's win: containerd pkg/cri/opts/spec_opts.go WithEnv). workingDir over WORKDIR. uid/gid:
    the container's securityContext over the pod's over the image USER; fsGroup and supplementalGroups are
    supplemental groups (source: pkg/kubelet/kuberuntime/security_context.go, kuberuntime_container_linux.go).
    """
    container = _container(pod, container_name)
    spec = pod.get("spec") or {}
    ns = pod["metadata"].get("namespace", "default")
    base = service_env(services or [], service_hosts or {}, ns, spec.get("enableServiceLinks", True))
    env = container_env(pod, container, objects, pod_ip=pod_ip, base_env=base)
    if container.get("command"):
        argv = [expand(a, env) for a in container["command"]] + [expand(a, env) for a in container.get("args") or []]
    elif container.get("args") is not None:
        argv = list(image.entrypoint) + [expand(a, env) for a in container["args"]]
    else:
        argv = list(image.entrypoint) + list(image.cmd)
    if not argv:
        raise PodSpecError(f"pod {pod['metadata']['name']} container {container_name}: no command, args, "
                           "ENTRYPOINT or CMD (the runtime refuses: no command specified)")
    pod_sc, c_sc = spec.get("securityContext") or {}, container.get("securityContext") or {}
    image_uid, image_gid = image.uid_gid()
    uid = c_sc.get("runAsUser", pod_sc.get("runAsUser", image_uid))
    # Without runAsGroup the runtime takes the uid's primary group from the image's /etc/passwd (0 if absent):
    # known for the image's own USER only.
    gid = c_sc.get("runAsGroup", pod_sc.get("runAsGroup", image_gid if uid == image_uid else 0))
    if uid is None:
        raise PodSpecError(f"pod {pod['metadata']['name']} container {container_name}: image USER {image.user!r} "
                           "is a name; give runAsUser")
    if (c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True) and uid == 0:
        # source: pkg/kubelet/kuberuntime/security_context_others.go (verifyRunAsNonRoot)
        raise PodSpecError(f"pod {pod['metadata']['name']} container {container_name}: runAsNonRoot and the "
                           "user is root (CreateContainerConfigError)")
    fs_group = pod_sc.get("fsGroup")
    groups = ([fs_group] if fs_group is not None else []) + list(pod_sc.get("supplementalGroups") or [])
    full_env = {**image.env_dict(), **env}
    workdir = container.get("workingDir") or image.workdir or "/"
    return ContainerProcess(argv=argv, env=full_env, workdir=posixpath.normpath(workdir), uid=int(uid),
                            gid=int(gid or 0), supplemental_gids=groups,
                            mounts=container_mounts(pod, container, objects, fs_group), hostname=pod_hostname(pod),
                            image=image)


# --------------------------------------------------------------------------- scheduling: requests and taints

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "": 1}


def quantity(value) -> float:
    """A Kubernetes quantity as a number (bytes, cores, devices)."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def pod_requests(pod: dict) -> dict[str, float]:
    """Effective requests: the sum over containers, or the largest init container if bigger
    (kubernetes/kubernetes@v1.34.0 pkg/api/v1/resource/helpers.go PodRequests); requests default
    to limits (pkg/apis/core/v1/defaults.go SetDefaults_Pod)."""
    total: dict[str, float] = {}
    spec = pod.get("spec") or {}
    for c in spec.get("containers") or []:
        for k, v in _container_requests(c).items():
            total[k] = total.get(k, 0) + v
    for c in spec.get("initContainers") or []:
        for k, v in _container_requests(c).items():
            total[k] = max(total.get(k, 0), v)
    return total


def _container_requests(c: dict) -> dict[str, float]:
    res = c.get("resources") or {}
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
    return {k: quantity(v) for k, v in merged.items()}


def tolerates(pod: dict, taints: list[dict]) -> bool:
    """Every NoSchedule/NoExecute taint tolerated (kubernetes/kubernetes@v1.34.0
    pkg/apis/core/v1/helper/helpers.go TolerationsTolerateTaint)."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in taints:
        if taint.get("effect") == "PreferNoSchedule":
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _tolerates(tol: dict, taint: dict) -> bool:
    if tol.get("effect") and tol["effect"] != taint.get("effect"):
        return False
    if not tol.get("key"):
        return tol.get("operator") == "Exists"
    if tol["key"] != taint.get("key"):
        return False
    return tol.get("operator", "Equal") == "Exists" or str(tol.get("value", "")) == str(taint.get("value", ""))


def match_expression(expr: dict, labels: dict[str, str]) -> bool:
    """One selector requirement; also the node-selector operators Gt and Lt
    (kubernetes/kubernetes pkg/apis/core/v1/helper NodeSelectorRequirementsAsSelector)."""
    key, op, values = expr["key"], expr["operator"], [str(v) for v in expr.get("values") or []]
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present:
        try:
            have, want = int(labels[key]), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


# --------------------------------------------------------------------------- RBAC: what the API server allows a
# service account (kubernetes/kubernetes@v1.34.0 plugin/pkg/auth/authorizer/rbac/rbac.go RulesAllow over the rules of
# every RoleBinding in the request's namespace and every ClusterRoleBinding naming the subject; rule matching in
# pkg/apis/rbac/v1/evaluation_helpers.go: VerbMatches, APIGroupMatches, ResourceMatches, ResourceNameMatches (a rule
# with resourceNames never matches a request without a name, such as list or create); the verb of a request from
# staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go: GET of a collection is list, of an object get,
# PUT update, PATCH patch, POST create, DELETE of an object delete, of a collection deletecollection).

def request_verb(method: str, has_name: bool) -> str:
    return {("GET", False): "list", ("GET", True): "get", ("PUT", True): "update", ("PATCH", True): "patch",
            ("POST", False): "create", ("DELETE", True): "delete", ("DELETE", False): "deletecollection"}[
        (method.upper(), has_name)]


def _rule_allows(rule: dict, verb: str, group: str, resource: str, name: str) -> bool:
    return ((set(rule.get("verbs") or []) & {"*", verb})
            and (set(rule.get("apiGroups") or []) & {"*", group})
            and (set(rule.get("resources") or []) & {"*", resource})
            and (not rule.get("resourceNames") or name in rule["resourceNames"]))


def rbac_allows(objects: list[dict], service_account: tuple[str, str], verb: str, group: str, resource: str,
                namespace: str, name: str = "") -> bool:
    """Whether the rendered Roles/ClusterRoles bound to `service_account` ((namespace, name)) allow the request."""
    sa_ns, sa_name = service_account

    def binds(b: dict) -> bool:
        return any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name and s.get("namespace", sa_ns) == sa_ns
                   for s in b.get("subjects") or [])

    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects
             if o.get("kind") in ("Role", "ClusterRole")}
    rules: list[dict] = []
    for b in objects:
        if b.get("kind") == "ClusterRoleBinding" or (b.get("kind") == "RoleBinding"
                                                     and b["metadata"].get("namespace", "default") == namespace):
            if binds(b):
                ref = b["roleRef"]
                ns = "" if ref["kind"] == "ClusterRole" else b["metadata"].get("namespace", "default")
                rules += (roles.get((ref["kind"], ns, ref["name"])) or {}).get("rules") or []
    return any(_rule_allows(r, verb, group, resource, name) for r in rules)
