"""`python -m trn_workloads.dataprep`: JSONL corpus -> Megatron `<prefix>_text_document.bin/.idx`.

Example (the data Job of the NeMo workload):

    python -m trn_workloads.dataprep --tokenizer meta-llama/Llama-2-7b-hf \\
        --save-tokenizer /shared/tokenizers/llama2 --input s3://bucket/corpus/ \\
        --output-prefix /shared/data/run1/corpus --workers 16

Exit status: 0 done or already up to date; 2 bad settings, inputs or records, or another
run holds the output prefix (no output files were created or replaced); 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from trn_workloads.dataprep.config import (DEFAULT_BATCH_BYTES, DEFAULT_MAX_DOCUMENT_BYTES, ConfigError,
                                           DataPrepConfig, default_workers)
from trn_workloads.dataprep.documents import BAD_RECORD_POLICIES, BadRecordError, InputError
from trn_workloads.dataprep.lock import RunLockedError
from trn_workloads.dataprep.tokenization import (DEFAULT_GIGATOKEN_CACHE_BYTES, DEFAULT_VERIFY_BYTES, ENGINES,
                                                 EngineError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trn_workloads.dataprep", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True,
                   help="local directory with a (fast) tokenizer, or a Hugging Face id fetched with $HF_TOKEN")
    p.add_argument("--input", dest="inputs", action="append", required=True, metavar="PATH|GLOB|DIR|S3_PREFIX",
                   help="JSONL / JSONL.gz input; repeat for more. s3://bucket/prefix reads every *.jsonl(.gz) under it")
    p.add_argument("--output-prefix", required=True,
                   help="writes <prefix>_text_document.bin/.idx and a .manifest.json beside them")
    p.add_argument("--json-key", default="text", help="record field holding the document text (default: text)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="tokenizer threads (default: the CPUs this process may use)")
    p.add_argument("--batch-size", type=int, default=4096, help="at most this many documents per encode call "
                                                                 "(default 4096)")
    p.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES,
                   help=f"about this much text per encode call (default {DEFAULT_BATCH_BYTES})")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto (default): gigatoken when it gives the reference's ids on a sample of this run's "
                        "documents, else the Rust tokenizers library; gigatoken: fail instead of falling back")
    p.add_argument("--verify-bytes", type=int, default=DEFAULT_VERIFY_BYTES,
                   help=f"characters of the run's documents compared with the reference before gigatoken is "
                        f"used (default {DEFAULT_VERIFY_BYTES})")
    p.add_argument("--max-document-bytes", type=int, default=DEFAULT_MAX_DOCUMENT_BYTES,
                   help=f"a longer JSONL line is a bad record (default {DEFAULT_MAX_DOCUMENT_BYTES}): bounds memory")
    p.add_argument("--gigatoken-cache-bytes", type=int, default=DEFAULT_GIGATOKEN_CACHE_BYTES,
                   help=f"rebuild gigatoken's tokenizer, dropping its unbounded pre-token cache, when the process has "
                        f"grown by this much (default {DEFAULT_GIGATOKEN_CACHE_BYTES}): bounds memory")
    p.add_argument("--on-bad-record", choices=BAD_RECORD_POLICIES, default="fail",
                   help="fail at the first bad record (default) or skip and count bad records")
    p.add_argument("--add-special-tokens", action="store_true",
                   help="add the tokenizer's special tokens (e.g. BOS) to every document; default off, as Megatron")
    p.add_argument("--eod-token", default=None, help="end-of-document token (default: the tokenizer's EOS)")
    p.add_argument("--save-tokenizer", default=None, metavar="DIR",
                   help="also save the tokenizer to DIR (what training's model.tokenizer.type points at)")
    p.add_argument("--progress-interval", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--force", action="store_true", help="rebuild even when the output is up to date")
    return p


def config_from_args(args: argparse.Namespace) -> DataPrepConfig:
    return DataPrepConfig(tokenizer=args.tokenizer, inputs=tuple(args.inputs), output_prefix=args.output_prefix,
                          json_key=args.json_key, workers=args.workers, batch_size=args.batch_size,
                          batch_bytes=args.batch_bytes, engine=args.engine, verify_bytes=args.verify_bytes,
                          max_document_bytes=args.max_document_bytes,
                          gigatoken_cache_bytes=args.gigatoken_cache_bytes,
                          on_bad_record=args.on_bad_record, add_special_tokens=args.add_special_tokens,
                          eod_token=args.eod_token, save_tokenizer=args.save_tokenizer,
                          progress_interval_s=args.progress_interval, force=args.force)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    try:
        cfg.validate()
        from trn_workloads.dataprep.pipeline import prepare

        result = prepare(cfg)
    except (ConfigError, InputError, BadRecordError, RunLockedError, EngineError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"dataset_prefix": result.dataset_prefix, "skipped": result.skipped,
                      "documents": result.documents, "tokens": result.tokens, "bad_records": result.bad_records,
                      "dropped_empty": result.dropped_empty, "engine": result.engine,
                      "seconds": round(result.seconds, 2)}))
    return 0
