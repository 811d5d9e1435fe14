"""Settings of one data-preparation run, validated before anything is read or written."""
from __future__ import annotations

import dataclasses
import os

from trn_workloads.dataprep.documents import BAD_RECORD_POLICIES
from trn_workloads.dataprep.tokenization import DEFAULT_GIGATOKEN_CACHE_BYTES, DEFAULT_VERIFY_BYTES, ENGINES

# Megatron's convention: a data prefix names `<output_prefix>_text_document.{bin,idx}`.
DATASET_SUFFIX = "_text_document"
# A longer JSONL line is a bad record, never read into memory. Peak memory for one document
# of this size: about 15 bytes per byte with gigatoken, up to ~100 with the reference engine.
DEFAULT_MAX_DOCUMENT_BYTES = 32 << 20
DEFAULT_BATCH_BYTES = 4 << 20  # text per encode call (and per queued batch: memory ~ prefetch x this)


class ConfigError(ValueError):
    """A setting is missing or out of range. The message names the command-line option."""


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class DataPrepConfig:
    tokenizer: str  # local directory with a fast tokenizer, or a Hugging Face id (HF_TOKEN)
    inputs: tuple[str, ...]  # JSONL/JSONL.gz paths, globs, directories, s3://bucket/prefix
    output_prefix: str  # writes <output_prefix>_text_document.bin/.idx (+ .manifest.json)
    json_key: str = "text"
    workers: int = dataclasses.field(default_factory=default_workers)  # tokenizer threads
    batch_size: int = 4096  # at most this many documents per encode call ...
    batch_bytes: int = DEFAULT_BATCH_BYTES  # ... and about this much text
    engine: str = "auto"  # "auto" (gigatoken if it matches the reference), "gigatoken", "tokenizers"
    verify_bytes: int = DEFAULT_VERIFY_BYTES  # sample of the run's text compared with the reference first
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES  # longer lines are bad records
    gigatoken_cache_bytes: int = DEFAULT_GIGATOKEN_CACHE_BYTES  # growth that makes gigatoken drop its pre-token cache
    on_bad_record: str = "fail"  # "fail" | "skip"
    add_special_tokens: bool = False  # False = Megatron's text_to_ids (no BOS)
    eod_token: str | None = None  # default: the tokenizer's EOS token
    save_tokenizer: str | None = None  # also save the tokenizer here (the training step reads it)
    progress_interval_s: float = 30.0
    force: bool = False  # rebuild even if the manifest says the output is up to date

    @property
    def dataset_prefix(self) -> str:
        """The Megatron data prefix (what `model.data.data_prefix` names)."""
        return self.output_prefix + DATASET_SUFFIX

    def validate(self) -> None:
        def require(ok: bool, option: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{option}: {message}")

        require(bool(self.tokenizer.strip()), "--tokenizer", "must name a tokenizer directory or a Hugging Face id")
        require(len(self.inputs) > 0, "--input", "give at least one JSONL path, glob, directory or s3:// prefix")
        for spec in self.inputs:
            require(bool(spec.strip()), "--input", "empty input spec")
        require(bool(self.output_prefix.strip()), "--output-prefix", "must be a path prefix")
        require(not self.output_prefix.startswith("s3://"), "--output-prefix",
                "must be a local or FSx path (Megatron memory-maps the files)")
        require(not self.output_prefix.endswith(("/", os.sep)), "--output-prefix",
                f"must end in a file name prefix, not a directory: {self.output_prefix!r}")
        require(bool(self.json_key), "--json-key", "must not be empty")
        require(self.workers >= 1, "--workers", f"must be >= 1, got {self.workers}")
        require(self.batch_size >= 1, "--batch-size", f"must be >= 1, got {self.batch_size}")
        require(self.batch_bytes >= 1024, "--batch-bytes", f"must be >= 1024, got {self.batch_bytes}")
        require(self.engine in ENGINES, "--engine", f"must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        require(self.verify_bytes >= 1024, "--verify-bytes", f"must be >= 1024, got {self.verify_bytes} "
                "(gigatoken is never used unchecked)")
        require(self.max_document_bytes >= 1024, "--max-document-bytes",
                f"must be >= 1024, got {self.max_document_bytes}")
        require(self.gigatoken_cache_bytes >= 1 << 20, "--gigatoken-cache-bytes",
                f"must be >= {1 << 20}, got {self.gigatoken_cache_bytes}")
        require(self.on_bad_record in BAD_RECORD_POLICIES, "--on-bad-record",
                f"must be one of {', '.join(BAD_RECORD_POLICIES)}, got {self.on_bad_record!r}")
        require(self.progress_interval_s > 0, "--progress-interval", f"must be > 0, got {self.progress_interval_s}")
        if self.save_tokenizer is not None:
            require(bool(self.save_tokenizer.strip()), "--save-tokenizer", "must be a directory path")
