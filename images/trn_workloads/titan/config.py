"""The TorchTitan run config: what the stack writes to run.json and the trainer reads back.

Parallelism is checked here, once, for the stack (before any resource) and for the trainer:
`tensor_parallel_size` must divide the processes of one node (TP stays inside a node, on
NeuronLink), FSDP takes the rest of the world, and nodes stay within the pool's limit.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from trn_workloads.typed_config import ConfigError, build

__all__ = ["ConfigError", "RunConfig", "config_from_dict", "load"]

# TorchTitan's Llama 3 flavors (torchtitan 0.3.0 torchtitan/models/llama3/__init__.py
# `llama3_configs`); vocabulary of every flavor but debugmodel: the Llama 3 tokenizer's 128256.
FLAVOR_VOCAB = {"debugmodel": 2048, "1B": 128256, "3B": 128256, "8B": 128256, "70B": 128256, "405B": 128256}


@dataclass(frozen=True)
class RunConfig:
    dataset_prefix: str  # <prefix>_text_document of the data-prep output (.bin/.idx)
    run_dir: str  # checkpoints/ and tensorboard/ go here
    nodes: int = 1
    processes_per_node: int = 1  # one per logical NeuronCore of the node at its LNC setting
    model_flavor: str = "8B"
    seq_len: int = 8192
    local_batch_size: int = 1  # sequences per process per step
    steps: int = 1000
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    tensor_parallel_size: int = 1
    fsdp_size: int = -1  # -1: every process not used by TP
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 10
    # Eager by default: TorchNeuron recommends torch.compile for TorchTitan with SimpleFSDP, and this trainer
    # shards with FSDP2 (Neuron docs torch/reference/best-practices-pytorch-neuron.html). True compiles
    # TorchTitan's per-block regions with backend="neuron" (Neuron path only; the CPU run stays eager).
    compile: bool = False
    compile_cache: str | None = None  # TorchNeuron's NEFF cache (TORCH_NEURONX_NEFF_CACHE_DIR) on FSx
    peak_tflops_per_process: float | None = None  # for the MFU estimate (bf16 dense, per NeuronCore)
    metrics_port: int | None = None  # rank 0 serves trn_workloads.training_metrics here (None: off)
    metrics_addr: str = "0.0.0.0"

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def fsdp(self) -> int:
        return self.world_size // self.tensor_parallel_size if self.fsdp_size == -1 else self.fsdp_size

    @property
    def vocab_size(self) -> int:
        return FLAVOR_VOCAB[self.model_flavor]

    def validate(self, *, max_nodes: int | None = None, key: str = "run") -> None:
        def require(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{key}.{name}: {message}")

        require(self.model_flavor in FLAVOR_VOCAB, "model_flavor",
                f"{self.model_flavor!r} is not a TorchTitan Llama 3 flavor; allowed values: {', '.join(FLAVOR_VOCAB)}")
        for name in ("nodes", "processes_per_node", "seq_len", "local_batch_size", "steps", "tensor_parallel_size",
                     "checkpoint_every_n_steps", "log_every_n_steps"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        if max_nodes is not None:
            require(self.nodes <= max_nodes, "nodes", f"{self.nodes} nodes exceed the pool's limit of {max_nodes}")
        require(self.processes_per_node % self.tensor_parallel_size == 0, "tensor_parallel_size",
                f"{self.tensor_parallel_size} does not divide the {self.processes_per_node} NeuronCores of a node "
                f"(tensor parallelism stays inside a node); allowed values: "
                f"{', '.join(str(d) for d in range(1, self.processes_per_node + 1) if self.processes_per_node % d == 0)}")
        require(self.fsdp_size == -1 or self.fsdp_size >= 1, "fsdp_size", "must be -1 (the rest) or at least 1")
        require(self.fsdp * self.tensor_parallel_size == self.world_size, "fsdp_size",
                f"fsdp_size {self.fsdp} x tensor_parallel_size {self.tensor_parallel_size} must equal the world size "
                f"{self.world_size} ({self.nodes} nodes x {self.processes_per_node} processes); use -1")
        require(self.seq_len % self.tensor_parallel_size == 0, "seq_len",
                f"{self.seq_len} is not divisible by tensor_parallel_size {self.tensor_parallel_size} "
                "(sequence parallel splits it)")
        require(0.0 < self.lr < 1.0, "lr", f"must be in (0, 1), got {self.lr}")
        require(0 <= self.warmup_steps < self.steps, "warmup_steps", f"must be in [0, steps), got {self.warmup_steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(raw: dict, *, max_nodes: int | None = None, key: str = "run") -> RunConfig:
    cfg = build(RunConfig, raw, prefix=f"{key}.")
    cfg.validate(max_nodes=max_nodes, key=key)
    return cfg


def load(path: str | Path) -> RunConfig:
    return config_from_dict(json.loads(Path(path).read_text()), key=str(path))
