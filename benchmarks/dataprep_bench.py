"""Corpus tokenization for Megatron: ours end to end vs raw gigatoken vs per-document Hugging Face.

Two generated JSONL corpora (log-normal document lengths; written to a temporary directory at
run time, never kept): `--megabytes` (default 55 MB) and `--big-gigabytes` (default 1.0 GB;
from the same generator and seed, 30,000 distinct documents drawn again in random order),
and one 32k byte-level BPE tokenizer trained here. Three arms, each in its own fresh
subprocess (so its peak RSS, read from /proc/self/status VmHWM, is its own):

- ours: `trn_workloads.dataprep.pipeline.prepare`, end to end: tokenizer load, engine choice
  (gigatoken checked against the reference on a sample), chunked read + JSON parse + record
  checks, encode, EOD, writing `.bin/.idx` under temporary names, rename, manifest;
- raw gigatoken: `gigatoken.Tokenizer(dir).encode_files(JsonlFileSource([corpus]))`, the
  library's fastest API: the whole corpus parsed in Rust and held in memory, nothing written;
- per-document baseline: what upstream `preprocess_data_for_megatron.py` does, a
  multiprocessing.Pool of --workers processes, one `PreTrainedTokenizerFast.encode(text)` per
  document (imap, chunksize 25), ids written by the parent with our writer. On the big corpus
  it runs on the first `--baseline-megabytes` only (its rate is uniform; a full pass would
  take most of an hour on 2 cores).

Timings exclude interpreter start and imports, also the baseline's Pool start-up (the same
for every corpus size), and include everything else. Outputs are checked identical: ours'
`.bin` equals the raw gigatoken ids with EOD after each document, and the baseline's
`.bin/.idx` (a prefix of ours on the big corpus).
Run from the repository root:

    .venv/bin/python benchmarks/dataprep_bench.py      # about 10 minutes on 2 shared cores
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "images"))

TARGET_VS_GIGATOKEN = 0.8
TARGET_VS_BASELINE = 20.0
TARGET_RSS_MB = 400


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


# ----------------------------------------------------------------------- arms (run in a subprocess)

def arm_ours(corpus: str, tokenizer: str, out: str, workers: int) -> dict:
    import gigatoken  # noqa: F401 - prepare() imports these lazily; imports are outside every arm's clock
    import tokenizers  # noqa: F401

    from trn_workloads.dataprep.config import DataPrepConfig
    from trn_workloads.dataprep.pipeline import prepare

    t = time.perf_counter()
    result = prepare(DataPrepConfig(tokenizer=tokenizer, inputs=(corpus,), output_prefix=out, workers=workers,
                                    force=True, progress_interval_s=3600))
    seconds = time.perf_counter() - t
    digest = hashlib.sha256()
    with open(result.bin_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"tokens": result.tokens, "documents": result.documents, "seconds": seconds, "engine": result.engine,
            "bin_sha256": digest.hexdigest()}


def arm_gigatoken(corpus: str, tokenizer: str, out: str, workers: int) -> dict:
    import gigatoken
    import numpy as np

    from trn_workloads.dataprep.tokenization import load_tokenizer

    eod = load_tokenizer(tokenizer).eod_id  # outside the timing: only for the identity check below
    t = time.perf_counter()
    rows = gigatoken.Tokenizer(tokenizer).encode_files(gigatoken.JsonlFileSource([corpus], field="text"))
    offsets = np.asarray(rows.layout.offsets.data)
    seconds = time.perf_counter() - t
    counts = np.diff(offsets)
    flat = np.asarray(rows.layout.content.data)[offsets[0]:offsets[-1]]
    kept = counts > 0
    with_eod = np.insert(flat, np.cumsum(counts)[kept], eod).astype(np.uint16)  # the .bin layout (vocab < 65500)
    return {"tokens": int(len(flat) + kept.sum()), "documents": int(kept.sum()), "seconds": seconds,
            "bin_sha256": hashlib.sha256(with_eod.tobytes()).hexdigest()}


_worker_encode = None
_worker_eod = None


def _init_worker(tokenizer_dir: str, eod_id: int, ready) -> None:
    global _worker_encode, _worker_eod
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    _worker_encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    _worker_eod = eod_id
    ready.wait()  # the parent starts its clock once every worker has imported transformers


def _encode_line(line: str) -> list[int]:
    ids = _worker_encode(json.loads(line)["text"])
    return ids + [_worker_eod] if ids else []


def _lines(corpus: str, limit_bytes: int):
    done = 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            done += len(line.encode())
            yield line
            if limit_bytes and done >= limit_bytes:
                return


def arm_baseline(corpus: str, tokenizer: str, out: str, workers: int, limit_bytes: int = 0) -> dict:
    import numpy as np

    from trn_workloads.dataprep.indexed import IndexedDatasetWriter, token_dtype
    from trn_workloads.dataprep.tokenization import load_tokenizer

    tok = load_tokenizer(tokenizer)
    tokens = documents = 0
    context = multiprocessing.get_context("fork")
    ready = context.Barrier(workers + 1)
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer, tok.eod_id, ready)) as pool, \
            IndexedDatasetWriter(out, token_dtype(tok.vocab_size)) as writer:
        ready.wait()  # worker start-up (importing transformers: seconds) is not per-corpus work
        t = time.perf_counter()
        for ids in pool.imap(_encode_line, _lines(corpus, limit_bytes), 25):
            if ids:
                writer.add_batch(np.asarray(ids, dtype=np.int64), np.array([len(ids)]))
                tokens += len(ids)
                documents += 1
        writer.finish()
    return {"tokens": tokens, "documents": documents, "seconds": time.perf_counter() - t}


ARMS = {"ours": arm_ours, "gigatoken": arm_gigatoken, "baseline": arm_baseline}


def run_arm(arm: str, corpus: Path, tokenizer: Path, out: Path, workers: int, limit_bytes: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--arm", arm, "--corpus", str(corpus), "--tokenizer", str(tokenizer),
           "--out", str(out), "--workers", str(workers), "--limit-bytes", str(limit_bytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------- corpus

def write_corpus(path: Path, megabytes: float, seed: int, sample: list[str] | None = None,
                 distinct: int = 0) -> tuple[int, int]:
    """Generated documents up to `megabytes`; with `distinct`, documents after the first
    `distinct` ones are drawn again (in random order) from those: generating 1 GB of new text
    in Python takes minutes, and the tokenizer's work per document is the same."""
    import random

    from trn_workloads.dataprep import synthetic

    rng = random.Random(seed)
    pool: list[str] = []
    generated = synthetic.generate_documents(10**9, seed=seed)
    written = documents = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            if distinct and len(pool) >= distinct:
                text = pool[rng.randrange(distinct)]
            else:
                text = next(generated)
                if distinct:
                    pool.append(text)
            line = json.dumps({"id": documents, "text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())
            documents += 1
            if sample is not None and len(sample) < 4000:
                sample.append(text)
    return written, documents


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=55.0, help="small corpus size (JSONL bytes)")
    parser.add_argument("--big-gigabytes", type=float, default=1.0, help="big corpus size (0: skip it)")
    parser.add_argument("--baseline-megabytes", type=float, default=50.0,
                        help="the per-document baseline runs on this much of the big corpus")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds on the small corpus (big: one)")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--limit-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.arm:  # one arm, in this fresh process
        os.environ["RAYON_NUM_THREADS"] = str(args.workers)
        kwargs = {"limit_bytes": args.limit_bytes} if args.arm == "baseline" else {}
        result = ARMS[args.arm](args.corpus, args.tokenizer, args.out, args.workers, **kwargs)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return 0

    from trn_workloads.dataprep import synthetic
    from trn_workloads.dataprep.indexed import dataset_paths

    print(f"load average at start (1/5/15 min): {load_average()}; {os.cpu_count()} CPUs; workers {args.workers}")
    with tempfile.TemporaryDirectory(prefix="dataprep-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        sample: list[str] = []
        small = work / "small.jsonl"
        small_bytes, small_docs = write_corpus(small, args.megabytes, seed=1, sample=sample)
        tokenizer = synthetic.train_bpe_tokenizer(sample, work / "tokenizer", vocab_size=args.vocab_size)
        print(f"small corpus: {small_bytes / 1e6:.1f} MB, {small_docs} documents; byte-level BPE tokenizer "
              f"(asked vocab {args.vocab_size}) trained on {len(sample)} of them ({time.perf_counter() - t0:.0f}s)")
        corpora = [("small", small, args.repeats, 0)]
        if args.big_gigabytes > 0:
            t0 = time.perf_counter()
            big = work / "big.jsonl"
            big_bytes, big_docs = write_corpus(big, args.big_gigabytes * 1000, seed=1, distinct=30_000)
            print(f"big corpus: {big_bytes / 1e9:.2f} GB, {big_docs} documents (30,000 distinct, the rest drawn "
                  f"again from those; {time.perf_counter() - t0:.0f}s)")
            corpora.append(("big", big, 1, int(args.baseline_megabytes * 1e6)))

        summary = []
        for name, corpus, repeats, baseline_limit in corpora:
            rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
            rss: dict[str, float] = {}
            ratios_g, ratios_b = [], []
            for round_no in range(repeats):
                order = list(ARMS)[round_no % 3:] + list(ARMS)[:round_no % 3]  # rotate: no arm always first
                res = {}
                for arm in order:
                    out = work / f"out-{name}-{arm}"
                    res[arm] = run_arm(arm, corpus, tokenizer, out, args.workers,
                                       baseline_limit if arm == "baseline" else 0)
                    rates[arm].append(res[arm]["tokens"] / res[arm]["seconds"])
                    rss[arm] = max(rss.get(arm, 0.0), res[arm]["peak_rss_mb"])
                ours = res["ours"]
                assert ours["engine"] == "gigatoken", ours
                assert ours["bin_sha256"] == res["gigatoken"]["bin_sha256"], "ours and raw gigatoken differ"
                ours_bin, ours_idx = dataset_paths(f"{work}/out-{name}-ours_text_document")
                base_bin, base_idx = dataset_paths(f"{work}/out-{name}-baseline")
                if baseline_limit:
                    with open(ours_bin, "rb") as f:
                        assert f.read(base_bin.stat().st_size) == base_bin.read_bytes(), "baseline differs"
                else:
                    assert ours_bin.read_bytes() == base_bin.read_bytes(), "baseline .bin differs"
                    assert ours_idx.read_bytes() == base_idx.read_bytes(), "baseline .idx differs"
                ratios_g.append(rates["ours"][-1] / rates["gigatoken"][-1])
                ratios_b.append(rates["ours"][-1] / rates["baseline"][-1])
                print(f"{name} round {round_no + 1} (order {', '.join(order)}; load {load_average()}): "
                      + " | ".join(f"{arm} {res[arm]['seconds']:.2f}s {rates[arm][-1] / 1e6:.2f} M tok/s "
                                   f"{res[arm]['peak_rss_mb']:.0f} MB" for arm in ARMS))
            tokens = ours["tokens"]
            print(f"\n{name}: {tokens:,} tokens (ids + EOD), {ours['documents']:,} documents; ours' .bin equal to "
                  f"raw gigatoken's ids + EOD and to the per-document baseline's output"
                  f"{' (its first ' + str(baseline_limit // 10**6) + ' MB)' if baseline_limit else ''}: yes")
            for arm in ARMS:
                print(f"  {arm:>10}: {statistics.median(rates[arm]) / 1e6:8.2f} M tokens/s (median of {repeats}), "
                      f"peak RSS {rss[arm]:6.0f} MB")
            g, b = statistics.median(ratios_g), statistics.median(ratios_b)
            print(f"  ours / raw gigatoken: {g:.2f}x (target >= {TARGET_VS_GIGATOKEN}x: "
                  f"{'met' if g >= TARGET_VS_GIGATOKEN else 'NOT met'})")
            print(f"  ours / per-document baseline: {b:.1f}x (target >= {TARGET_VS_BASELINE:.0f}x: "
                  f"{'met' if b >= TARGET_VS_BASELINE else 'NOT met'})\n")
            summary.append((name, rss["ours"]))
        for name, ours_rss in summary:
            if name == "big":
                print(f"ours' peak RSS on the big corpus: {ours_rss:.0f} MB (target <= {TARGET_RSS_MB} MB: "
                      f"{'met' if ours_rss <= TARGET_RSS_MB else 'NOT met'})")
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
