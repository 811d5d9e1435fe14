"""`python -m trn_workloads.ray_train.data`: documents -> fixed-length token blocks on FSx.

Example (the data RayJob; data_dir, seq_len and the tokenizer come from the run config):

    python -m trn_workloads.ray_train.data --config /etc/run/run.json \\
        --input s3://bucket/wikicorpus/ --tokenizer meta-llama/Llama-2-7b-hf --ray-cpus 32

Inputs: JSONL / JSONL.gz files, globs, directories and s3:// prefixes (read by the shared
`trn_workloads.dataprep.documents` reader), and local Parquet files, globs and directories (a
Hugging Face dataset's parquet files), read here with pyarrow. Tokenization is dataprep's
engine (gigatoken when it gives the Rust tokenizers reference's ids on a sample of the run's
documents, else the reference; every document's ids + EOD); `blocks` describes the output.
Same inputs, tokenizer and settings give the same blocks; a rerun whose fingerprint matches
the finished output does nothing.

Exit status: 0 done or up to date; 2 bad settings, inputs or records (no output was
created or replaced); 1 anything else.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from trn_workloads.dataprep.config import DEFAULT_MAX_DOCUMENT_BYTES, default_workers
from trn_workloads.dataprep.documents import (BAD_RECORD_POLICIES, BadRecordError, InputError, InputFile, ReadStats,
                                              fingerprint_inputs, local_input, read_documents, resolve_inputs)
from trn_workloads.dataprep.indexed import token_dtype
from trn_workloads.dataprep.pipeline import save_tokenizer
from trn_workloads.dataprep.tokenization import (ENGINES, EngineChoice, EngineError, checked_token_batches,
                                                 load_tokenizer, set_tokenizer_threads)
from trn_workloads.ray_train.blocks import (FORMAT_VERSION, BlockFormatError, BlockPacker, BlockWriter, read_index)
from trn_workloads.ray_train.config import ConfigError, load_config

log = logging.getLogger(__name__)

PARQUET_SUFFIX = ".parquet"
PARQUET_BATCH_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class BlockPrepConfig:
    tokenizer: str  # local directory with a fast tokenizer, or a Hugging Face id (HF_TOKEN)
    inputs: tuple[str, ...]  # JSONL(.gz) paths/globs/dirs/s3:// prefixes, Parquet paths/globs/dirs
    data_dir: str  # writes blocks.bin + index.json here
    seq_len: int  # blocks hold seq_len + 1 tokens
    text_key: str = "text"  # JSON key or Parquet column with the document text
    workers: int = dataclasses.field(default_factory=default_workers)  # tokenizer threads
    batch_size: int = 1000  # documents per encode_batch call
    on_bad_record: str = "fail"  # "fail" | "skip"
    add_special_tokens: bool = False  # True adds e.g. Llama's BOS to every document
    engine: str = "auto"  # as dataprep's --engine: "auto" | "gigatoken" | "tokenizers"
    save_tokenizer: str | None = None  # also save the tokenizer here, next to the data
    force: bool = False  # rebuild even when the output is up to date

    def validate(self) -> "BlockPrepConfig":
        def require(ok: bool, option: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{option}: {message}")

        require(bool(self.tokenizer.strip()), "--tokenizer", "must name a tokenizer directory or a Hugging Face id "
                                                             "(or set `tokenizer` in the run config)")
        require(len(self.inputs) > 0 and all(s.strip() for s in self.inputs), "--input",
                "give at least one JSONL/Parquet path, glob, directory or s3:// prefix")
        require(bool(self.data_dir.strip()) and not self.data_dir.startswith("s3://"), "data_dir",
                "must be a local or FSx directory (training memory-maps the blocks)")
        require(self.seq_len >= 8, "seq_len", f"must be >= 8, got {self.seq_len}")
        require(bool(self.text_key), "--text-key", "must not be empty")
        require(self.workers >= 1, "--workers", f"must be >= 1, got {self.workers}")
        require(self.batch_size >= 1, "--batch-size", f"must be >= 1, got {self.batch_size}")
        require(self.on_bad_record in BAD_RECORD_POLICIES, "--on-bad-record",
                f"must be one of {', '.join(BAD_RECORD_POLICIES)}, got {self.on_bad_record!r}")
        require(self.engine in ENGINES, "--engine", f"must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        return self


@dataclasses.dataclass(frozen=True)
class BlocksResult:
    data_dir: str
    skipped: bool  # already up to date
    n_blocks: int
    tokens: int  # tokens in blocks
    dropped_tail_tokens: int
    documents: int
    bad_records: int
    seconds: float


# --------------------------------------------------------------------------- inputs


def _is_parquet_spec(spec: str) -> bool:
    if spec.startswith("s3://"):
        return False  # S3 inputs go through dataprep's JSONL reader
    path = Path(spec)
    if path.is_dir():
        return any(p.suffix == PARQUET_SUFFIX for p in path.iterdir())
    return spec.endswith(PARQUET_SUFFIX)  # a file or a glob such as data/train-*.parquet


def _parquet_inputs(spec: str) -> list[InputFile]:
    path = Path(spec)
    if path.is_dir():
        names = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == PARQUET_SUFFIX)
    elif glob.has_magic(spec):
        names = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not names:
            raise InputError(f"input {spec!r}: the pattern matches no files")
    elif path.is_file():
        names = [path]
    else:
        raise InputError(f"input {spec!r}: no such file")
    return [local_input(p) for p in names]


def resolve_sources(specs: Iterable[str], *, s3_client: Any | None = None) -> list[InputFile]:
    """Parquet specs expanded here, everything else by dataprep's `resolve_inputs`; order kept, duplicates dropped."""
    return resolve_inputs(specs, s3_client=s3_client,
                          expand=lambda spec: _parquet_inputs(spec) if _is_parquet_spec(spec) else None)


def _parquet_texts(f: InputFile, text_key: str, on_bad_record: str, stats: ReadStats) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(f.uri)
    schema = table.schema_arrow
    if text_key not in schema.names:
        raise InputError(f"{f.uri}: no column {text_key!r} (columns: {', '.join(schema.names[:10])}); "
                         f"name the text column with --text-key")
    column_type = schema.field(text_key).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise InputError(f"{f.uri}: column {text_key!r} is {column_type}, expected a string column")
    row = 0
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_key]):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                message = f"{f.uri}:row {row}: {text_key!r} is null"
                if on_bad_record == "fail":
                    raise BadRecordError(message + " (use --on-bad-record skip to skip such records)")
                stats.record_problem(message)
                continue
            stats.documents += 1
            yield text
    if row == 0:
        raise BadRecordError(f"{f.uri}: empty file (no rows)")


def read_texts(files: list[InputFile], *, text_key: str, on_bad_record: str, stats: ReadStats,
               s3_client: Any | None = None) -> Iterator[str]:
    """Every usable document's text, file by file in the given order."""
    for f in files:
        if f.uri.endswith(PARQUET_SUFFIX):
            yield from _parquet_texts(f, text_key, on_bad_record, stats)
        else:
            for doc in read_documents([f], json_key=text_key, on_bad_record=on_bad_record, stats=stats,
                                      s3_client=s3_client, max_document_bytes=DEFAULT_MAX_DOCUMENT_BYTES):
                yield doc.text


# --------------------------------------------------------------------------- the step


def blocks_fingerprint(files: list[InputFile], tokenizer_json: str, settings: dict[str, Any]) -> str:
    """sha256 of everything the blocks depend on: the settings, the tokenizer, the input bytes (or S3 ETags)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({**settings, "format": FORMAT_VERSION}, sort_keys=True).encode())
    digest.update(hashlib.sha256(tokenizer_json.encode()).digest())
    digest.update(fingerprint_inputs(files).encode())
    return digest.hexdigest()


def _up_to_date(data_dir: str, fingerprint: str) -> dict[str, Any] | None:
    try:
        index = read_index(data_dir)
    except (BlockFormatError, OSError, KeyError):
        return None
    return index if index.get("fingerprint") == fingerprint else None


def prepare_blocks(cfg: BlockPrepConfig, *, s3_client: Any | None = None) -> BlocksResult:
    """Tokenize the inputs into `seq_len + 1` blocks in `cfg.data_dir` (or skip: already up to date)."""
    cfg.validate()
    started = time.monotonic()
    files = resolve_sources(cfg.inputs, s3_client=s3_client)
    tok = load_tokenizer(cfg.tokenizer)
    if cfg.save_tokenizer:
        save_tokenizer(tok, cfg.save_tokenizer)
    settings = {"seq_len": cfg.seq_len, "text_key": cfg.text_key, "on_bad_record": cfg.on_bad_record,
                "add_special_tokens": cfg.add_special_tokens, "eod_id": tok.eod_id, "vocab_size": tok.vocab_size}
    fingerprint = blocks_fingerprint(files, tok.json, settings)
    done = None if cfg.force else _up_to_date(cfg.data_dir, fingerprint)
    if done is not None:
        log.info("%s is up to date (fingerprint %s): nothing to do", cfg.data_dir, fingerprint[:12])
        return BlocksResult(cfg.data_dir, True, done["n_blocks"], done["tokens"], done["dropped_tail_tokens"],
                            done["documents"], done["bad_records"], time.monotonic() - started)

    log.info("tokenizing %d input file(s) with %s (vocab %d, EOD id %d) into blocks of %d tokens in %s",
             len(files), cfg.tokenizer, tok.vocab_size, tok.eod_id, cfg.seq_len + 1, cfg.data_dir)
    set_tokenizer_threads(cfg.workers)
    stats = ReadStats()
    choices: list[EngineChoice] = []
    packer = BlockPacker(cfg.seq_len + 1)
    texts = read_texts(files, text_key=cfg.text_key, on_bad_record=cfg.on_bad_record, stats=stats,
                       s3_client=s3_client)
    with BlockWriter(cfg.data_dir, cfg.seq_len + 1, token_dtype(tok.vocab_size)) as writer:
        for batch in checked_token_batches(tok, texts, batch_size=cfg.batch_size, engine=cfg.engine,
                                           add_special_tokens=cfg.add_special_tokens, workers=cfg.workers,
                                           choices=choices):
            writer.add(packer.add(batch.ids))
        if writer.n_blocks == 0:
            raise BadRecordError(f"{stats.documents} document(s) in {len(files)} input file(s) give "
                                 f"{packer.leftover} tokens: fewer than one block of seq_len + 1 = {cfg.seq_len + 1}")
        tokens = writer.n_blocks * writer.block_len
        writer.finish({"seq_len": cfg.seq_len, "vocab_size": tok.vocab_size, "eod_id": tok.eod_id,
                       "tokenizer": cfg.tokenizer, "fingerprint": fingerprint, "tokens": tokens,
                       "dropped_tail_tokens": packer.leftover, "documents": stats.documents,
                       "bad_records": stats.bad_records, "settings": settings, "engine": choices[0].engine,
                       "inputs": [dataclasses.asdict(f) for f in files],
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    for problem in stats.problems:
        log.warning("skipped bad record: %s", problem)
    seconds = time.monotonic() - started
    log.info("done: %d blocks (%d tokens, %d dropped at the end) from %d documents in %.1f s (%.0f tokens/s)",
             writer.n_blocks, tokens, packer.leftover, stats.documents, seconds, tokens / max(seconds, 1e-9))
    return BlocksResult(cfg.data_dir, False, writer.n_blocks, tokens, packer.leftover, stats.documents,
                        stats.bad_records, seconds)


def prepare_blocks_on_ray(cfg: BlockPrepConfig, cpus: int) -> BlocksResult:
    """Run `prepare_blocks` as one Ray task with `cpus` CPUs: it lands on a worker node (the head has none)."""
    import ray

    task = ray.remote(num_cpus=cpus, max_retries=0)(prepare_blocks)
    return ray.get(task.remote(dataclasses.replace(cfg, workers=cpus)))


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trn_workloads.ray_train.data", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True,
                   help="the run config (JSON): data_dir, seq_len and tokenizer come from it")
    p.add_argument("--input", dest="inputs", action="append", required=True, metavar="PATH|GLOB|DIR|S3_PREFIX",
                   help="JSONL(.gz) or Parquet input; repeat for more (s3:// prefixes: JSONL only)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or Hugging Face id (default: the config's)")
    p.add_argument("--save-tokenizer", default=None, metavar="DIR", help="also save the tokenizer to DIR")
    p.add_argument("--text-key", default="text", help="JSON key / Parquet column with the text (default: text)")
    p.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all usable CPUs)")
    p.add_argument("--batch-size", type=int, default=1000, help="documents per encode_batch call")
    p.add_argument("--on-bad-record", choices=BAD_RECORD_POLICIES, default="fail")
    p.add_argument("--add-special-tokens", action="store_true", help="add e.g. BOS to every document")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="tokenization engine, as for trn_workloads.dataprep (default auto: gigatoken when it "
                        "matches the reference on a sample of the documents)")
    p.add_argument("--force", action="store_true", help="rebuild even when the output is up to date")
    p.add_argument("--ray-cpus", type=int, default=0, metavar="N",
                   help="run as a Ray task with N CPUs on the cluster (default 0: in this process)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run = load_config(args.config)
        cfg = BlockPrepConfig(tokenizer=args.tokenizer or run.tokenizer or "", inputs=tuple(args.inputs),
                              data_dir=run.data_dir, seq_len=run.seq_len, text_key=args.text_key,
                              workers=args.workers or default_workers(), batch_size=args.batch_size,
                              on_bad_record=args.on_bad_record, add_special_tokens=args.add_special_tokens,
                              engine=args.engine, save_tokenizer=args.save_tokenizer, force=args.force).validate()
        if args.ray_cpus < 0:
            raise ConfigError(f"--ray-cpus: must be >= 0, got {args.ray_cpus}")
        result = prepare_blocks_on_ray(cfg, args.ray_cpus) if args.ray_cpus else prepare_blocks(cfg)
    except (ConfigError, InputError, BadRecordError, EngineError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    # Run from the importable module, not __main__, so --ray-cpus ships the task by reference.
    from trn_workloads.ray_train.data import main as module_main

    sys.exit(module_main())
