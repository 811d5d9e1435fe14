"""The NxD Training config of a run: a pure function from RunConfig to the YAML tree that
NxD Training's `training_orchestrator.py` loads (`--config-path/--config-name`), and the
atomic writer the launcher uses.

NxD Training (package `neuronx-distributed-training`, 1.6.0 in Neuron SDK 2.26.1) is the
NeMo-based successor of neuronx-nemo-megatron; its Megatron-style Llama reads the same
Megatron `.bin/.idx` data through `data.data_prefix`. The keys below are its documented
ones (NxD Training 1.6.0, the commit `images/nemo/Dockerfile` pins):
  https://github.com/aws-neuron/neuronx-distributed-training/blob/9169aa03f39efd4eb02da63891a7ed98defb1714/docs/general/config_overview.rst
  https://github.com/aws-neuron/neuronx-distributed-training/blob/9169aa03f39efd4eb02da63891a7ed98defb1714/examples/conf/megatron_llama_7B_config.yaml
  https://github.com/aws-neuron/neuronx-distributed-training/blob/9169aa03f39efd4eb02da63891a7ed98defb1714/docs/developer_guides/migration_nnm_nxdt.rst
The whole tree is generated (no Hydra overrides on the command line), so the file written
to `<run_dir>/nxdt-config/<mode>.yaml` is the complete record of what ran.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import yaml

from trn_workloads.nemo.config import RunConfig

MODES = ("precompile", "train")
EXPERIMENT_NAME = "megatron_llama"
# Besides --cache_dir (set in the environment, which neuron_parallel_compile reads before the
# orchestrator starts), these are the compiler flags. The orchestrator appends them to
# NEURON_CC_FLAGS, then the flag of the precision type (--enable-mixed-precision-accumulation,
# or --auto-cast none for fp32). llm-training is the LLM distribution strategy that replaced
# neuronx-nemo-megatron's --distribution-strategy=nemo.
COMPILER_FLAGS = "--model-type transformer --distribution-strategy=llm-training"

# Top-level settings the orchestrator also exports as environment variables (each only
# where unset): name in the YAML -> (environment variable, value). build_env() exports the
# same values so that the environment --dry-run prints is the one that runs.
RUNTIME_SETTINGS = {
    "aync_exec_max_inflight_requests": ("NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS", 5),  # sic: NxDT's key
    "bucket_size_collectives": ("BUCKET_CAP_MB", 1024),
    "neuron_rt_exec_timeout": ("NEURON_RT_EXEC_TIMEOUT", 100),
}

# precision.type -> the XLA / runtime environment NxD Training's orchestrator sets for it
# (examples/training_orchestrator.py, process_config; config_overview.rst, "Precision"):
# mixed_precision keeps FP32 master weights and gradients (ZeRO-1) and downcasts
# compute to BF16; bf16SR runs everything in BF16 with stochastic rounding.
PRECISION_ENV = {
    "mixed_precision": {"XLA_USE_BF16": "0", "XLA_DOWNCAST_BF16": "1", "NEURON_RT_STOCHASTIC_ROUNDING_EN": "0"},
    "bf16SR": {"XLA_USE_BF16": "1", "XLA_DOWNCAST_BF16": "0", "NEURON_RT_STOCHASTIC_ROUNDING_EN": "1"},
    "fp32": {"XLA_USE_BF16": "0", "XLA_DOWNCAST_BF16": "0", "NEURON_RT_STOCHASTIC_ROUNDING_EN": "0"},
}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def config_name(mode: str) -> str:
    """Hydra's --config-name: the file <cfg.nxdt_config_dir>/<mode>.yaml."""
    check_mode(mode)
    return mode


def config_path(cfg: RunConfig, mode: str) -> Path:
    return Path(cfg.nxdt_config_dir) / f"{config_name(mode)}.yaml"


def nxdt_config(cfg: RunConfig, mode: str) -> dict[str, Any]:
    """The NxD Training config tree for `mode`.

    precompile and train differ only in steps, log dir and the checkpoint/TensorBoard/resume
    switches: model, parallelism, batch and sequence must match so that the graphs
    neuron_parallel_compile puts in the cache are the ones training looks up.
    """
    check_mode(mode)
    model = cfg.model
    training = mode == "train"
    steps = cfg.steps if training else cfg.precompile_steps
    return {
        "name": EXPERIMENT_NAME,
        "model_source": "megatron",  # NxD Training's Megatron GPT/Llama, not the HF Llama
        "seed": cfg.seed,
        "trainer": {
            "devices": cfg.cores_per_node,  # per node: one torchrun process per NeuronCore
            "num_nodes": cfg.num_nodes,
            "max_epochs": -1,  # max_steps decides
            "max_steps": steps,
            "log_every_n_steps": 1,
            "val_check_interval": steps,  # validate once, at the end
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "gradient_clip_val": 1.0,
        },
        "exp_manager": {
            "log_local_rank_0_only": True,  # fewer files on the shared file system
            # TensorBoard events and checkpoints/ land here; the TensorBoard pod reads run_dir.
            "explicit_log_dir": cfg.run_dir if training else f"{cfg.run_dir}/precompile",
            "exp_dir": None,
            "name": EXPERIMENT_NAME,
            "create_tensorboard_logger": training,
            "create_checkpoint_callback": training,
            # Resume from the newest checkpoint under <run_dir>/checkpoints; a first run starts fresh.
            "resume_if_exists": training,
            "resume_ignore_no_checkpoint": True,
            "resume_from_checkpoint": None,
            "checkpoint_callback_params": {
                "monitor": "step",
                "mode": "max",
                "save_top_k": cfg.keep_checkpoints,  # the newest N (by step) are kept
                "save_last": False,
                "every_n_train_steps": cfg.checkpoint_every_n_steps,
                # consumed_samples in the name is how a resumed run finds its place in the data.
                "filename": f"{EXPERIMENT_NAME}--{{step}}-{{consumed_samples}}",
                "model_parallel_size": cfg.tp * cfg.pp,
                "use_master_weights_in_ckpt": False,
            },
            "log_parameter_norm": True,
            "log_gradient_norm": True,
            "save_xser": True,  # torch-xla serialization: much faster save/load of sharded checkpoints
            "load_xser": True,
            "async_checkpointing": False,
        },
        "distributed_strategy": {
            "tensor_model_parallel_size": cfg.tp,
            "pipeline_model_parallel_size": cfg.pp,
            "virtual_pipeline_model_parallel_size": 1,
            "zero1": True,  # optimizer state sharded over data-parallel ranks (mixed_precision needs it)
            "sequence_parallel": True,
        },
        "data": {
            "micro_batch_size": cfg.micro_batch,
            "global_batch_size": cfg.global_batch,  # gradient accumulation follows from these and DP
            "data_prefix": [1.0, cfg.dataset_prefix],
            "data_impl": "mmap",
            "splits_string": "980,10,10",
            "seq_length": cfg.seq_len,
            "skip_warmup": True,
            "num_workers": 1,
            "dataloader_type": "single",
            # Megatron's sample-index .npy files, built by rank 0 on first use.
            "index_mapping_dir": f"{cfg.run_dir}/index_mapping",
            "reset_position_ids": False,
            "reset_attention_mask": False,
            "eod_mask_loss": False,
            "validation_drop_last": True,
            "no_seqlen_plus_one_input_tokens": False,
            "pad_samples_to_global_batch_size": False,
            "tokenizer": {
                # The directory `trn_workloads.dataprep --save-tokenizer` wrote: the tokenizer
                # that produced the .bin ids (vocab size and end-of-document id come from it).
                "library": "huggingface",
                "type": cfg.tokenizer,
                "model": None,
                "vocab_file": None,
                "merge_file": None,
                "delimiter": None,
                "sentencepiece_legacy": False,
            },
        },
        "model": {
            "encoder_seq_length": cfg.seq_len,
            "max_position_embeddings": cfg.seq_len,
            "num_layers": model.num_layers,
            "hidden_size": model.hidden_size,
            "ffn_hidden_size": model.ffn_hidden_size,
            "num_attention_heads": model.num_attention_heads,
            "num_kv_heads": model.num_kv_heads,
            "init_method_std": model.init_method_std,
            "use_scaled_init_method": True,
            "hidden_dropout": 0,
            "attention_dropout": 0,
            "ffn_dropout": 0,
            "kv_channels": None,  # hidden_size / num_attention_heads
            "apply_query_key_layer_scaling": True,
            # Llama: RMSNorm, RoPE, SwiGLU, no biases, untied embeddings.
            "normalization": "rmsnorm",
            "layernorm_epsilon": model.layernorm_epsilon,
            "do_layer_norm_weight_decay": False,
            "make_vocab_size_divisible_by": 8,
            "persist_layer_norm": True,
            "share_embeddings_and_output_weights": False,
            "position_embedding_type": "rope",
            "rotary_percentage": 1,
            "activation": "swiglu",
            "transformer_block_type": "pre_ln",
            "has_bias": False,
            "use_cpu_initialization": True,
            # Recompute attention in the backward pass: sequence 4096 does not fit otherwise.
            "activations_checkpoint_granularity": "selective",
            "activations_checkpoint_recompute": ["CoreAttention"],
            "fusions": {"softmax": True, "flash_attention": False},
            "optim": {
                "name": "adamw",
                "lr": cfg.learning_rate,
                "weight_decay": 0.1,
                "capturable": True,
                "betas": [0.9, 0.95],
                "sched": {
                    "name": "CosineAnnealing",  # decays to min_lr at trainer.max_steps
                    "warmup_steps": cfg.warmup,
                    "constant_steps": 0,
                    "min_lr": cfg.min_learning_rate,
                },
            },
        },
        "precision": {"type": cfg.precision},
        "compiler_flags": COMPILER_FLAGS,
        "compiler_cache_url": cfg.compile_cache,
        **{name: value for name, (_, value) in RUNTIME_SETTINGS.items()},
        "neuron_experimental_compress_rg": False,
    }


def config_yaml(cfg: RunConfig, mode: str) -> str:
    return yaml.safe_dump(nxdt_config(cfg, mode), sort_keys=False, default_flow_style=False)


def write_nxdt_config(cfg: RunConfig, mode: str) -> Path:
    """Write <mode>.yaml under cfg.nxdt_config_dir atomically and return its path.

    Every worker node writes the same bytes before it starts torchrun (no node waits for
    another); each writes a temporary file of its own and renames it into place, so a
    reader never sees a partial file.
    """
    path = config_path(cfg, mode)
    text = config_yaml(cfg, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    # host, process and thread: writers in one process (the CPU stand-in's ranks) must not share a name
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
