"""The rehearsal overlay: everything a rehearsal changes relative to the cluster, in one place.

1. Tiny-scale stack config (`STACK_OVERLAYS`, per workload, merged into the stack file before the render):
   a tiny local model and dataset on /shared instead of Llama-3-8B from the Hub, a few training steps, a
   short context. The stack's own code still builds every object from it.
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
   California-housing CSV, a text-to-SQL JSONL, a tiny Llama with its tokenizer), generated here.
"""
from __future__ import annotations

import json
from pathlib import Path

SEED_DIR = "rehearsal"  # under the PVC root: /shared/rehearsal/...
TINY_MODEL = f"/shared/{SEED_DIR}/tiny-llama"
SQL_DATA = f"/shared/{SEED_DIR}/sql-create-context.jsonl"
HOUSING_CSV = "/shared/datasets/california-housing.csv"

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
    return {"lora-finetune": {"lora": STACK_OVERLAYS["lora"]}, "llm-serve": {"llmServe": STACK_OVERLAYS["llmServe"]}}


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


# image repository name -> {command: python module run in the image's stand-in environment}
IMAGE_COMMANDS = {"pytorch-inference-vllm-neuronx": {"vllm": "trn_workloads.llm_serve.vllm_cli"}}


def seed_shared(shared_root: Path, claim: str, workload: str) -> list[str]:
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
