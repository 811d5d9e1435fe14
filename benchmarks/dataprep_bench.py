"""Corpus tokenization for Megatron: our pipeline vs the upstream one-document-at-a-time approach.

All arms turn the same generated JSONL corpus (>= 50 MB, log-normal document lengths) into
Megatron `<prefix>_text_document.bin/.idx` with the same 32k byte-level BPE tokenizer
(trained here), in the same run. The two baselines do what `preprocess_data_for_megatron.py`
does: a multiprocessing.Pool of --workers processes, each line sent to a worker that
json-parses it and encodes that one document (imap, chunksize 25), ids sent back and written
by the parent (with our writer, so the format is identical). They differ only in the encoder:

- baseline `tokenizers`: the raw Rust `tokenizers.Tokenizer.encode(text, add_special_tokens=False)`;
- baseline `transformers`: a `transformers.PreTrainedTokenizerFast` wrapping the same trained
  tokenizer, `.encode(text, add_special_tokens=False)`: the Hugging Face tokenizer object
  upstream's `--tokenizer-library=huggingface` builds (through NeMo's AutoTokenizer wrapper,
  whose own per-call Python is not included here);
- ours: `trn_workloads.dataprep.pipeline.prepare` (reader thread + Rust `encode_batch_fast` on
  --workers threads), end to end, including its input/tokenizer fingerprinting.

Every output must be byte-identical to ours (checked each round). The order of the arms
rotates each round, for --repeats rounds; the median of the per-round ratios is reported.
Run from the repository root:

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
from trn_workloads.dataprep.tokenization import load_tokenizer  # noqa: E402

# ----------------------------------------------------------------------- baselines (upstream style)
# Set in each Pool worker by its initializer: text -> ids (no special tokens), and the EOD id.
_worker_encode = None
_worker_eod = None


def _init_tokenizers_worker(tokenizer_dir: str, eod_id: int) -> None:
    global _worker_encode, _worker_eod
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    _worker_encode = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    _worker_eod = eod_id


def _init_transformers_worker(tokenizer_dir: str, eod_id: int) -> None:
    global _worker_encode, _worker_eod
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    _worker_encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    _worker_eod = eod_id


BASELINES = {
    "tokenizers": (_init_tokenizers_worker, "tokenizers.Tokenizer.encode per document"),
    "transformers": (_init_transformers_worker, "PreTrainedTokenizerFast.encode per document"),
}


def _encode_line(line: str) -> tuple[list[int], int]:
    ids = _worker_encode(json.loads(line)["text"])
    return (ids + [_worker_eod] if ids else []), len(line)


def baseline(kind: str, corpus: Path, tokenizer_dir: Path, prefix: str, workers: int, vocab_size: int,
             eod_id: int) -> int:
    """Tokens written. One document per task item, as the upstream preprocessing script does."""
    init, _ = BASELINES[kind]
    tokens = 0
    with open(corpus, encoding="utf-8") as fin, multiprocessing.get_context("fork").Pool(
            workers, initializer=init, initargs=(str(tokenizer_dir), eod_id)) as pool, \
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

        loaded = load_tokenizer(str(tokenizer_dir))
        arms = (*BASELINES, "ours")
        seconds: dict[str, list[float]] = {arm: [] for arm in arms}
        tokens = 0
        for round_no in range(1, args.repeats + 1):
            for p in work.glob("out-*"):
                p.unlink()
            k = (round_no - 1) % len(arms)
            order = arms[k:] + arms[:k]  # rotate, so no arm always runs first
            written_tokens = {}
            for arm in order:
                t = time.perf_counter()
                if arm == "ours":
                    cfg = DataPrepConfig(tokenizer=str(tokenizer_dir), inputs=(str(corpus),),
                                         output_prefix=str(work / "out-ours"), workers=args.workers,
                                         batch_size=args.batch_size, force=True, progress_interval_s=3600)
                    result = prepare(cfg)
                    written_tokens[arm] = result.tokens
                else:
                    written_tokens[arm] = baseline(arm, corpus, tokenizer_dir, str(work / f"out-{arm}_text_document"),
                                                   args.workers, loaded.vocab_size, loaded.eod_id)
                seconds[arm].append(time.perf_counter() - t)
            tokens = written_tokens["ours"]
            for kind in BASELINES:
                identical = all(filecmp.cmp(a, b, shallow=False) for a, b in zip(
                    dataset_paths(work / f"out-{kind}_text_document"), dataset_paths(result.dataset_prefix)))
                assert written_tokens[kind] == tokens and identical, f"baseline {kind} and pipeline outputs differ"
            timings = [f"{arm} {seconds[arm][-1]:5.1f}s {tokens / seconds[arm][-1]:>10,.0f} tok/s" for arm in arms]
            round_ratios = [f"ours/{kind} {seconds[kind][-1] / seconds['ours'][-1]:.2f}x" for kind in BASELINES]
            print(f"round {round_no} (order {', '.join(order)}): " + " | ".join(timings) + " | " + ", ".join(round_ratios))

        print(f"\n{tokens:,} tokens per run; every baseline's output byte-identical to ours (.bin and .idx): yes")
        for arm in arms:
            what = f"Pool x{args.workers}, {BASELINES[arm][1]}" if arm in BASELINES else \
                f"encode_batch_fast on {args.workers} threads"
            print(f"{arm:>12} ({what}): {tokens / statistics.median(seconds[arm]):>12,.0f} tokens/s (median)")
        # Arms of a round run back to back, so each round's ratio sees the same machine load; the
        # median of those ratios is the headline.
        for kind in BASELINES:
            ratios = [b / o for b, o in zip(seconds[kind], seconds["ours"])]
            median = statistics.median(ratios)
            print(f"ratio ours/{kind}: median of rounds {median:.2f}x (min {min(ratios):.2f}x, "
                  f"max {max(ratios):.2f}x); target >= 3x: {'met' if median >= 3 else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
