"""Run configuration for NeMo-Megatron-style Llama pretraining with NxD Training, every
derived value checked.

A run is a preset plus overrides (JSON keys = field names). The Pulumi stack loads the
same JSON with the same code (`load_run_config(..., max_nodes=<pool limit>)`), so a bad
run is refused at `pulumi preview`, not after four trn1.32xlarge nodes have started.

Derived values:
    data_parallel_size = nodes * neuron_cores_per_node / (tensor_parallel * pipeline_parallel)
    gradient accumulation = global_batch_size / (micro_batch_size * data_parallel_size)
both must be whole numbers >= 1; errors name the field and the numbers involved.

`nxdt.nxdt_config(cfg, mode)` turns a RunConfig into the NxD Training YAML; `command`
turns it into the environment and command line of one worker node.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from trn_workloads.nemo.presets import PRESETS, ModelPreset

# NxD Training's `precision.type` values that apply to its Megatron model and work end to end
# (`autocast` is for its HF models, `manual` is left out on purpose). mixed_precision (BF16
# compute, FP32 master weights and gradient accumulation in the ZeRO-1 optimizer) is what NxD
# Training's Llama-7B example uses and recommends; bf16SR is all-BF16 with stochastic rounding.
# Mixed precision with stochastic rounding is NOT offered: in NxD Training 1.6.0 the orchestrator
# accepts only the spelling `mixed_precision_SR` (anything else raises on every rank:
# examples/training_orchestrator.py, process_config) while the library enables FP32 master weights
# and gradient accumulation only for `mixed_precisionSR`
# (src/neuronx_distributed_training/lightning_modules/model/base.py, _initialize_nxd_config), both at
# commit 9169aa03f39efd4eb02da63891a7ed98defb1714: neither spelling gets both.
PRECISIONS = ("mixed_precision", "bf16SR", "fp32")
TENSOR_PARALLEL_CHOICES = (1, 2, 4, 8, 16, 32)
# Paths end up in Hydra's command line and in OmegaConf YAML, where these characters are
# split, quoted or interpolated (`${...}`).
_UNSAFE_IN_PATH = re.compile(r"[\s,\[\]{}=\"'\\$]")
# Where images/nemo/Dockerfile puts NxD Training's training_orchestrator.py and training.py.
DEFAULT_NXDT_EXAMPLES_DIR = "/opt/nxdt/examples"


class ConfigError(ValueError):
    """A run setting is missing or inconsistent. The message names the field."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    # paths on the shared file system (FSx for Lustre)
    tokenizer: str  # directory written by `trn_workloads.dataprep --save-tokenizer`
    dataset_prefix: str  # <output_prefix>_text_document (without .bin/.idx)
    run_dir: str  # /shared/runs/<stack>/<run_id>: checkpoints/ and TensorBoard logs
    compile_cache: str  # Neuron compile cache shared by precompile and training
    preset: str = "llama2-7b"
    # None = the preset's value
    nodes: int | None = None
    seq_length: int | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    global_batch_size: int | None = None
    micro_batch_size: int | None = None
    lr: float | None = None
    min_lr: float | None = None
    warmup_steps: int | None = None
    steps: int = 20000
    checkpoint_every_n_steps: int = 200
    keep_checkpoints: int = 2
    # Steps neuron_parallel_compile traces to fill the cache: 10, what NxD Training's own precompile
    # runs (examples/training_orchestrator.py sets trainer.max_steps = 10 when COMPILE=1, commit
    # 9169aa03f39efd4eb02da63891a7ed98defb1714), so the graphs of the first steps (optimizer-state
    # creation, warm-up) are all in the cache and none compiles during training.
    precompile_steps: int = 10
    precision: str = "mixed_precision"
    neuron_cores_per_node: int | None = None
    efa_per_node: int | None = None
    master_port: int = 41000
    nxdt_examples_dir: str = DEFAULT_NXDT_EXAMPLES_DIR  # holds training_orchestrator.py
    seed: int = 1234

    # ------------------------------------------------------------------ resolved values
    @property
    def model(self) -> ModelPreset:
        return PRESETS[self.preset]

    def _or_preset(self, name: str):
        value = getattr(self, name)
        return getattr(self.model, name) if value is None else value

    @property
    def num_nodes(self) -> int:
        return self._or_preset("nodes")

    @property
    def seq_len(self) -> int:
        return self._or_preset("seq_length")

    @property
    def tp(self) -> int:
        return self._or_preset("tensor_parallel_size")

    @property
    def pp(self) -> int:
        return self._or_preset("pipeline_parallel_size")

    @property
    def global_batch(self) -> int:
        return self._or_preset("global_batch_size")

    @property
    def micro_batch(self) -> int:
        return self._or_preset("micro_batch_size")

    @property
    def learning_rate(self) -> float:
        return self._or_preset("lr")

    @property
    def min_learning_rate(self) -> float:
        return self._or_preset("min_lr")

    @property
    def warmup(self) -> int:
        return self._or_preset("warmup_steps")

    @property
    def cores_per_node(self) -> int:
        return self._or_preset("neuron_cores_per_node")

    @property
    def efa_interfaces(self) -> int:
        return self._or_preset("efa_per_node")

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.cores_per_node

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def gradient_accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.data_parallel_size)

    @property
    def checkpoint_dir(self) -> str:
        """Where NxD Training's exp_manager saves (and resumes from): <explicit_log_dir>/checkpoints."""
        return f"{self.run_dir}/checkpoints"

    @property
    def nxdt_config_dir(self) -> str:
        """Where the launcher writes the NxD Training YAML. A sub-directory on purpose: on resume,
        exp_manager moves the files directly under the log dir (run_dir) into run_<n>/."""
        return f"{self.run_dir}/nxdt-config"

    # ------------------------------------------------------------------ validation
    def validate(self, *, max_nodes: int | None = None, key: str = "run") -> "RunConfig":
        """Raise ConfigError naming `<key>.<field>` for the first problem; return self."""
        def require(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{key}.{field}: {message}")

        require(self.preset in PRESETS, "preset", f"must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        for field in ("tokenizer", "dataset_prefix", "run_dir", "compile_cache", "nxdt_examples_dir"):
            value = getattr(self, field)
            require(isinstance(value, str) and value.startswith("/"), field,
                    f"must be an absolute path on the shared file system, got {value!r}")
            require(not _UNSAFE_IN_PATH.search(value), field,
                    f"must not contain spaces, commas, brackets, quotes, '=', '$' or '\\' "
                    f"(Hydra and OmegaConf would misread them), got {value!r}")
        require(not self.dataset_prefix.endswith((".bin", ".idx")), "dataset_prefix",
                f"is the prefix without .bin/.idx, got {self.dataset_prefix!r}")
        positive = ("nodes", "seq_length", "pipeline_parallel_size", "global_batch_size", "micro_batch_size",
                    "steps", "checkpoint_every_n_steps", "keep_checkpoints", "precompile_steps",
                    "neuron_cores_per_node")
        for field in positive:
            value = self._or_preset(field) if field in _PRESET_FIELDS else getattr(self, field)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, field,
                    f"must be an integer >= 1, got {value!r}")
        require(isinstance(self.efa_interfaces, int) and self.efa_interfaces >= 0, "efa_per_node",
                f"must be an integer >= 0, got {self.efa_interfaces!r}")
        for field in ("lr", "min_lr"):
            value = self._or_preset(field)
            require(isinstance(value, (int, float)) and value > 0, field, f"must be a number > 0, got {value!r}")
        require(self.min_learning_rate <= self.learning_rate, "min_lr",
                f"must be <= lr ({self.learning_rate}), got {self.min_learning_rate}")
        require(isinstance(self.warmup, int) and 0 <= self.warmup, "warmup_steps",
                f"must be an integer >= 0, got {self.warmup!r}")
        require(self.precision in PRECISIONS, "precision",
                f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        require(isinstance(self.master_port, int) and 1024 <= self.master_port <= 65535, "master_port",
                f"must be a port number 1024-65535, got {self.master_port!r}")
        if max_nodes is not None:
            require(self.num_nodes <= max_nodes, "nodes",
                    f"{self.num_nodes} nodes exceed the pool limit of {max_nodes}")

        tp, pp, cores = self.tp, self.pp, self.cores_per_node
        require(tp in TENSOR_PARALLEL_CHOICES, "tensor_parallel_size",
                f"must be one of {', '.join(map(str, TENSOR_PARALLEL_CHOICES))}, got {tp!r}")
        require(cores % tp == 0, "tensor_parallel_size",
                f"{tp} must divide the {cores} NeuronCores of a node (tensor parallelism stays inside a node)")
        require(self.model.num_attention_heads % tp == 0, "tensor_parallel_size",
                f"{tp} must divide the {self.model.num_attention_heads} attention heads of {self.preset}")
        require(self.seq_len % tp == 0, "seq_length",
                f"{self.seq_len} must be divisible by tensor_parallel_size ({tp}): sequence parallelism "
                f"splits the sequence across the tensor-parallel ranks")
        require(self.model.num_layers % pp == 0, "pipeline_parallel_size",
                f"{pp} must divide the {self.model.num_layers} layers of {self.preset}")
        model_parallel = tp * pp
        require(self.world_size % model_parallel == 0 and self.world_size >= model_parallel, "nodes",
                f"data-parallel degree = nodes * neuron_cores_per_node / (tensor_parallel_size * "
                f"pipeline_parallel_size) = {self.num_nodes} * {cores} / ({tp} * {pp}) must be a whole number >= 1")
        per_step = self.micro_batch * self.data_parallel_size
        require(self.global_batch % per_step == 0, "global_batch_size",
                f"{self.global_batch} must be divisible by micro_batch_size * data-parallel degree = "
                f"{self.micro_batch} * {self.data_parallel_size} = {per_step}")
        require(self.checkpoint_every_n_steps <= self.steps, "checkpoint_every_n_steps",
                f"{self.checkpoint_every_n_steps} is more than steps ({self.steps}): no checkpoint would be saved")
        require(self.precompile_steps <= self.steps, "precompile_steps",
                f"{self.precompile_steps} is more than steps ({self.steps})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> dict[str, Any]:
        """The settings with preset values filled in and derived values added (for logs/outputs)."""
        return {**{f: self._or_preset(f) if f in _PRESET_FIELDS else getattr(self, f) for f in _FIELDS},
                "data_parallel_size": self.data_parallel_size, "gradient_accumulation": self.gradient_accumulation,
                "world_size": self.world_size, "checkpoint_dir": self.checkpoint_dir}


_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
_PRESET_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelPreset)) & frozenset(_FIELDS)


def load_run_config(data: dict[str, Any], *, max_nodes: int | None = None, key: str = "run") -> RunConfig:
    """RunConfig from a JSON-like dict, validated. Unknown or missing keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: must be a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown setting (known: {', '.join(_FIELDS)})")
    required = [f.name for f in dataclasses.fields(RunConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}: required setting is missing")
    return RunConfig(**data).validate(max_nodes=max_nodes, key=key)


def read_run_config(path: str | Path, *, max_nodes: int | None = None) -> RunConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except ValueError as err:
        raise ConfigError(f"--config {path}: not valid JSON ({err})") from None
    try:
        return load_run_config(data, max_nodes=max_nodes)
    except ConfigError as err:
        raise ConfigError(f"--config {path}: {err}") from None
