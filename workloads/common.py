"""What every workload shares, in one place: the Kubernetes provider for the platform's
cluster, the service account and its IAM role, the HF token Secret, the image reference
(built and pushed, or given), and the pod template pieces (FSx mount, /dev/shm, Neuron and
EFA requests, node selection and tolerations from the platform outputs, common env).

Pure functions build the specs; `WorkloadBase` registers the shared resources.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import iam, versions
from trnctl.operators.pulumi_kubernetes import TIMEOUT_ANNOTATION, WAIT_FOR, rollout_budget_seconds
from workloads.config import IMAGE_DIRS, IMAGE_TRACKS, WorkloadStackConfig
from workloads.errors import WorkloadConfigError
from workloads.platform import Platform, PoolScheduling

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_VOLUME = "shared"
SHM_VOLUME = "dshm"
RUN_CONFIG_VOLUME = "run-config"
RUN_CONFIG_DIR = "/etc/run"
RUN_CONFIG_FILE = f"{RUN_CONFIG_DIR}/run.json"
HF_TOKEN_KEY = "token"
TENSORBOARD_PORT = 6006
# On every pod of a running batch gang (ranks, launcher, Ray head): Karpenter does not voluntarily
# disrupt (consolidate, drift) a node while such a pod runs, so one eviction cannot fail the whole job
# (karpenter-provider-aws v1.14 website concepts/disruption.md, "Pod-Level Controls"; checked by
# trnctl/cluster/disruption.py). Expiration is forceful, but its drain waits for these pods unless the pool
# sets a terminationGracePeriod; accelerator pools never expire.
TRAINING_POD_ANNOTATIONS = {"karpenter.sh/do-not-disrupt": "true"}
NEURON_RESOURCE = "aws.amazon.com/neuron"
EFA_RESOURCE = "vpc.amazonaws.com/efa"


# --------------------------------------------------------------------------- pure specs


@dataclass(frozen=True)
class Paths:
    """Where a run reads and writes on the shared file system."""
    mount: str
    stack: str
    run_id: str

    @property
    def run_dir(self) -> str:
        return f"{self.mount}/runs/{self.stack}/{self.run_id}"

    @property
    def neuron_cache(self) -> str:
        # One compile cache for every run: identical graphs compile once per SDK version.
        return f"{self.mount}/neuron-cache"

    @property
    def neff_cache(self) -> str:
        # TorchNeuron's NEFF cache (native track) has its own layout (<2-hex>/<2-hex>/<hash>.neff): its own directory.
        return f"{self.mount}/neff-cache"

    @property
    def hf_home(self) -> str:
        return f"{self.mount}/hf-home"


def labels(cfg: WorkloadStackConfig, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": cfg.workload, "app.kubernetes.io/instance": cfg.stack,
            "app.kubernetes.io/version": cfg.version, "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "pulumi"}


# TorchNeuron's persistent NEFF cache directory (eager and torch.compile alike; default /tmp/neff_cache,
# safe for concurrent writers on a shared file system): "TorchNeuron environment variables",
# https://awsdocs-neuron.readthedocs-hosted.com/en/latest/torch/reference/env-vars.html, and "What are
# Neuron Compiler artifacts?", https://awsdocs-neuron.readthedocs-hosted.com/en/latest/compiler/about-compiler-artifacts.html
NEFF_CACHE_ENV = "TORCH_NEURONX_NEFF_CACHE_DIR"


def compile_cache_env(track: str, paths: Paths) -> list[dict]:
    """The compile cache on FSx as the track's software reads it: PyTorch/XLA (xla) reads
    NEURON_COMPILE_CACHE_URL and neuronx-cc's --cache_dir; TorchNeuron (native) reads only
    TORCH_NEURONX_NEFF_CACHE_DIR, and has no use for the XLA-era settings."""
    if track == "xla":
        return [{"name": "NEURON_CC_FLAGS", "value": f"--cache_dir={paths.neuron_cache}"},
                {"name": "NEURON_COMPILE_CACHE_URL", "value": paths.neuron_cache}]
    if track == "native":
        return [{"name": NEFF_CACHE_ENV, "value": paths.neff_cache}]
    raise ValueError(f"Neuron track {track!r}; allowed values: xla, native")


def common_env(platform: Platform, paths: Paths, *, neuron: bool, hf_secret: str | None,
               track: str = "xla") -> list[dict]:
    env = [
        {"name": "AWS_REGION", "value": platform.region},
        {"name": "RUN_DIR", "value": paths.run_dir},
        {"name": "HF_HOME", "value": paths.hf_home},
        {"name": "NEURON_SDK_VERSION", "value": platform.neuron_sdk_version},
        {"name": "ARTIFACTS_BUCKET", "value": platform.artifacts_bucket},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "TRN_BACKEND", "value": "neuron" if neuron else "cpu"},
    ]
    if neuron:
        env += compile_cache_env(track, paths)
    if hf_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf_secret, "key": HF_TOKEN_KEY}}})
    return env


def node_share(pool: PoolScheduling, share: float = 1.0) -> tuple[str, str]:
    """(cpu, memory) requests of `share` of what a workload pod may request on one node of `pool`
    (the platform's schedulable*PerNode outputs: Karpenter's pre-launch allocatable minus DaemonSets),
    rounded down, so a pod sized from it fits the first node Karpenter launches of that type. CPU in
    whole cores from one core up: KubeRay rounds the CPU quantity up for Ray's --num-cpus
    (trnctl/operators/kuberay.py), which must not exceed the pod's CPU quota."""
    millicpu = int(pool.schedulable_millicpu_per_node * share)
    cpu = str(millicpu // 1000) if millicpu >= 1000 else f"{millicpu}m"
    return cpu, f"{int(pool.schedulable_memory_mib_per_node * share)}Mi"


def resources_for(pool: PoolScheduling, *, neuron_devices: int = 0, efa: int = 0, cpu: str | None = None,
                  memory: str | None = None, cpu_limit: str | None = None) -> dict:
    """Requests = limits for devices (extended resources must match); CPU/memory requests sized by
    the caller, or the whole node's schedulable share when not given (node_share); memory limit equal
    to the request (no OOM surprises on a shared node)."""
    whole_cpu, whole_memory = node_share(pool)
    cpu, memory = cpu or whole_cpu, memory or whole_memory
    req = {"cpu": cpu, "memory": memory}
    lim = {"cpu": cpu_limit or cpu, "memory": memory}
    if neuron_devices:
        req[NEURON_RESOURCE] = lim[NEURON_RESOURCE] = str(neuron_devices)
    if efa:
        req[EFA_RESOURCE] = lim[EFA_RESOURCE] = str(efa)
    return {"requests": req, "limits": lim}


def container(*, name: str, image: str, command: list[str], env: list[dict], resources: dict,
              mount_path: str, ports: list[dict] | None = None, efa: bool = False, **extra: Any) -> dict:
    c = {
        "name": name, "image": image, "imagePullPolicy": "IfNotPresent", "command": command, "env": env,
        "resources": resources,
        "volumeMounts": [{"name": SHARED_VOLUME, "mountPath": mount_path}, {"name": SHM_VOLUME, "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"], **({"add": ["IPC_LOCK"]} if efa else {})}},
    }
    if ports:
        c["ports"] = ports
    c.update(extra)
    return c


def pod_spec(*, platform: Platform, pool: PoolScheduling, containers: list[dict], service_account: str,
             restart_policy: str | None = None, shm_size: str = "8Gi", scheduler_name: str | None = None,
             run_config: str | None = None, **extra: Any) -> dict:
    """Pod spec on `pool`: its node selector and tolerations, the shared FSx claim, a
    memory-backed /dev/shm (PyTorch data loaders and XLA need more than the 64 MiB default),
    and the run's JSON config (ConfigMap `run_config`) at /etc/run/run.json."""
    if run_config:
        for c in containers:
            c["volumeMounts"] = [*c["volumeMounts"], {"name": RUN_CONFIG_VOLUME, "mountPath": RUN_CONFIG_DIR,
                                                      "readOnly": True}]
    uid = versions.neuron_sdk()["uid"]  # every image runs as this user (images/neuron-sdk.json)
    spec = {
        "serviceAccountName": service_account,
        "securityContext": {"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid, "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        # No workload calls the Kubernetes API; AWS credentials come from the Pod Identity /
        # IRSA webhook's own projected token, which this does not affect.
        "automountServiceAccountToken": False,
        "nodeSelector": dict(pool.node_selector),
        "tolerations": [dict(t) for t in pool.tolerations],
        "containers": containers,
        "volumes": [
            {"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": platform.storage.pvc_name}},
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        ],
    }
    if run_config:
        spec["volumes"].append({"name": RUN_CONFIG_VOLUME, "configMap": {"name": run_config}})
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    if scheduler_name:
        spec["schedulerName"] = scheduler_name
    spec.update(extra)
    return spec


def image_reference(repository_url: str, tag: str, digest: str | None) -> str:
    return f"{repository_url}@{digest}" if digest else f"{repository_url}:{tag}"


def check_devices(pool: PoolScheduling, devices: int, key: str, problems: list[str]) -> None:
    if devices < 1 or devices > pool.neuron_devices_per_node:
        problems.append(f"{key}: {devices} Neuron devices do not fit pool {pool.name!r} "
                        f"({', '.join(pool.instance_types)}: 1 to {pool.neuron_devices_per_node} per node)")


def check_track(platform: Platform, pool: PoolScheduling, tracks: tuple[str, ...], key: str) -> None:
    """A workload of Neuron tracks `tracks` (images/neuron-sdk.json) may only land on a pool whose
    hardware runs one of them: the error names the key, the pool and the pools that would work."""
    if pool.track in tracks:
        return
    families = ", ".join(f for t in tracks for f in versions.neuron_track(t)["families"])
    needs = f"the {tracks[0]} track" if len(tracks) == 1 else f"one of the {', '.join(tracks)} tracks"
    would = sorted({p for t in tracks for p in platform.neuron_tracks.get(t) or []})
    if not would:  # one reason, not a list of pools that would not work either
        raise WorkloadConfigError([f"{key}: pool {pool.name!r} ({', '.join(pool.instance_types)}) runs the "
                                   f"{pool.track or 'no'} Neuron track; {platform.would_work(True)}"])
    raise WorkloadConfigError([
        f"{key}: pool {pool.name!r} ({', '.join(pool.instance_types)}) runs the {pool.track or 'no'} Neuron track; "
        f"this workload needs {needs} ({families}); pools of platform stack {platform.stack} that would "
        f"work: {', '.join(would)}"])


# --------------------------------------------------------------------------- component


@dataclass
class WorkloadBaseArgs:
    config: WorkloadStackConfig
    platform: Platform
    s3_prefixes: list[str] = field(default_factory=list)  # artifacts bucket prefixes the workload writes


class WorkloadBase(pulumi.ComponentResource):
    """Provider, service account + IAM role, HF token Secret and image for one workload."""

    def __init__(self, name: str, args: WorkloadBaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:workloads:WorkloadBase", name, None, opts)
        cfg, platform = args.config, args.platform
        self.config, self.platform = cfg, platform
        self.namespace = platform.namespace
        self.paths = Paths(mount=platform.storage.mount_path, stack=cfg.stack, run_id=cfg.run_id)
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=platform.kubeconfig,
                                     enable_server_side_apply=True, opts=pulumi.ResourceOptions(parent=self))
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=self.provider)

        self.service_account = f"{cfg.stack}"[:63]
        prefixes = args.s3_prefixes or [f"workloads/{cfg.stack}"]
        role = iam.ServiceAccountRole(
            f"{name}-role",
            identity=iam.ClusterIdentity(cluster_name=platform.cluster_name, mode=platform.identity_mode,
                                         oidc_provider_arn=platform.oidc_provider_arn, oidc_issuer=platform.oidc_issuer),
            namespace=self.namespace, service_account=self.service_account,
            policy=iam.s3_prefix_access_policy(platform.artifacts_bucket_arn, prefixes, write=True),
            opts=pulumi.ResourceOptions(parent=self))
        self.sa = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=role.annotations.apply(lambda ann: {
                "name": self.service_account, "namespace": self.namespace,
                "labels": labels(cfg, "identity"), "annotations": ann}), opts=k8s_opts)

        self.hf_secret: str | None = None
        if cfg.hf_token_set:
            self.hf_secret = f"{cfg.stack}-hf-token"
            token = pulumi.Config("trn-workloads").require_secret("hfToken")
            k8s.core.v1.Secret(f"{name}-hf-token", metadata={"name": self.hf_secret, "namespace": self.namespace,
                                                              "labels": labels(cfg, "credentials")},
                               type="Opaque", string_data={HF_TOKEN_KEY: token}, opts=k8s_opts)

        self._name = name
        self._images: dict[str, pulumi.Output[str]] = {}
        self.image = self.image_for(cfg.image.repository, digest=cfg.image.digest)
        self.dependencies: list[pulumi.Resource] = [self.sa]
        self.register_outputs({"image": self.image})

    def image_for(self, repository: str, digest: str | None = None) -> pulumi.Output[str]:
        """The workload version's image in one of the platform's repositories: built and
        pushed during `pulumi up` when image.build is set, else the pinned tag/digest."""
        if repository not in self._images:
            cfg, platform = self.config, self.platform
            if repository not in platform.ecr_repositories:
                raise WorkloadConfigError([f"image.repository: {repository!r} is not a repository of platform stack "
                                           f"{platform.stack}; allowed values: {', '.join(sorted(platform.ecr_repositories))}"])
            repo_url = platform.ecr_repositories[repository]
            if cfg.image.build:
                self._images[repository] = build_and_push(f"{self._name}-{repository}", repo_url=repo_url,
                                                          image_dir=IMAGE_DIRS[repository], tag=cfg.image.tag, parent=self)
            else:
                self._images[repository] = pulumi.Output.from_input(image_reference(repo_url, cfg.image.tag, digest))
        return self._images[repository]

    def run_opts(self, *depends_on: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[*self.dependencies, *depends_on])

    def tensorboard(self, name: str, *, logdir: str, pool: PoolScheduling) -> str:
        """TensorBoard on a CPU pool reading a run's logs on FSx; ClusterIP only. Returns the
        port-forward command (the workload's `tensorboard` output)."""
        cfg, platform = self.config, self.platform
        app = f"{cfg.stack}-tensorboard"
        selector = {"app.kubernetes.io/instance": cfg.stack, "app.kubernetes.io/component": "tensorboard"}
        board = container(name="tensorboard", image=self.image, mount_path=platform.storage.mount_path,
                          command=["tensorboard", "--logdir", logdir, "--host", "0.0.0.0",
                                   "--port", str(TENSORBOARD_PORT)],
                          env=[{"name": "PYTHONUNBUFFERED", "value": "1"}],
                          resources=resources_for(pool, cpu="500m", memory="2Gi", cpu_limit="1"),
                          ports=[{"name": "http", "containerPort": TENSORBOARD_PORT}],
                          readinessProbe={"httpGet": {"path": "/", "port": TENSORBOARD_PORT}, "periodSeconds": 10})
        deployment = k8s.apps.v1.Deployment(
            f"{name}-tensorboard", metadata={"name": app, "namespace": self.namespace, "labels": labels(cfg, "tensorboard"),
                                             "annotations": rollout_await(board)},
            spec={"replicas": 1, "selector": {"matchLabels": selector},
                  "template": {"metadata": {"labels": {**labels(cfg, "tensorboard"), **selector}},
                               "spec": pod_spec(platform=platform, pool=pool, containers=[board],
                                                service_account=self.service_account, shm_size="256Mi")}},
            opts=self.run_opts())
        k8s.core.v1.Service(
            f"{name}-tensorboard", metadata={"name": app, "namespace": self.namespace, "labels": labels(cfg, "tensorboard")},
            spec={"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "http", "port": TENSORBOARD_PORT, "targetPort": TENSORBOARD_PORT}]},
            opts=self.run_opts(deployment))
        return (f"kubectl -n {self.namespace} port-forward service/{app} "
                f"{TENSORBOARD_PORT}:{TENSORBOARD_PORT}  # then open http://localhost:{TENSORBOARD_PORT}")


def build_args(image_dir: str) -> dict[str, str]:
    """Build args from the image's Neuron track in images/neuron-sdk.json; the titan image also
    gets the TorchTitan Neuron fork's repository and commit (tracks.native.torchtitan_neuron_source)."""
    pin = versions.neuron_track(IMAGE_TRACKS[image_dir])
    problems = []
    base = None
    try:
        base = versions.base_image(IMAGE_TRACKS[image_dir], "inference" if image_dir == "serve" else "training")
    except versions.UnpinnedBaseImage as err:
        problems.append(f"image.build: images/{image_dir} cannot be built: {err}; or set image.build to "
                        "false and give image.digest of an image built elsewhere")
    args = {"BASE_IMAGE": base, "NEURON_SDK_VERSION": pin["neuron_sdk"]}
    if image_dir == "titan":
        source = pin["torchtitan_neuron_source"]
        key = f"images/neuron-sdk.json tracks.{IMAGE_TRACKS[image_dir]}.torchtitan_neuron_source.commit"
        if not re.fullmatch(r"[0-9a-f]{40}", source["commit"] or ""):
            problems.append(
                f"image.build: the titan image installs TorchTitan Neuron {pin['torchtitan_neuron']} from "
                f"{source['repository']} at one commit, and {key} is {source['commit']!r}, not a 40-hex commit; "
                f"set it (git ls-remote {source['repository']}), or set image.build to false and give image.digest "
                "of a titan image built elsewhere")
        args |= {"TORCHTITAN_NEURON_REPOSITORY": source["repository"], "TORCHTITAN_NEURON_COMMIT": source["commit"]}
    if problems:
        raise WorkloadConfigError(problems)
    return args


def build_and_push(name: str, *, repo_url: str, image_dir: str, tag: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """Build images/<image_dir>/Dockerfile (context images/) and push it to ECR; the
    reference returned carries the pushed digest, so pods roll exactly when it changes."""
    import pulumi_aws as aws
    import pulumi_docker_build as docker_build

    auth = aws.ecr.get_authorization_token_output()
    image = docker_build.Image(
        f"{name}-image", context=docker_build.BuildContextArgs(location=str(REPO_ROOT / "images")),
        dockerfile=docker_build.DockerfileArgs(location=str(REPO_ROOT / "images" / image_dir / "Dockerfile")),
        platforms=[docker_build.Platform.LINUX_AMD64], build_args=build_args(image_dir), push=True,
        tags=[f"{repo_url}:{tag}"],
        # The registry password must never land in state or previews in clear text.
        registries=[docker_build.RegistryArgs(address=repo_url.split("/")[0], username=auth.user_name,
                                              password=pulumi.Output.secret(auth.password))],
        opts=pulumi.ResourceOptions(parent=parent))
    return image.digest.apply(lambda d: f"{repo_url}@{d}")


def json_config_map(name: str, *, namespace: str, data: dict, cfg: WorkloadStackConfig, component: str,
                    opts: pulumi.ResourceOptions) -> k8s.core.v1.ConfigMap:
    """Run configuration (JSON, never code) that the image's entrypoint reads from
    RUN_CONFIG_FILE. Its content hash is in the name, so a changed config is a new
    ConfigMap and the pods that read it are replaced, never left on the old values."""
    body = json.dumps(data, indent=2, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()[:8]
    return k8s.core.v1.ConfigMap(name, metadata={"name": f"{name}-{digest}", "namespace": namespace,
                                                 "labels": labels(cfg, component)},
                                 data={"run.json": body}, opts=opts)


def job_await(deadline_seconds: int) -> dict:
    """`pulumi up` awaits a batch/v1 Job until Complete, 10 minutes by default (pulumi-kubernetes
    provider/pkg/await/job.go): wait as long as the Job may run (its activeDeadlineSeconds), or
    the update fails while the Job is still legitimately running (trnctl/operators/pulumi_kubernetes.py)."""
    return {TIMEOUT_ANNOTATION: str(deadline_seconds)}


def rollout_await(*containers: dict) -> dict:
    """`pulumi up` awaits a Deployment's rollout, 10 minutes by default (pulumi-kubernetes
    provider/pkg/await/deployment.go): wait for node launch, image pull and the containers' startup
    probe budget (trnctl/operators/pulumi_kubernetes.py rollout_budget_seconds)."""
    return {TIMEOUT_ANNOTATION: str(rollout_budget_seconds({"containers": list(containers)}))}


def wait_for(condition: str, timeout_seconds: int) -> dict:
    """Annotations that make `pulumi up` wait for a custom resource (MPIJob, RayJob) to reach
    `condition` before creating what depends on it (pulumi-kubernetes >= 4.18)."""
    return {WAIT_FOR: condition, TIMEOUT_ANNOTATION: str(timeout_seconds)}
