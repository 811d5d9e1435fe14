"""Train the LoRA adapter: trl's SFTTrainer on CPU, optimum-neuron's NeuronSFTTrainer on Trainium.

Both trainers get the same pre-tokenized (and, by default, pre-packed) dataset and our
collator, so the data a model sees does not depend on the path. `train_adapter` is the one
place that picks the path.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from trn_workloads import accel
from trn_workloads.finetune.config import FinetuneConfig
from trn_workloads.finetune.model_io import load_base_model, peft_lora_config
from trn_workloads.finetune.packing import PackedBlockCollator, padding_collator

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
TRAINER_DIR = "trainer"  # trainer scratch (sharded checkpoints on Neuron); removed after consolidation
LOSSES_FILE = "train_losses.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    losses: list[float]  # training loss at every logging step, in order


def trainer_arguments(cfg: FinetuneConfig, output_dir: Path) -> dict:
    """Keyword arguments shared by trl's SFTConfig and optimum-neuron's NeuronSFTConfig."""
    t = cfg.train
    return dict(
        output_dir=str(output_dir),
        max_length=t.seq_len,
        packing=False,  # the dataset is already packed (or deliberately unpacked) by us
        dataset_kwargs={"skip_prepare_dataset": True},  # already tokenized with our labels
        remove_unused_columns=False,  # keep position_ids: they carry the example boundaries
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_steps,
        logging_steps=t.logging_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        save_strategy="no",  # one save at the end; intermediate checkpoints would only cost disk
        report_to=[],
    )


def data_collator(cfg: FinetuneConfig, tokenizer, *, mask_dtype: torch.dtype | None = None):
    """Packed blocks (with an explicit per-example mask of `mask_dtype` when given: the Neuron
    path) or padded batches."""
    return PackedBlockCollator(mask_dtype) if cfg.train.packing else padding_collator(tokenizer)


def trainer_inputs(cfg: FinetuneConfig, train_dataset, tokenizer, *, mask_dtype: torch.dtype | None = None) -> dict:
    """Keyword arguments shared by trl's SFTTrainer and optimum-neuron's NeuronSFTTrainer,
    besides the model and the arguments object."""
    return dict(train_dataset=train_dataset, data_collator=data_collator(cfg, tokenizer, mask_dtype=mask_dtype),
                processing_class=tokenizer, peft_config=peft_lora_config(cfg.lora, cfg.model.base))


def record_losses(trainer, work_dir: Path) -> list[float]:
    """The training loss of every logging step, written to work_dir/LOSSES_FILE and returned."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    (work_dir / LOSSES_FILE).write_text(json.dumps(losses))
    return losses


def train_adapter(cfg: FinetuneConfig, work_dir: Path, train_dataset, tokenizer, token: str | None) -> TrainResult:
    """Train and leave adapter_model.safetensors + adapter_config.json in `work_dir/adapter`."""
    if accel.is_neuron():
        from trn_workloads.finetune import neuron

        return neuron.train_adapter_on_neuron(cfg, work_dir, train_dataset, tokenizer)
    return _train_adapter_on_cpu(cfg, work_dir, train_dataset, tokenizer, token)


def _train_adapter_on_cpu(cfg: FinetuneConfig, work_dir: Path, train_dataset, tokenizer,
                          token: str | None) -> TrainResult:
    from trl import SFTConfig, SFTTrainer

    if cfg.train.tensor_parallel_size > 1:
        log.info("CPU path: one process, train.tensor_parallel_size=%d applies on Neuron only",
                 cfg.train.tensor_parallel_size)
    model = load_base_model(cfg.model, token, dtype=torch.float32)
    # No KV cache in training; it would also stop transformers from deriving the
    # per-example attention mask from position_ids.
    model.config.use_cache = False
    args = SFTConfig(**trainer_arguments(cfg, work_dir / TRAINER_DIR), use_cpu=True, bf16=False,
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, **trainer_inputs(cfg, train_dataset, tokenizer))
    trainer.train()
    adapter_dir = work_dir / ADAPTER_DIR
    trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(adapter_dir))
    return TrainResult(adapter_dir, record_losses(trainer, work_dir))
