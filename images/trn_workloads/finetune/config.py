"""Run configuration for LoRA finetuning: one JSON/YAML file, validated before anything runs.

Sections mirror the steps of a run: `model`, `data`, `lora`, `train`, `eval`, `output`.
Every error names the offending key (e.g. `train.tensor_parallel_size`) and, where the
set is closed, the allowed values. Unknown keys are errors too, so a typo never silently
falls back to a default.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import string
from pathlib import Path
from typing import Any, Literal

from trn_workloads.typed_config import ConfigError, build

# The prompt used for training AND evaluation (one template, so the model is evaluated on
# exactly the format it was trained on). Placeholders name record fields.
DEFAULT_PROMPT_TEMPLATE = (
    "Translate the question into one SQLite query for the schema.\n"
    "### Schema:\n{context}\n"
    "### Question:\n{question}\n"
    "### SQL:\n"
)
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# NeuronCores that one worker process can drive; tensor parallelism groups them.
TENSOR_PARALLEL_CHOICES = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    base: str  # Hugging Face model id or a local directory with config.json + weights
    revision: str | None = None  # hub revision (commit or tag) when `base` is an id
    hf_token_env: str = "HF_TOKEN"  # env var holding the hub token (gated Llama); never logged

    def validate(self) -> None:
        _require(self.base.strip() != "", "model.base", "must name a Hugging Face model id or a local directory")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # A local JSONL file, an s3:// JSONL object, or `hf:<dataset id>` (train split).
    source: str
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    answer_field: str = "answer"
    # When set, each record's answer is checked as SQL against the CREATE TABLE statements in
    # this field (SQLite EXPLAIN), and evaluation executes SQL. None: a non-SQL dataset.
    schema_field: str | None = "context"
    bad_records: Literal["skip", "fail"] = "skip"
    eval_records: int = 200  # held out from training, used by the evaluation
    shuffle_seed: int = 42

    @property
    def template_fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name)

    @property
    def required_fields(self) -> tuple[str, ...]:
        extra = [self.answer_field] + ([self.schema_field] if self.schema_field else [])
        return tuple(dict.fromkeys([*self.template_fields, *extra]))

    def validate(self) -> None:
        _require(self.source.strip() != "", "data.source", "must be a JSONL path, an s3:// URI or hf:<dataset id>")
        try:
            fields = self.template_fields
        except ValueError as err:
            raise ConfigError(f"data.prompt_template: not a valid format string ({err})") from None
        _require(len(fields) > 0, "data.prompt_template", "must contain at least one {field} placeholder")
        bad = [f for f in fields if not f.isidentifier()]
        _require(not bad, "data.prompt_template", f"placeholders must be plain field names, got {bad}")
        _require(self.answer_field not in fields, "data.answer_field",
                 f"{self.answer_field!r} must not appear in the prompt template (the model would see the answer)")
        _require(self.eval_records >= 0, "data.eval_records", f"must be >= 0, got {self.eval_records}")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    # Defaults are the upstream seed's: r 8, alpha 64, rsLoRA, dropout 0.05, all Llama projections.
    r: int = 8
    alpha: int = 64
    dropout: float = 0.05
    use_rslora: bool = True
    target_modules: tuple[str, ...] = LLAMA_TARGET_MODULES

    def validate(self) -> None:
        _require(self.r >= 1, "lora.r", f"must be >= 1, got {self.r}")
        _require(self.alpha >= 1, "lora.alpha", f"must be >= 1, got {self.alpha}")
        _require(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        _require(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 1024
    packing: bool = True  # pack examples into full seq_len blocks (see finetune/packing.py)
    loss_on_prompt: bool = False  # False: only answer tokens (+EOS) contribute to the loss
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    tensor_parallel_size: int = 8
    neuron_cores_per_node: int = 32  # trn1.32xlarge: 16 Trainium chips x 2 NeuronCores
    gradient_checkpointing: bool = True
    bf16: bool = True  # Neuron path only; the CPU path trains in float32
    logging_steps: int = 10
    seed: int = 42

    @property
    def processes_per_node(self) -> int:
        # One worker process per NeuronCore; tensor parallelism splits the model across groups.
        return self.neuron_cores_per_node

    @property
    def data_parallel_size(self) -> int:
        return self.neuron_cores_per_node // self.tensor_parallel_size

    def validate(self) -> None:
        _require(self.seq_len >= 16, "train.seq_len", f"must be >= 16, got {self.seq_len}")
        _require(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        _require(self.max_steps == -1 or self.max_steps >= 1, "train.max_steps",
                 f"must be -1 (use epochs) or >= 1, got {self.max_steps}")
        _require(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.per_device_batch_size >= 1, "train.per_device_batch_size",
                 f"must be >= 1, got {self.per_device_batch_size}")
        _require(self.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps",
                 f"must be >= 1, got {self.gradient_accumulation_steps}")
        _require(self.logging_steps >= 1, "train.logging_steps", f"must be >= 1, got {self.logging_steps}")
        _require(self.tensor_parallel_size in TENSOR_PARALLEL_CHOICES, "train.tensor_parallel_size",
                 f"must be one of {list(TENSOR_PARALLEL_CHOICES)}, got {self.tensor_parallel_size}")
        _require(self.neuron_cores_per_node >= 1, "train.neuron_cores_per_node",
                 f"must be >= 1, got {self.neuron_cores_per_node}")
        _require(self.neuron_cores_per_node % self.tensor_parallel_size == 0, "train.tensor_parallel_size",
                 f"{self.tensor_parallel_size} must divide train.neuron_cores_per_node "
                 f"({self.neuron_cores_per_node}); allowed: "
                 f"{[t for t in TENSOR_PARALLEL_CHOICES if self.neuron_cores_per_node % t == 0]}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    enabled: bool = True
    compare_base: bool = True  # also score the base model (adapter disabled) on the same records
    max_new_tokens: int = 128
    batch_size: int = 8
    rows_per_table: int = 5  # generated rows in each evaluation table so queries return something
    query_timeout_steps: int = 1_000_000  # SQLite VM steps before a generated query is abandoned

    def validate(self) -> None:
        _require(self.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _require(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.rows_per_table >= 1, "eval.rows_per_table", f"must be >= 1, got {self.rows_per_table}")
        _require(self.query_timeout_steps >= 1000, "eval.query_timeout_steps",
                 f"must be >= 1000, got {self.query_timeout_steps}")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    # `{timestamp}` is replaced once, by the launching process, with UTC YYYYmmdd-HHMMSS.
    run_dir: str = "/shared/llama3_tuned_model_{timestamp}"
    merge: bool = True  # also save base + adapter merged into plain safetensors weights
    s3_uri: str | None = None  # when set, the finished run dir is uploaded below this prefix

    def validate(self) -> None:
        _require(self.run_dir.strip() != "", "output.run_dir", "must be a directory path")
        try:
            self.run_dir.format(timestamp="x")
        except (KeyError, IndexError, ValueError):
            raise ConfigError("output.run_dir: the only allowed placeholder is {timestamp}") from None
        if self.s3_uri is not None:
            _require(self.s3_uri.startswith("s3://") and len(self.s3_uri) > len("s3://"), "output.s3_uri",
                     f"must look like s3://bucket/prefix, got {self.s3_uri!r}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    model: ModelConfig
    data: DataConfig
    lora: LoraSettings = LoraSettings()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    def validate(self) -> "FinetuneConfig":
        for section in (self.model, self.data, self.lora, self.train, self.eval, self.output):
            section.validate()
        if self.eval.enabled:
            _require(self.data.eval_records >= 1, "data.eval_records", "must be >= 1 when eval.enabled is true")
        return self

    def with_resolved_run_dir(self, now: _dt.datetime | None = None) -> "FinetuneConfig":
        """The same config with `{timestamp}` in output.run_dir filled in (done once, by the launcher)."""
        stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
        output = dataclasses.replace(self.output, run_dir=self.output.run_dir.format(timestamp=stamp))
        return dataclasses.replace(self, output=output)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# --- loading -----------------------------------------------------------------------------


def config_from_dict(raw: Any) -> FinetuneConfig:
    """Build and validate a FinetuneConfig from plain data (parsed JSON/YAML)."""
    return build(FinetuneConfig, raw).validate()


def load_config(path: str | Path) -> FinetuneConfig:
    """Read a .json, .yaml or .yml config file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: unknown extension {path.suffix!r}; use .json, .yaml or .yml")
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    except Exception as err:  # yaml.YAMLError carries its own line/column in str()
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"config file {path}: invalid YAML: {err}") from None
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
