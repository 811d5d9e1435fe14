"""Corpus tokenization for Megatron: our pipeline vs the upstream one-document-at-a-time approach.

Both arms turn the same generated JSONL corpus (>= 50 MB, log-normal document lengths) into
Megatron `<prefix>_text_document.bin/.idx` with the same 32k byte-level BPE tokenizer
(trained here), in the same run:

- baseline: what `preprocess_data_for_megatron.py` does: a multiprocessing.Pool of --workers
  processes, each line sent to a worker that json-parses it and calls the Hugging Face
  tokenizer's `encode(text)` for that one document (imap, chunksize 25), ids sent back and
  written by the parent (with our writer, so the format is identical);
- ours: `trn_workloads.dataprep.pipeline.prepare` (reader thread + Rust `encode_batch` on
  --workers threads), end to end, including its input/tokenizer fingerprinting.

The two outputs must be byte-identical (checked). Arms alternate for --repeats rounds and
the median is reported. Run from the repository root:

    .venv/bin/python benchmarks/dataprep_bench.py        # about 3-4 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import filecmp
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "images"))

import numpy as np  # noqa: E402

from trn_workloads.dataprep import synthetic  # noqa: E402
from trn_workloads.dataprep.config import DataPrepConfig  # noqa: E402
from trn_workloads.dataprep.indexed import IndexedDatasetWriter, dataset_paths, token_dtype  # noqa: E402
from trn_workloads.dataprep.pipeline import prepare  # noqa: E402

# ----------------------------------------------------------------------- baseline (upstream style)
_worker_tokenizer = None
_worker_eod = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer, _worker_eod
    from transformers import AutoTokenizer

    _worker_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True)
    _worker_eod = _worker_tokenizer.eos_token_id


def _encode_line(line: str) -> tuple[list[int], int]:
    text = json.loads(line)["text"]
    ids = _worker_tokenizer.encode(text, add_special_tokens=False)
    return (ids + [_worker_eod] if ids else []), len(line)


def baseline(corpus: Path, tokenizer_dir: Path, prefix: str, workers: int, vocab_size: int) -> int:
    """Tokens written. One document per task item, as the upstream preprocessing script does."""
    tokens = 0
    with open(corpus, encoding="utf-8") as fin, multiprocessing.get_context("fork").Pool(
            workers, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as pool, \
            IndexedDatasetWriter(prefix, token_dtype(vocab_size)) as writer:
        for ids, _ in pool.imap(_encode_line, fin, 25):
            if ids:
                writer.add_batch(np.asarray(ids, dtype=np.int64), np.array([len(ids)]))
                tokens += len(ids)
        writer.finish()
    return tokens


# ----------------------------------------------------------------------- run

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=55.0, help="corpus size (JSONL bytes)")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--median-words", type=int, default=180,
                        help="median document length in words (log-normal spread); small = chat/tweet-like")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="dataprep-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        corpus = work / "corpus.jsonl"
        written, sample = 0, []
        with open(corpus, "w", encoding="utf-8") as f:
            for i, text in enumerate(synthetic.generate_documents(10_000_000, seed=1, median_words=args.median_words)):
                line = json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line.encode())
                if len(sample) < 4000:
                    sample.append(text)
                if written >= args.megabytes * 1e6:
                    break
        documents = i + 1
        lengths = np.array([len(t) for t in sample])
        print(f"corpus: {written / 1e6:.1f} MB, {documents} documents, characters per document "
              f"p10/median/p90/max = {np.percentile(lengths, 10):.0f}/{np.median(lengths):.0f}/"
              f"{np.percentile(lengths, 90):.0f}/{lengths.max()} ({time.perf_counter() - t0:.0f}s to generate)")
        t0 = time.perf_counter()
        tokenizer_dir = synthetic.train_bpe_tokenizer(sample, work / "tokenizer", vocab_size=args.vocab_size)
        print(f"tokenizer: byte-level BPE, vocab {args.vocab_size}, trained on {len(sample)} documents "
              f"({time.perf_counter() - t0:.0f}s)")
        print(f"workers: {args.workers} (os.cpu_count() = {os.cpu_count()}), batch size {args.batch_size}\n")

        base_rates, our_rates, ratios, tokens = [], [], [], 0
        for round_no in range(1, args.repeats + 1):
            for p in work.glob("out-*"):
                p.unlink()
            t = time.perf_counter()
            base_tokens = baseline(corpus, tokenizer_dir, str(work / "out-base_text_document"), args.workers,
                                   args.vocab_size + 3)
            base_s = time.perf_counter() - t
            cfg = DataPrepConfig(tokenizer=str(tokenizer_dir), inputs=(str(corpus),), output_prefix=str(work / "out-ours"),
                                 workers=args.workers, batch_size=args.batch_size, force=True,
                                 progress_interval_s=3600)
            t = time.perf_counter()
            result = prepare(cfg)
            ours_s = time.perf_counter() - t
            tokens = result.tokens
            base_rates.append(base_tokens / base_s)
            our_rates.append(result.tokens / ours_s)
            ratios.append(base_s / ours_s)
            print(f"round {round_no}: baseline {base_s:6.1f}s {base_tokens / base_s:>10,.0f} tokens/s | "
                  f"ours {ours_s:6.1f}s {result.tokens / ours_s:>10,.0f} tokens/s | "
                  f"ratio {base_s / ours_s:.2f}x")
            identical = all(filecmp.cmp(a, b, shallow=False) for a, b in
                            zip(dataset_paths(work / "out-base_text_document"), dataset_paths(result.dataset_prefix)))
            assert base_tokens == result.tokens and identical, "baseline and pipeline outputs differ"

        base, ours = statistics.median(base_rates), statistics.median(our_rates)
        print(f"\n{tokens:,} tokens per run; outputs byte-identical (.bin and .idx): yes")
        print(f"baseline (Pool x{args.workers}, encode per document): {base:>12,.0f} tokens/s")
        print(f"ours (encode_batch on {args.workers} threads):        {ours:>12,.0f} tokens/s")
        # Rounds run back to back, so each round's ratio sees the same machine load; the
        # median of those ratios is the headline (the medians of the rates are shown too).
        print(f"ratio ours/baseline: median of rounds {statistics.median(ratios):.2f}x "
              f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x; ratio of median rates {ours / base:.2f}x; target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
