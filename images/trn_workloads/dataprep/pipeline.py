"""One data-preparation run: JSONL documents -> tokens + EOD -> Megatron .bin/.idx.

    resolve inputs -> load tokenizer -> fingerprint -> (up to date? skip)
    -> read (thread) | encode_batch (rayon threads) | write .partial -> index -> rename -> manifest

The manifest `<prefix>.manifest.json` records the fingerprint (inputs' bytes or S3 size+ETag,
the tokenizer's full serialization, the settings that change the output) and the sizes of
the two files. A rerun with the same fingerprint and intact files does nothing. The
manifest is removed before the new files are renamed into place and written after, so a
run killed between the two renames is never mistaken for a finished one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from trn_workloads.dataprep.config import DataPrepConfig
from trn_workloads.dataprep.documents import (BadRecordError, InputFile, ReadStats, fingerprint_inputs,
                                              read_documents, resolve_inputs)
from trn_workloads.dataprep.indexed import IndexedDatasetWriter, dataset_paths, token_dtype
from trn_workloads.dataprep.tokenization import BatchEncoder, LoadedTokenizer, load_tokenizer, set_tokenizer_threads

log = logging.getLogger(__name__)

# Bump when the output for the same inputs and settings would change (format or semantics).
OUTPUT_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PrepResult:
    dataset_prefix: str
    bin_path: Path
    idx_path: Path
    manifest_path: Path
    skipped: bool  # the output was already up to date
    documents: int
    tokens: int
    bad_records: int
    dropped_empty: int
    seconds: float
    problems: tuple[str, ...] = ()

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def manifest_path(dataset_prefix: str) -> Path:
    return Path(dataset_prefix + ".manifest.json")


def output_fingerprint(files: list[InputFile], tok: LoadedTokenizer, cfg: DataPrepConfig) -> str:
    """sha256 of everything the output depends on (and nothing else, e.g. not workers)."""
    settings = {"format": OUTPUT_FORMAT_VERSION, "json_key": cfg.json_key, "on_bad_record": cfg.on_bad_record,
                "add_special_tokens": cfg.add_special_tokens, "eod_id": tok.eod_id, "vocab_size": tok.vocab_size}
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(hashlib.sha256(tok.backend.to_str().encode()).digest())
    digest.update(fingerprint_inputs(files).encode())
    return digest.hexdigest()


def is_up_to_date(dataset_prefix: str, fingerprint: str) -> bool:
    """True when the manifest matches `fingerprint` and both files have the recorded sizes."""
    try:
        manifest = json.loads(manifest_path(dataset_prefix).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("fingerprint") != fingerprint:
        return False
    for path in dataset_paths(dataset_prefix):
        recorded = manifest.get("files", {}).get(path.name)
        if recorded is None or not path.is_file() or path.stat().st_size != recorded:
            return False
    return True


def write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_tokenizer(tok: LoadedTokenizer, directory: str) -> None:
    """Save the tokenizer for training (model.tokenizer.type=<directory>), replacing it atomically."""
    dest = Path(directory)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tok.hf.save_pretrained(str(staging))
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("tokenizer saved to %s", dest)


class _Progress:
    def __init__(self, interval_s: float) -> None:
        self.start = self.last = time.monotonic()
        self.interval_s = interval_s

    def maybe_report(self, writer: IndexedDatasetWriter, stats: ReadStats, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        log.info("%s documents=%d tokens=%d tokens/s=%.0f MB/s=%.1f bad_records=%d",
                 "done:" if final else "progress:", writer.documents, writer.tokens, writer.tokens / elapsed,
                 stats.bytes_read / elapsed / 1e6, stats.bad_records)


def prepare(cfg: DataPrepConfig, *, s3_client: Any | None = None) -> PrepResult:
    """Run (or skip, when up to date) the data preparation described by `cfg`."""
    cfg.validate()
    started = time.monotonic()
    files = resolve_inputs(cfg.inputs, s3_client=s3_client)
    tok = load_tokenizer(cfg.tokenizer, eod_token=cfg.eod_token, hf_token=os.environ.get("HF_TOKEN") or None)
    if cfg.save_tokenizer:
        save_tokenizer(tok, cfg.save_tokenizer)
    prefix = cfg.dataset_prefix
    bin_path, idx_path = dataset_paths(prefix)
    fingerprint = output_fingerprint(files, tok, cfg)
    if not cfg.force and is_up_to_date(prefix, fingerprint):
        manifest = json.loads(manifest_path(prefix).read_text())
        log.info("%s is up to date (fingerprint %s): nothing to do", prefix, fingerprint[:12])
        return PrepResult(prefix, bin_path, idx_path, manifest_path(prefix), True, manifest["documents"],
                          manifest["tokens"], manifest["bad_records"], manifest["dropped_empty"],
                          time.monotonic() - started)

    log.info("tokenizing %d input file(s) with %s (vocab %d, EOD id %d) on %d thread(s) into %s",
             len(files), cfg.tokenizer, tok.vocab_size, tok.eod_id, cfg.workers, prefix)
    set_tokenizer_threads(cfg.workers)
    encoder = BatchEncoder(tok.backend, eod_id=tok.eod_id, add_special_tokens=cfg.add_special_tokens)
    stats = ReadStats()
    dropped_empty = 0
    progress = _Progress(cfg.progress_interval_s)
    documents = read_documents(files, json_key=cfg.json_key, on_bad_record=cfg.on_bad_record, stats=stats,
                               s3_client=s3_client)
    dtype = token_dtype(tok.vocab_size)
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for batch in encoder.token_batches(documents, batch_size=cfg.batch_size):
            writer.add_batch(batch.ids, batch.lengths)
            dropped_empty += batch.dropped_empty
            progress.maybe_report(writer, stats)
        if writer.documents == 0:
            raise BadRecordError(f"no usable documents in {len(files)} input file(s) "
                                 f"({stats.bad_records} bad records, {dropped_empty} empty documents)")
        manifest_path(prefix).unlink(missing_ok=True)
        writer.finish()
    progress.maybe_report(writer, stats, final=True)
    for problem in stats.problems:
        log.warning("skipped bad record: %s", problem)
    if stats.bad_records > len(stats.problems):
        log.warning("... and %d more bad records", stats.bad_records - len(stats.problems))

    manifest = {
        "fingerprint": fingerprint, "format": OUTPUT_FORMAT_VERSION, "dataset_prefix": prefix,
        "files": {bin_path.name: bin_path.stat().st_size, idx_path.name: idx_path.stat().st_size},
        "documents": writer.documents, "tokens": writer.tokens, "dtype": dtype.name, "eod_id": tok.eod_id,
        "vocab_size": tok.vocab_size, "tokenizer": cfg.tokenizer, "json_key": cfg.json_key,
        "add_special_tokens": cfg.add_special_tokens, "on_bad_record": cfg.on_bad_record,
        "bad_records": stats.bad_records, "dropped_empty": dropped_empty,
        "inputs": [dataclasses.asdict(f) for f in files],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomically(manifest_path(prefix), manifest)
    return PrepResult(prefix, bin_path, idx_path, manifest_path(prefix), False, writer.documents, writer.tokens,
                      stats.bad_records, dropped_empty, time.monotonic() - started, tuple(stats.problems))
