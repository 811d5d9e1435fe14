"""Run configuration of Ray Train Llama pretraining: one flat JSON file, validated before anything runs.

The same file drives the three RayJobs (data, precompile, train). Every error names the key
and, where the set is closed, the allowed values; unknown keys are errors, so a typo never
silently falls back to a default.

Batch arithmetic (data parallel size = num_workers / tensor_parallel_size):

    global_batch_size = micro_batch_size x data_parallel_size x gradient accumulation steps
"""
from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any

from trn_workloads.ray_train.memory import NEURONCORE_HBM_BYTES, estimate_per_core
from trn_workloads.typed_config import ConfigError, build

# NeuronCores one Ray Train worker drives on Neuron (one process per core, as torch-xla wants);
# the KubeRay worker pods advertise this custom resource (rayStartParams resources).
NEURON_CORES_RESOURCE = "neuron_cores"
TENSOR_PARALLEL_CHOICES = (1, 2, 4, 8, 16, 32)
# Tensor parallelism splits attention heads and MLP columns evenly across the group.
_TP_SPLIT = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """Llama architecture (Hugging Face LlamaConfig names). The vocabulary comes from the data."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02


MODEL_PRESETS: types.MappingProxyType[str, ModelPreset] = types.MappingProxyType({
    # Llama-2-7B, as the upstream Ray Train tutorial pretrains it (random init, 4k context).
    "llama2-7b": ModelPreset(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    # A few hundred thousand parameters: the same code path in seconds on a CPU (tests, laptops).
    # Fewer key/value heads than query heads, so grouped-query attention is exercised too.
    "tiny": ModelPreset(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
})


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    # where things are (FSx)
    data_dir: str  # token blocks written by the data step (blocks.bin + index.json)
    run_dir: str  # Ray Train storage_path: checkpoints and metrics of every run name below it
    tokenizer: str | None = None  # the data step's tokenizer (directory or Hugging Face id)
    compile_cache: str = "/shared/neuron-cache"  # Neuron compiler cache shared by all nodes
    run_name: str = "llama-pretrain"  # a restarted job with the same name resumes from its checkpoints

    # model and data shape
    model: str = "llama2-7b"
    seq_len: int = 4096

    # optimisation
    steps: int = 10000
    global_batch_size: int = 256
    micro_batch_size: int = 1
    learning_rate: float = 3e-4
    min_learning_rate: float = 3e-5  # the cosine schedule ends here, at `steps`
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 42

    # parallelism and fault tolerance
    num_workers: int = 32  # Ray Train workers: one per NeuronCore on Neuron (32 per trn1.32xlarge)
    tensor_parallel_size: int = 8  # Neuron only; CPU runs are data parallel (1)
    max_failures: int = 3  # Ray Train restarts the worker group from the latest checkpoint

    # bookkeeping
    checkpoint_interval: int = 500  # steps between checkpoints (and always at the last step)
    keep_checkpoints: int = 3
    log_interval: int = 10  # steps between metrics reports
    precompile_steps: int = 10  # steps run under neuron_parallel_compile by --precompile

    @property
    def preset(self) -> ModelPreset:
        return MODEL_PRESETS[self.model]

    @property
    def data_parallel_size(self) -> int:
        return self.num_workers // self.tensor_parallel_size

    @property
    def grad_accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)

    def validate(self) -> "PretrainConfig":
        for key in ("data_dir", "run_dir", "run_name", "compile_cache"):
            _require(getattr(self, key).strip() != "", key, "must not be empty")
        _require("/" not in self.run_name, "run_name", f"must be a plain name (no '/'), got {self.run_name!r}")
        if self.tokenizer is not None:
            _require(self.tokenizer.strip() != "", "tokenizer", "must name a tokenizer directory or a Hugging Face id")
        _require(self.model in MODEL_PRESETS, "model", f"must be one of {sorted(MODEL_PRESETS)}, got {self.model!r}")
        max_len = self.preset.max_position_embeddings
        _require(8 <= self.seq_len <= max_len, "seq_len", f"must be 8 to {max_len} for model {self.model!r}, "
                                                          f"got {self.seq_len}")
        for key in ("steps", "global_batch_size", "micro_batch_size", "num_workers", "checkpoint_interval",
                    "keep_checkpoints", "log_interval", "precompile_steps"):
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "max_failures", "seed"):
            _require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        _require(self.warmup_steps < self.steps, "warmup_steps", f"must be below steps ({self.steps}), "
                                                                 f"got {self.warmup_steps}")
        _require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(0 <= self.min_learning_rate <= self.learning_rate, "min_learning_rate",
                 f"must be between 0 and learning_rate ({self.learning_rate}), got {self.min_learning_rate}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.grad_clip > 0, "grad_clip", f"must be > 0, got {self.grad_clip}")
        self._validate_parallelism()
        return self

    def _validate_parallelism(self) -> None:
        tp = self.tensor_parallel_size
        _require(tp in TENSOR_PARALLEL_CHOICES, "tensor_parallel_size",
                 f"must be one of {list(TENSOR_PARALLEL_CHOICES)}, got {tp}")
        _require(self.num_workers % tp == 0, "num_workers",
                 f"{self.num_workers} is not a multiple of tensor_parallel_size ({tp})")
        p = self.preset
        for name in _TP_SPLIT:
            _require(getattr(p, name) % tp == 0, "tensor_parallel_size",
                     f"{tp} must divide {name} ({getattr(p, name)}) of model {self.model!r}; allowed: "
                     f"{[t for t in TENSOR_PARALLEL_CHOICES if all(getattr(p, n) % t == 0 for n in _TP_SPLIT)]}")
        if tp > 1:  # the Neuron path (CPU runs are data parallel): sequence parallel + selective recompute
            _require(self.seq_len % tp == 0, "seq_len",
                     f"{self.seq_len} must be a multiple of tensor_parallel_size ({tp}): sequence parallelism "
                     f"splits the sequence across the tensor-parallel ranks")
            need = self.memory_per_core()
            gib = 2**30
            _require(need.total <= NEURONCORE_HBM_BYTES, "micro_batch_size",
                     f"{self.micro_batch_size} x seq_len {self.seq_len} needs about {need.total / gib:.1f} GiB per "
                     f"NeuronCore (activations {need.activations / gib:.1f}, weights/gradients/optimizer "
                     f"{need.model_state / gib:.1f}), more than its {NEURONCORE_HBM_BYTES / gib:.0f} GiB: lower "
                     f"micro_batch_size or seq_len, or raise tensor_parallel_size")
        per_step = self.micro_batch_size * self.data_parallel_size
        _require(self.global_batch_size % per_step == 0, "global_batch_size",
                 f"{self.global_batch_size} must be a multiple of micro_batch_size x data parallel size "
                 f"({self.micro_batch_size} x {self.data_parallel_size} = {per_step}; data parallel size = "
                 f"num_workers / tensor_parallel_size)")

    def memory_per_core(self):
        """Estimated NeuronCore memory of one worker as the Neuron path trains (memory.py)."""
        return estimate_per_core(self.preset, seq_len=self.seq_len, micro_batch_size=self.micro_batch_size,
                                 tensor_parallel_size=self.tensor_parallel_size, sequence_parallel=True,
                                 recompute_core_attention=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# --- loading -----------------------------------------------------------------------------


def config_from_dict(raw: Any) -> PretrainConfig:
    """Build and validate a PretrainConfig from parsed JSON: types checked, unknown keys refused."""
    return build(PretrainConfig, raw).validate()


def load_config(path: str | Path) -> PretrainConfig:
    """Read and validate a JSON run config; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
