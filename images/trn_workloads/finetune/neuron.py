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

import torch

from trn_workloads.finetune.config import FinetuneConfig, load_config
from trn_workloads.finetune.evaluate import Generators, generate_greedy
from trn_workloads.finetune.model_io import peft_lora_config
from trn_workloads.finetune.train import (ADAPTER_DIR, LOSSES_FILE, TRAINER_DIR, TrainResult, record_losses,
                                          trainer_arguments, trainer_inputs)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # written by trn_workloads.finetune.run before training starts
DATASET_DIR = "train_dataset"
TOKENIZER_DIR = "tokenizer"
# Compiler flags for decoder training (what optimum-neuron's Llama examples use) and a cap on
# glibc malloc arenas, which otherwise grow host memory per worker thread.
WORKER_ENV_DEFAULTS = {
    "NEURON_CC_FLAGS": "--model-type transformer --retry_failed_compilation",
    "NEURON_FUSE_SOFTMAX": "1",
    "MALLOC_ARENA_MAX": "64",
}


def train_adapter_on_neuron(cfg: FinetuneConfig, work_dir: Path, train_dataset, tokenizer) -> TrainResult:
    """Launch the torchrun workers, wait, consolidate the adapter shards into work_dir/adapter."""
    train_dataset.save_to_disk(str(work_dir / DATASET_DIR))
    tokenizer.save_pretrained(str(work_dir / TOKENIZER_DIR))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={cfg.train.processes_per_node}",
               "-m", "trn_workloads.finetune.neuron", str(work_dir)]
    env = {**WORKER_ENV_DEFAULTS, **os.environ}
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


def _worker_main(work_dir: Path) -> None:
    """One torchrun worker: optimum-neuron's SFT trainer on the dataset the launcher packed."""
    from datasets import load_from_disk
    from optimum.neuron import NeuronSFTConfig, NeuronSFTTrainer
    from optimum.neuron.models.training import NeuronModelForCausalLM
    from transformers import AutoTokenizer

    cfg = load_config(work_dir / CONFIG_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(work_dir / TOKENIZER_DIR))
    train_dataset = load_from_disk(str(work_dir / DATASET_DIR))
    args = NeuronSFTConfig(
        **trainer_arguments(cfg, work_dir / TRAINER_DIR),
        bf16=cfg.train.bf16,
        tensor_parallel_size=cfg.train.tensor_parallel_size,
    )
    model = NeuronModelForCausalLM.from_pretrained(
        cfg.model.base,
        args.trn_config,  # tensor-parallel layout and Neuron modeling options, derived from args
        revision=cfg.model.revision,
        token=os.environ.get(cfg.model.hf_token_env),
        dtype=torch.bfloat16 if cfg.train.bf16 else torch.float32,
    )
    trainer = NeuronSFTTrainer(model=model, args=args, **trainer_inputs(cfg, train_dataset, tokenizer))
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

    def compiled_generator(model_dir: str):
        neuron_config = NeuronModelForCausalLM.get_neuron_config(
            model_name_or_path=model_dir, batch_size=e.batch_size, sequence_length=sequence_length,
            tensor_parallel_size=cfg.train.tensor_parallel_size)
        model = NeuronModelForCausalLM.export(model_id=model_dir, neuron_config=neuron_config, load_weights=True)
        return lambda prompts: generate_greedy(model, tokenizer, prompts, e.max_new_tokens, e.batch_size)

    base = compiled_generator(cfg.model.base) if e.compare_base else None
    return Generators(finetuned=compiled_generator(str(merged_dir)), base=base)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _worker_main(Path(sys.argv[1]))
