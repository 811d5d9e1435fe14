"""Load the base model/tokenizer, build the LoRA config, merge adapters: the same on both paths."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from trn_workloads.finetune.config import ConfigError, FinetuneConfig, LoraSettings, ModelConfig

log = logging.getLogger(__name__)


def load_tokenizer(model: ModelConfig, token: str | None):
    """The base model's tokenizer; EOS doubles as pad when the model has none (Llama 3 base)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.base, revision=model.revision, token=token)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model.base: the tokenizer of {model.base!r} has no eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_fits(cfg: FinetuneConfig, token: str | None) -> None:
    """Fail before training when seq_len or the tensor-parallel degree cannot work for this model."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(cfg.model.base, revision=cfg.model.revision, token=token)
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if max_positions is not None and cfg.train.seq_len > max_positions:
        raise ConfigError(f"train.seq_len: {cfg.train.seq_len} exceeds the model's max_position_embeddings "
                         f"({max_positions})")
    heads = getattr(model_config, "num_attention_heads", None)
    tp = cfg.train.tensor_parallel_size
    if heads is not None and heads % tp != 0:
        raise ConfigError(f"train.tensor_parallel_size: {tp} must divide the model's num_attention_heads ({heads})")


def peft_lora_config(settings: LoraSettings, base_model: str | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_rslora=settings.use_rslora,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )


def load_base_model(model: ModelConfig, token: str | None, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model.base, revision=model.revision, token=token, dtype=dtype)


def load_adapter_model(model: ModelConfig, adapter_dir: Path, token: str | None, dtype: torch.dtype):
    """Base weights with the trained adapter attached (adapter can be disabled for base-model eval)."""
    from peft import PeftModel

    base = load_base_model(model, token, dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def merge_adapter(model: ModelConfig, adapter_dir: Path, out_dir: Path, tokenizer, token: str | None,
                  dtype: torch.dtype) -> Path:
    """Fold the adapter into the base weights (merge_and_unload) and save plain safetensors."""
    merged = load_adapter_model(model, adapter_dir, token, dtype).merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    log.info("merged adapter into base weights: %s", out_dir)
    return out_dir
