"""One data-preparation run: JSONL documents -> tokens + EOD -> Megatron .bin/.idx.

    resolve inputs -> load tokenizer -> lock the prefix -> fingerprint -> (up to date? skip)
    -> read + parse (thread) | encode (gigatoken or tokenizers, rayon threads) | write .partial (thread)
    -> index -> rename -> manifest

The engine is chosen on the first batch: gigatoken when it gives the reference's ids on a
sample of it, else the Rust `tokenizers` reference (see `tokenization.choose_encoder`). The
first batch of every later input file is checked the same way; a difference there restarts
the run with the reference, so no output ever holds ids the reference would not give.
A damaged input file in skip mode is dropped whole: the output is rolled back to the
checkpoint taken where the file began.

The manifest `<prefix>.manifest.json` records the fingerprint (local size+mtime or S3 size+ETag,
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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trn_workloads.dataprep.config import DataPrepConfig
from trn_workloads.dataprep.documents import (BadRecordError, DroppedFile, InputFile, ReadStats, fingerprint_inputs,
                                              read_text_batches, resolve_inputs)
from trn_workloads.dataprep.indexed import IndexedDatasetWriter, dataset_paths, token_dtype
from trn_workloads.dataprep.lock import run_lock
from trn_workloads.dataprep.progress import Progress
from trn_workloads.dataprep.tokenization import (EngineChoice, EngineError, LoadedTokenizer, choose_encoder,
                                                 load_tokenizer, prefetched, set_tokenizer_threads,
                                                 verification_sample)

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
    engine: str = ""  # "gigatoken" | "tokenizers" (what the manifest records, also when skipped)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def manifest_path(dataset_prefix: str) -> Path:
    return Path(dataset_prefix + ".manifest.json")


def output_fingerprint(files: list[InputFile], tok: LoadedTokenizer, cfg: DataPrepConfig) -> str:
    """sha256 of everything the output depends on (and nothing else, e.g. not workers)."""
    settings = {"format": OUTPUT_FORMAT_VERSION, "json_key": cfg.json_key, "on_bad_record": cfg.on_bad_record,
                "add_special_tokens": cfg.add_special_tokens, "eod_id": tok.eod_id, "vocab_size": tok.vocab_size,
                "max_document_bytes": cfg.max_document_bytes}
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(hashlib.sha256(tok.json.encode()).digest())
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
        for f in tok.files:
            shutil.copyfile(f, staging / f.name)
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("tokenizer saved to %s", dest)


class _EngineMismatch(Exception):
    """gigatoken passed the first check but differs on a later file's sample: restart with the reference."""


# Batches read ahead of the encoder: memory ~ READ_AHEAD x batch_bytes of text.
READ_AHEAD = 3


@dataclasses.dataclass
class _Written:
    dropped_empty: int = 0
    choice: EngineChoice | None = None


def _tokenize_into(writer: IndexedDatasetWriter, cfg: DataPrepConfig, tok: LoadedTokenizer, files: list[InputFile],
                   engine: str, stats: ReadStats, progress: Progress, s3_client: Any | None) -> _Written:
    """Read, encode and write every document; the three stages overlap (reader and writer threads)."""
    out = _Written()
    encoder = None
    file_start: tuple[str, tuple[int, int], int] | None = None  # source, writer checkpoint, dropped_empty
    pending: Future | None = None  # the previous batch's write, running while this one encodes
    batches = read_text_batches(files, json_key=cfg.json_key, on_bad_record=cfg.on_bad_record, stats=stats,
                                s3_client=s3_client, max_document_bytes=cfg.max_document_bytes,
                                batch_size=cfg.batch_size, batch_bytes=cfg.batch_bytes)
    with ThreadPoolExecutor(1, thread_name_prefix="dataprep-writer") as pool:
        for item in prefetched(batches, READ_AHEAD):
            if isinstance(item, DroppedFile):
                if pending is not None:
                    pending.result()
                    pending = None
                if file_start is not None and file_start[0] == item.source:
                    writer.rollback(file_start[1])
                    out.dropped_empty = file_start[2]
                log.warning("dropped %s: %s", item.source, item.message)
                continue
            if encoder is None:
                encoder, out.choice = choose_encoder(tok, verification_sample(item.texts, cfg.verify_bytes),
                                                     add_special_tokens=cfg.add_special_tokens, engine=engine,
                                                     workers=cfg.workers,
                                                     gigatoken_cache_bytes=cfg.gigatoken_cache_bytes)
                log.info("engine: %s (%s)", out.choice.engine, out.choice.reason)
            elif item.first_of_file and encoder.engine is not encoder.reference:
                problem = encoder.mismatch(verification_sample(item.texts, max(cfg.verify_bytes // 8, 1)))
                if problem is not None:
                    raise _EngineMismatch(f"{item.source}: {problem}")
            batch = encoder.encode_texts(item.texts)
            if pending is not None:
                pending.result()
            if item.first_of_file:
                file_start = (item.source, writer.checkpoint(), out.dropped_empty)
            pending = pool.submit(writer.add_batch, batch.ids, batch.lengths)
            out.dropped_empty += batch.dropped_empty
            progress.update(writer.documents, writer.tokens, stats.input_bytes, stats.bad_records)
        if pending is not None:
            pending.result()
    return out


def prepare(cfg: DataPrepConfig, *, s3_client: Any | None = None) -> PrepResult:
    """Run (or skip, when up to date) the data preparation described by `cfg`."""
    cfg.validate()
    started = time.monotonic()
    files = resolve_inputs(cfg.inputs, s3_client=s3_client)
    tok = load_tokenizer(cfg.tokenizer, eod_token=cfg.eod_token, hf_token=os.environ.get("HF_TOKEN") or None)
    prefix = cfg.dataset_prefix
    with run_lock(prefix):
        if cfg.save_tokenizer:
            save_tokenizer(tok, cfg.save_tokenizer)
        return _prepare_locked(cfg, files, tok, started, s3_client)


def _prepare_locked(cfg: DataPrepConfig, files: list[InputFile], tok: LoadedTokenizer, started: float,
                    s3_client: Any | None) -> PrepResult:
    prefix = cfg.dataset_prefix
    bin_path, idx_path = dataset_paths(prefix)
    fingerprint = output_fingerprint(files, tok, cfg)
    if not cfg.force and is_up_to_date(prefix, fingerprint):
        manifest = json.loads(manifest_path(prefix).read_text())
        log.info("%s is up to date (fingerprint %s): nothing to do", prefix, fingerprint[:12])
        return PrepResult(prefix, bin_path, idx_path, manifest_path(prefix), True, manifest["documents"],
                          manifest["tokens"], manifest["bad_records"], manifest["dropped_empty"],
                          time.monotonic() - started, engine=manifest.get("engine", ""))

    total_bytes = sum(f.size for f in files)
    log.info("tokenizing %d input file(s) (%d bytes) with %s (vocab %d, EOD id %d) on %d thread(s) into %s",
             len(files), total_bytes, cfg.tokenizer, tok.vocab_size, tok.eod_id, cfg.workers, prefix)
    set_tokenizer_threads(cfg.workers)
    dtype = token_dtype(tok.vocab_size)
    engine = cfg.engine
    while True:
        stats = ReadStats()
        progress = Progress(total_bytes, cfg.progress_interval_s)
        try:
            with IndexedDatasetWriter(prefix, dtype) as writer:
                written = _tokenize_into(writer, cfg, tok, files, engine, stats, progress, s3_client)
                if writer.documents == 0:
                    raise BadRecordError(f"no usable documents in {len(files)} input file(s) "
                                         f"({stats.bad_records} bad records, {written.dropped_empty} empty documents)")
                manifest_path(prefix).unlink(missing_ok=True)
                writer.finish()
            break
        except _EngineMismatch as err:
            if engine == "gigatoken":
                raise EngineError(f"--engine gigatoken: it differs from the reference on {err}") from err
            log.warning("gigatoken differs from the reference on %s: starting again with the tokenizers engine", err)
            engine = "tokenizers"
    progress.done(writer.documents, writer.tokens, stats.input_bytes, stats.bad_records)
    for problem in stats.problems:
        log.warning("skipped bad record: %s", problem)
    if stats.bad_records > len(stats.problems):
        log.warning("... and %d more bad records", stats.bad_records - len(stats.problems))

    choice = written.choice
    assert choice is not None  # writer.documents > 0: at least one batch was encoded
    manifest = {
        "fingerprint": fingerprint, "format": OUTPUT_FORMAT_VERSION, "dataset_prefix": prefix,
        "files": {bin_path.name: bin_path.stat().st_size, idx_path.name: idx_path.stat().st_size},
        "documents": writer.documents, "tokens": writer.tokens, "dtype": dtype.name, "eod_id": tok.eod_id,
        "vocab_size": tok.vocab_size, "tokenizer": cfg.tokenizer, "json_key": cfg.json_key,
        "add_special_tokens": cfg.add_special_tokens, "on_bad_record": cfg.on_bad_record,
        "bad_records": stats.bad_records, "dropped_empty": written.dropped_empty,
        "engine": choice.engine, "engine_reason": choice.reason,
        "inputs": [dataclasses.asdict(f) for f in files],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomically(manifest_path(prefix), manifest)
    return PrepResult(prefix, bin_path, idx_path, manifest_path(prefix), False, writer.documents, writer.tokens,
                      stats.bad_records, written.dropped_empty, time.monotonic() - started, tuple(stats.problems),
                      choice.engine)
