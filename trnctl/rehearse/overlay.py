"""The rehearsal overlay: everything a rehearsal changes relative to the cluster, in one place.

1. Tiny-scale stack config (`stack_overlays()`, per workload, merged into the stack file before the render):
   a tiny local model and dataset on /shared instead of Llama-3-8B from the Hub, a few training steps, a
   short context, 2 nodes. The stack's own code still builds every object from it. Then the rendered objects at
   this machine's scale (`scale_objects`): one training process per pod instead of one per NeuronCore
   (Ray Train's num_workers, torchrun's --nproc-per-node and titan's processes_per_node). `load(stack)` does both.
2. The "cpu path" pod env (`cpu_path_env`), added to every container's env (it wins over the pod's own value):
   `TRN_BACKEND=cpu` (images/trn_workloads/accel.py, the one CPU/Neuron switch); S3 through the rehearsal's
   S3 stand-in (moto on loopback; `AWS_ENDPOINT_URL_S3` is botocore's service endpoint variable, boto/botocore
   docs "Service-specific endpoints") with static keys standing in for EKS Pod Identity; `HF_HUB_OFFLINE=1`
   (no Hub here); vLLM CPU settings (`VLLM_CPU_KVCACHE_SPACE` GiB of KV cache, usage stats off).
3. Bind addresses (`bind_substitutions`): where a component binds 0.0.0.0 in the cluster, the pod's own
   127.0.x.y instead: the value after `--host` in argv (vLLM), `TRN_SERVE_HOST` for our serve image
   (trn_workloads/serve/config.py: host default 0.0.0.0, TRN_SERVE_* env).
4. Image stand-ins for commands that have no CPU build (`IMAGE_COMMANDS`): the vLLM DLC's `vllm` is vllm-cpu
   run through `trn_workloads.llm_serve.vllm_cli` (which refuses anything but TRN_BACKEND=cpu).
5. Seeds of the shared volume (`seed_shared`): what the FSx data repository association would hold (the
   California-housing CSV, a text-to-SQL JSONL, a tiny Llama with its tokenizer, the Ray and titan corpora and
   tokenizers, titan's tokenized dataset), generated here.
6. Images whose base is not pinned (`image_config`: titan's Dockerfile over an empty base).
7. The CPU path of a RayJob's runtime env (`cpu_path_job`: the stack pins TRN_BACKEND=neuron there, and Ray's
   runtime env wins over the pod env), with Ray Train's controller poll period compressed; the Ray Train RayJobs'
   worker pods each hold one Ray Train worker (`scale_ray_train_pods`), as each trn1.32xlarge pod holds its 32.
8. Time, compressed TIME_SCALE times where waiting is the behaviour under test: the progress sidecar's poll
   (`compressed_time_argv`) and, in trnctl/rehearse/hangwatch.py, the hang rule's windows and the watchdog's
   cooldown, so a hang is noticed in seconds; Prometheus scrapes every second (trnctl/rehearse/prometheus.py).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import yaml

from trnctl import operators
from trnctl.operators import volcano

SEED_DIR = "rehearsal"  # under the PVC root: /shared/rehearsal/...
TINY_MODEL = f"/shared/{SEED_DIR}/tiny-llama"
SQL_DATA = f"/shared/{SEED_DIR}/sql-create-context.jsonl"
HOUSING_CSV = "/shared/datasets/california-housing.csv"

# ray-pretrain: the tiny Llama preset, a tokenizer and corpus seeded on the shared volume, a few steps with frequent
# checkpoints. The render still checks it against 64 Ray Train workers (2 pods x 32 NeuronCores).
RAY_TOKENIZER = f"/shared/{SEED_DIR}/ray-tokenizer"
RAY_CORPUS = f"/shared/{SEED_DIR}/ray-corpus.jsonl"
RAY_PRETRAIN_OVERLAY = {"ray-pretrain": {"ray": {
    "tokenizer": RAY_TOKENIZER, "dataInputs": [RAY_CORPUS],
    "run": {"model": "tiny", "seq_len": 32, "steps": 30, "global_batch_size": 64, "micro_batch_size": 1,
            "tensor_parallel_size": 1, "learning_rate": 0.003, "warmup_steps": 2, "checkpoint_interval": 10,
            "precompile_steps": 2, "log_interval": 1},
}}}
# What the rendered run config changes at tiny scale: two gloo processes (one per worker pod) instead of one per
# NeuronCore (64: the two CPU pods of this machine cannot hold them), a global batch of one micro-batch each.
RAY_RUN_SCALE = {"num_workers": 2, "global_batch_size": 2}
RAY_TRAIN_MODULE = "trn_workloads.ray_train.train"  # the entrypoint of the precompile and train RayJobs

# titan-pretrain: 2 nodes, TorchTitan's debug model, a few steps, a tokenizer and corpus on the shared volume, no
# TensorBoard Deployment.
TITAN_TOKENIZER = f"/shared/{SEED_DIR}/titan-tokenizer"
TITAN_CORPUS = f"/shared/{SEED_DIR}/titan-corpus.jsonl"
TITAN_OVERLAY = {"titan-pretrain": {"titan": {
    "nodes": 2, "tensorboard": False,
    "data": {"tokenizer": TITAN_TOKENIZER, "inputs": [TITAN_CORPUS], "workers": 1},
    "run": {"model_flavor": "debugmodel", "seq_len": 32, "local_batch_size": 2, "steps": 16, "lr": 0.003,
            "warmup_steps": 2, "tensor_parallel_size": 1, "fsdp_size": -1, "checkpoint_every_n_steps": 4,
            "log_every_n_steps": 1},
}}}
PROCESSES_PER_POD = 1

# nemo-pretrain: 2 nodes (launcher + 2 workers over ssh), the tiny preset (which the NxD stand-in trains for real
# from the YAML: images/trn_workloads/nemo/standin.py), a checkpoint every 10 steps (a killed rank loses at most that
# many) and steps enough for two interruptions and their teardown (0.05-0.15 s a step here; a stopped gang being torn
# down steps on for a second or two: tests/test_rehearse_nemo.py), a tokenizer and corpus seeded
# on the shared volume for its data-prep Job (the stack's Hub tokenizer and RedPajama sample are not here), no
# TensorBoard Deployment (the image's tensorboard is not in the rehearsal's environment).
NEMO_TOKENIZER = f"/shared/{SEED_DIR}/nemo-tokenizer"
NEMO_CORPUS = f"/shared/{SEED_DIR}/nemo-corpus.jsonl"
NEMO_OVERLAY = {"nemo-pretrain": {"nemo": {
    "tensorboard": False, "data": {"tokenizer": NEMO_TOKENIZER, "inputs": [NEMO_CORPUS], "workers": 1},
    "run": {"nodes": 2, "preset": "tiny", "steps": 200, "checkpoint_every_n_steps": 10, "precompile_steps": 2}}}}

STACK_OVERLAYS: dict[str, dict] = {
    "lora": {"run": {
        "model": {"base": TINY_MODEL},
        "data": {"source": SQL_DATA, "eval_records": 8},
        "train": {"seq_len": 128, "max_steps": 3, "gradient_accumulation_steps": 1, "logging_steps": 1,
                  "gradient_checkpointing": False},
        "eval": {"max_new_tokens": 8, "batch_size": 4},
    }},
    "llmServe": {"maxModelLen": 256, "contextBuckets": [256], "tokenGenBuckets": [256],
                 "tensorParallelSize": 1},
}


def stack_overlays() -> dict[str, dict]:
    """Overlay per workload name (the `trn-workloads:workload` of a stack), keyed by config section."""
    return {"lora-finetune": {"lora": STACK_OVERLAYS["lora"]}, "llm-serve": {"llmServe": STACK_OVERLAYS["llmServe"]},
            **RAY_PRETRAIN_OVERLAY, **TITAN_OVERLAY, **NEMO_OVERLAY}


def scale_objects(objects: list[dict]) -> list[dict]:
    """The rendered objects at this machine's scale (2 CPUs): one training process per pod."""
    return scale_processes(scale_ray_train_pods(scale_run_config(objects)))


def scale_ray_train_pods(objects: list[dict]) -> list[dict]:
    """The Ray Train RayJobs' worker pods holding exactly the Ray Train workers RAY_RUN_SCALE puts on each
    (num_workers / worker pods): each advertises that many CPU-path workers' CPUs (`num-cpus`), as a trn1.32xlarge
    pod's 32 NeuronCores hold exactly its 32 workers on Neuron. Otherwise one pod's 127 CPUs would hold the whole
    gang, and a lost worker pod would not hold the training back until KubeRay replaced it. The data RayJob keeps
    the CPUs of its pods' limits (its tasks use them)."""
    from trn_workloads.ray_train.train import CPU_RESOURCES_PER_WORKER
    out = []
    for obj in objects:
        spec = (obj.get("spec") or {}) if obj.get("kind") == "RayJob" else {}
        if RAY_TRAIN_MODULE in spec.get("entrypoint", "") and spec.get("rayClusterSpec"):
            obj = copy.deepcopy(obj)
            groups = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
            per_pod = RAY_RUN_SCALE["num_workers"] // sum(int(g["replicas"]) for g in groups)
            for group in groups:
                group.setdefault("rayStartParams", {})["num-cpus"] = str(per_pod * CPU_RESOURCES_PER_WORKER["CPU"])
        out.append(obj)
    return out


def load(stack: str, overlays: dict[str, dict] | None = None):
    """`stack` rendered with the rehearsal's overlay (stack_overlays() unless given) and scaled to this machine."""
    from trnctl.rehearse.stack import load as load_stack
    loaded = load_stack(stack, stack_overlays() if overlays is None else overlays)
    loaded.objects = scale_objects(loaded.objects)
    loaded.steps = [scale_objects(step) for step in loaded.steps]
    return loaded


def seed_corpus(shared_root: Path, claim: str, corpus_path: str, tokenizer_path: str, *, documents: int = 120,
                vocab_size: int = 300) -> list[str]:
    """A JSONL corpus and a BPE tokenizer trained on it, on the claim's volume (what the FSx data repository
    association would hold for a data step to read)."""
    from trn_workloads.dataprep import synthetic
    root = shared_root / claim
    corpus, tokenizer = root / corpus_path.removeprefix("/shared/"), root / tokenizer_path.removeprefix("/shared/")
    texts = list(synthetic.generate_documents(documents, seed=1, median_words=60))
    if not corpus.exists():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_jsonl(corpus, texts)
    if not (tokenizer / "tokenizer.json").exists():
        synthetic.train_bpe_tokenizer(texts, tokenizer, vocab_size=vocab_size)
    return [corpus_path, tokenizer_path]


def seed_ray_inputs(shared_root: Path, claim: str) -> list[str]:
    """The corpus and tokenizer the data RayJob reads."""
    return seed_corpus(shared_root, claim, RAY_CORPUS, RAY_TOKENIZER)


def scale_run_config(objects: list[dict]) -> list[dict]:
    """The objects with the Ray run config (the ConfigMap's run.json) at RAY_RUN_SCALE."""
    out = []
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and "run.json" in (obj.get("data") or {}):
            run = json.loads(obj["data"]["run.json"])
            if "num_workers" in run:
                obj = copy.deepcopy(obj)
                obj["data"]["run.json"] = json.dumps({**run, **RAY_RUN_SCALE})
        out.append(obj)
    return out


# Ray Train V2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), and a worker's
# ray.train.report waits for the previous report to be taken (a result queue of size 1): at log_interval 1 the
# tiny model's steps would run one per 2 s. Time compressed here, as the runner compresses probe periods; the env
# var reaches the controller from the driver's env (ENV_VARS_TO_PROPAGATE).
# source: ray-project/ray@ray-2.51.1 python/ray/train/v2/_internal/constants.py (HEALTH_CHECK_INTERVAL_S_ENV_VAR,
# ENV_VARS_TO_PROPAGATE), _internal/execution/controller/controller.py (_poll_workers),
# _internal/execution/worker_group/worker.py (result_queue=queue.Queue(maxsize=1))
RAY_TRAIN_COMPRESSED_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def cpu_path_job(job: dict) -> dict:
    """The RayJob with the overlay's CPU-path env over the env_vars its runtime env sets (and, for a Ray Train
    job, the controller's poll period compressed: RAY_TRAIN_COMPRESSED_ENV)."""
    raw = job["spec"].get("runtimeEnvYAML")
    if not raw:
        return job
    runtime = yaml.safe_load(raw) or {}
    env = runtime.get("env_vars") or {}
    cpu = cpu_path_env(None)
    extra = RAY_TRAIN_COMPRESSED_ENV if RAY_TRAIN_MODULE in job["spec"].get("entrypoint", "") else {}
    if not any(k in cpu for k in env) and not extra:
        return job
    job = copy.deepcopy(job)
    runtime["env_vars"] = {**{k: cpu.get(k, v) for k, v in env.items()}, **extra}
    job["spec"]["runtimeEnvYAML"] = yaml.safe_dump(runtime)
    return job


def scale_processes(objects: list[dict]) -> list[dict]:
    """The objects with one training process per pod: the Volcano Job's `--nproc-per-node` and the run config's
    processes_per_node (the trainer checks the world size against it)."""
    out = []
    for obj in objects:
        if operators.key_of(obj) in volcano.KINDS:
            obj = copy.deepcopy(obj)
            for task in obj["spec"]["tasks"]:
                for c in task["template"]["spec"]["containers"]:
                    c["command"] = [re.sub(r"^--nproc-per-node=\d+$", f"--nproc-per-node={PROCESSES_PER_POD}", a)
                                    for a in c.get("command") or []]
        elif obj.get("kind") == "ConfigMap" and "processes_per_node" in (obj.get("data") or {}).get("run.json", ""):
            obj = copy.deepcopy(obj)
            run = json.loads(obj["data"]["run.json"])
            obj["data"]["run.json"] = json.dumps({**run, "processes_per_node": PROCESSES_PER_POD})
        out.append(obj)
    return out


def seed_titan_inputs(shared_root: Path, claim: str, dataset_prefix: str) -> None:
    """What titan's data step leaves on FSx (a Megatron indexed corpus at dataset_prefix), written by the same
    data-prep code from a seeded corpus and tokenizer."""
    from trn_workloads.dataprep import synthetic
    from trn_workloads.dataprep.config import DATASET_SUFFIX, DataPrepConfig
    from trn_workloads.dataprep.pipeline import prepare
    root = shared_root / claim
    on_pvc = lambda path: root / path.removeprefix("/shared/")  # noqa: E731
    texts = list(synthetic.generate_documents(300, seed=3, median_words=60))
    if not (on_pvc(TITAN_TOKENIZER) / "tokenizer.json").exists():
        synthetic.train_bpe_tokenizer(texts, on_pvc(TITAN_TOKENIZER), vocab_size=512)
    corpus = on_pvc(TITAN_CORPUS)
    corpus.parent.mkdir(parents=True, exist_ok=True)
    synthetic.write_jsonl(corpus, texts)
    prepare(DataPrepConfig(tokenizer=str(on_pvc(TITAN_TOKENIZER)), inputs=(str(corpus),),
                           output_prefix=str(on_pvc(dataset_prefix.removesuffix(DATASET_SUFFIX))), workers=1))


def cpu_path_env(s3_endpoint: str | None) -> dict[str, str]:
    env = {"TRN_BACKEND": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if s3_endpoint:
        env.update({"AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_ACCESS_KEY_ID": "rehearsal",
                    "AWS_SECRET_ACCESS_KEY": "rehearsal"})
    return env


def bind_substitutions(image_name: str, argv: list[str], address: str) -> tuple[list[str], dict[str, str]]:
    """(argv, extra env) with the pod's address where the component would bind 0.0.0.0."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--host" and out[i + 1] in ("0.0.0.0", "::"):
            out[i + 1] = address
    out = [f"--host={address}" if a in ("--host=0.0.0.0", "--host=::") else a for a in out]
    env = {"TRN_SERVE_HOST": address} if image_name == "serve" else {}
    return out, env


TIME_SCALE = 100  # 20m of trainingHangAfter -> 12 s; the progress sidecar's 15 s poll -> 0.15 s


def compressed_time_argv(argv: list[str]) -> list[str]:
    """The progress sidecar (trn_workloads.progress) polls TIME_SCALE times as often: at its 15 s a compressed hang
    window (12 s) would see a working job as hung between two reads."""
    if "trn_workloads.progress" not in argv or any(a.startswith("--interval") for a in argv):
        return list(argv)
    from trn_workloads.progress import POLL_SECONDS
    return [*argv, "--interval", str(POLL_SECONDS / TIME_SCALE)]


# image repository name -> {command: python module run in the image's stand-in environment}
IMAGE_COMMANDS = {"pytorch-inference-vllm-neuronx": {"vllm": "trn_workloads.llm_serve.vllm_cli"}}


def seed_shared(shared_root: Path, claim: str, workload: str, objects: list[dict] | None = None) -> list[str]:
    """Write what the workload expects on the shared volume before it runs. Returns the paths written."""
    root = shared_root / claim
    written = []
    if workload == "compile":
        from trn_workloads.compile.housing_mlp import write_synthetic_csv
        path = root / HOUSING_CSV.removeprefix("/shared/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            write_synthetic_csv(path, 400)
        written.append(HOUSING_CSV)
    if workload == "nemo-pretrain":
        written += seed_corpus(shared_root, claim, NEMO_CORPUS, NEMO_TOKENIZER)
    if workload == "ray-pretrain":
        written += seed_ray_inputs(shared_root, claim)
    if workload == "titan-pretrain" and objects is not None:
        prefix = _run_config(objects).get("dataset_prefix")
        if prefix:
            seed_titan_inputs(shared_root, claim, prefix)
            written += [TITAN_TOKENIZER, TITAN_CORPUS, prefix]
    if workload in ("lora-finetune",):
        from trn_workloads.finetune.synthetic import save_tiny_base_model, synthetic_sql_records
        records = synthetic_sql_records(48, seed=1)
        data = root / SQL_DATA.removeprefix("/shared/")
        data.parent.mkdir(parents=True, exist_ok=True)
        if not data.exists():
            data.write_text("".join(json.dumps(r) + "\n" for r in records))
        model = root / TINY_MODEL.removeprefix("/shared/")
        if not (model / "config.json").exists():
            # 8 heads: the stack's tensor_parallel_size (8) must divide them (finetune/config.py); head_dim 32:
            # vllm-cpu's attention kernels need 32 or more (trn_workloads/llm_serve/cpu_server.py)
            save_tiny_base_model(model, records, hidden_size=256, heads=8, max_positions=1024)
        written += [SQL_DATA, TINY_MODEL]
    return written


def _run_config(objects: list[dict]) -> dict:
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and "run.json" in (obj.get("data") or {}):
            return json.loads(obj["data"]["run.json"])
    return {}


def titan_image_config():
    """images/titan/Dockerfile over an empty base: its base (the TorchNeuron training DLC) is not pinned
    (images/neuron-sdk.json tracks.native base_images.training is null), so trnctl.operators.images.image_config
    cannot build it; what the pods need comes from the Dockerfile itself (USER 1000, WORKDIR /tmp, PYTHONPATH, the
    code COPY) and the pods' own command (torchrun)."""
    from trnctl.operators import images
    path = images.IMAGES_DIR / "titan" / "Dockerfile"
    args = {**images.build_args(), "BASE_IMAGE": "unpinned-torchneuron-training-dlc"}
    return images.parse_dockerfile(path.read_text(), images.ImageConfig(source="unpinned base"), args,
                                   source=str(path.relative_to(images.REPO_ROOT)))


def image_config(ref: str):
    """The image's config as trnctl.operators.images builds it; for an image whose base is unpinned (titan), its
    own Dockerfile over an empty base."""
    from trnctl.operators import images
    from trnctl.rehearse.sandbox import image_name
    try:
        return images.image_config(ref)
    except (KeyError, AttributeError):
        if image_name(ref) != "titan":
            raise
        return titan_image_config()
