"""The Trainium path: optimum-neuron training across NeuronCores, consolidation, compiled eval.

Imported only when `accel.is_neuron()`; optimum-neuron needs torch-neuronx/torch_xla and is
installed only in the finetune image.

Training runs as `torchrun --nproc_per_node <train.processes_per_node>` workers (one per
NeuronCore, `train.tensor_parallel_size` cores per model replica), each re-entering this
module with the run's work dir; the launching process waits, then consolidates the
tensor-parallel adapter shards into one adapter_model.safetensors.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import torch

from trn_workloads.finetune.config import FinetuneConfig, load_config
from trn_workloads.finetune.evaluate import Generators, generate_greedy
from trn_workloads.finetune.model_io import peft_lora_config
from trn_workloads.finetune.train import (ADAPTER_DIR, LOSSES_FILE, TRAINER_DIR, TrainResult, record_losses,
                                          trainer_arguments, trainer_inputs)
from trn_workloads.neuron_flags import merge_compiler_flags

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # written by trn_workloads.finetune.run before training starts
DATASET_DIR = "train_dataset"
TOKENIZER_DIR = "tokenizer"
# Compiler flags for decoder training (what optimum-neuron's Llama examples use), added to the
# pod's NEURON_CC_FLAGS (its --cache_dir) as the Ray Train workers do: trn_workloads.neuron_flags.
WORKER_COMPILER_FLAGS = ("--model-type=transformer", "--retry_failed_compilation")
# Defaults the pod may override; MALLOC_ARENA_MAX caps glibc malloc arenas, which otherwise grow
# host memory per worker thread.
WORKER_ENV_DEFAULTS = {
    "NEURON_FUSE_SOFTMAX": "1",
    "MALLOC_ARENA_MAX": "64",
}


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The torchrun workers' environment: the pod's, the defaults where it sets nothing, and
    NEURON_CC_FLAGS = the pod's flags plus the decoder-training flags it does not set."""
    return {**WORKER_ENV_DEFAULTS, **environ,
            "NEURON_CC_FLAGS": merge_compiler_flags(environ.get("NEURON_CC_FLAGS"), WORKER_COMPILER_FLAGS)}


def train_adapter_on_neuron(cfg: FinetuneConfig, work_dir: Path, train_dataset, tokenizer) -> TrainResult:
    """Launch the torchrun workers, wait, consolidate the adapter shards into work_dir/adapter."""
    train_dataset.save_to_disk(str(work_dir / DATASET_DIR))
    tokenizer.save_pretrained(str(work_dir / TOKENIZER_DIR))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={cfg.train.processes_per_node}",
               "-m", "trn_workloads.finetune.neuron", str(work_dir)]
    env = worker_env(os.environ)
    log.info("launching %d Neuron workers (tensor parallel %d, data parallel %d)", cfg.train.processes_per_node,
             cfg.train.tensor_parallel_size, cfg.train.data_parallel_size)
    subprocess.run(command, env=env, check=True)

    adapter_dir = work_dir / ADAPTER_DIR
    consolidate_adapter(work_dir / TRAINER_DIR, adapter_dir)
    peft_lora_config(cfg.lora, cfg.model.base).save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    shutil.rmtree(work_dir / DATASET_DIR)
    losses = json.loads((work_dir / LOSSES_FILE).read_text())
    return TrainResult(adapter_dir, losses)


def consolidate_adapter(trainer_dir: Path, adapter_dir: Path) -> None:
    """Tensor-parallel adapter shards -> one adapter_model.safetensors (optimum-neuron's utility)."""
    from optimum.neuron.models.training.checkpointing import (
        consolidate_model_parallel_checkpoints_to_unified_checkpoint,
    )

    consolidate_model_parallel_checkpoints_to_unified_checkpoint(trainer_dir, adapter_dir, save_format="safetensors")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"consolidation of {trainer_dir} wrote no adapter_model.safetensors to {adapter_dir}")


def model_dtype(cfg: FinetuneConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.train.bf16 else torch.float32


def neuron_trainer_options(cfg: FinetuneConfig) -> dict:
    """NeuronSFTConfig settings besides the ones shared with the CPU trainer (trainer_arguments)."""
    return dict(
        bf16=cfg.train.bf16,
        tensor_parallel_size=cfg.train.tensor_parallel_size,
        # Use the batch's attention_mask (per-example for packed blocks, padding otherwise) instead of
        # a causal mask recomputed inside the model, which would let packed examples attend to each
        # other (optimum-neuron v0.4.5 optimum/neuron/trainers/training_args.py, recompute_causal_mask).
        recompute_causal_mask=False,
    )


def _worker_main(work_dir: Path) -> None:
    """One torchrun worker: optimum-neuron's SFT trainer on the dataset the launcher packed."""
    from datasets import load_from_disk
    from optimum.neuron import NeuronSFTConfig, NeuronSFTTrainer
    from optimum.neuron.models.training import NeuronModelForCausalLM
    from transformers import AutoTokenizer

    cfg = load_config(work_dir / CONFIG_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(work_dir / TOKENIZER_DIR))
    train_dataset = load_from_disk(str(work_dir / DATASET_DIR))
    args = NeuronSFTConfig(**trainer_arguments(cfg, work_dir / TRAINER_DIR), **neuron_trainer_options(cfg))
    model = NeuronModelForCausalLM.from_pretrained(
        cfg.model.base,
        args.trn_config,  # tensor-parallel layout and Neuron modeling options, derived from args
        revision=cfg.model.revision,
        token=os.environ.get(cfg.model.hf_token_env),
        dtype=model_dtype(cfg),
        # Eager attention adds the explicit per-example mask; optimum-neuron's flash-attention
        # kernel is causal only and would ignore it (finetune/packing.py).
        attn_implementation="eager",
    )
    trainer = NeuronSFTTrainer(model=model, args=args,
                               **trainer_inputs(cfg, train_dataset, tokenizer, mask_dtype=model_dtype(cfg)))
    trainer.train()
    trainer.save_model(str(work_dir / TRAINER_DIR))  # sharded per tensor-parallel rank
    if int(os.environ.get("RANK", "0")) == 0:
        record_losses(trainer, work_dir)


def neuron_generators(cfg: FinetuneConfig, adapter_dir: Path, merged_dir: Path | None, tokenizer,
                      token: str | None) -> Generators:
    """Compile the finetuned (merged) model, and the base model if compared, for Neuron inference."""
    from optimum.neuron import NeuronModelForCausalLM

    from trn_workloads.finetune.model_io import merge_adapter

    if merged_dir is None:  # output.merge is false: merge into scratch space just for evaluation
        merged_dir = merge_adapter(cfg.model, adapter_dir, adapter_dir.parent / "eval_merged", tokenizer, token,
                                   dtype=torch.bfloat16)
    e = cfg.eval
    # Prompt (at most seq_len) plus the generated tokens, rounded up to whole 256-token buckets.
    sequence_length = -(-(cfg.train.seq_len + e.max_new_tokens) // 256) * 256

    def compiled_generator(model_id: str, revision: str | None):
        # Both calls take the hub revision and token (optimum-neuron v0.4.5,
        # optimum/neuron/models/inference/modeling_utils.py: get_neuron_config, export): without them a
        # gated base model fails to download and an unpinned one may differ from the one trained on.
        neuron_config = NeuronModelForCausalLM.get_neuron_config(
            model_name_or_path=model_id, token=token, revision=revision, batch_size=e.batch_size,
            sequence_length=sequence_length, tensor_parallel_size=cfg.train.tensor_parallel_size)
        model = NeuronModelForCausalLM.export(model_id=model_id, neuron_config=neuron_config, token=token,
                                              revision=revision, load_weights=True)
        return lambda prompts: generate_greedy(model, tokenizer, prompts, e.max_new_tokens, e.batch_size)

    base = compiled_generator(cfg.model.base, cfg.model.revision) if e.compare_base else None
    # The merged model is a local directory: no hub revision applies to it.
    return Generators(finetuned=compiled_generator(str(merged_dir), None), base=base)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _worker_main(Path(sys.argv[1]))
