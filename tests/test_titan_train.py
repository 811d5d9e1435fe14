"""The TorchTitan entrypoint trains for real on CPU: torchrun with 2 gloo processes (FSDP2
over both), TorchTitan's Llama 3 debug model on a Megatron indexed dataset written by our
data prep. It runs in .venv-titan (`make setup`; torchtitan's pins clash with the main venv)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.platform_helpers import REPO
from tests.loopback import free_port

TITAN_PYTHON = REPO / ".venv-titan" / "bin" / "python"
STEPS = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from trn_workloads.dataprep import synthetic
    from trn_workloads.dataprep.config import DataPrepConfig
    from trn_workloads.dataprep.pipeline import prepare

    root = tmp_path_factory.mktemp("titan-data")
    texts = list(synthetic.generate_documents(300, seed=3, median_words=60))
    synthetic.train_bpe_tokenizer(texts, root / "tok", vocab_size=512)
    synthetic.write_jsonl(root / "docs.jsonl", texts)
    result = prepare(DataPrepConfig(tokenizer=str(root / "tok"), inputs=(str(root / "docs.jsonl"),),
                                    output_prefix=str(root / "corpus"), workers=1))
    return result.dataset_prefix


def run_config(run_dir, dataset_prefix, **overrides) -> dict:
    cfg = {"dataset_prefix": dataset_prefix, "run_dir": str(run_dir), "nodes": 1, "processes_per_node": 2,
           "model_flavor": "debugmodel", "seq_len": 32, "local_batch_size": 2, "steps": STEPS, "lr": 3e-3,
           "warmup_steps": 2, "checkpoint_every_n_steps": 6, "log_every_n_steps": 1, "compile": False,
           "peak_tflops_per_process": 1.0, "metrics_addr": "127.0.0.1"}
    cfg.update(overrides)
    return cfg


def torchrun(tmp_path, cfg: dict, *extra: str) -> subprocess.CompletedProcess:
    if not TITAN_PYTHON.exists():
        pytest.fail(f"{TITAN_PYTHON} not found: `make setup` creates .venv-titan (requirements-titan.txt)")
    config = tmp_path / f"run-{len(list(tmp_path.glob('run-*.json')))}.json"
    config.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO / "images"), "TRN_BACKEND": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(TITAN_PYTHON), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "trn_workloads.titan.train", "--config", str(config), *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir, step: int) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = run_dir / f"step_{step}.pt"
    dcp_to_torch_save(run_dir / "checkpoints" / f"step_{step}", out)
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_loss_falls_and_a_stopped_run_resumes_to_the_same_weights(tmp_path, dataset):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torchrun(tmp_path, run_config(whole, dataset, metrics_port=free_port()))  # rank 0 serves training metrics
    rows = losses(whole)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first * 0.8, [round(r["loss"], 3) for r in rows]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    assert list((whole / "tensorboard").glob("events.out.tfevents.*"))

    torchrun(tmp_path, run_config(parts, dataset), "--max-steps-this-run", "6")  # stopped after step 6
    assert sorted(p.name for p in (parts / "checkpoints").iterdir()) == ["step_6"]
    resumed = torchrun(tmp_path, run_config(parts, dataset))  # resumes from the newest checkpoint by default
    assert "resumed from" in resumed.stderr and "(step 6)" in resumed.stderr
    assert [r["step"] for r in losses(parts)] == list(range(1, STEPS + 1))

    import torch

    a, b = final_weights(whole, STEPS), final_weights(parts, STEPS)
    assert int(a["step"]) == int(b["step"]) == STEPS
    assert a["model"].keys() == b["model"].keys() and len(a["model"]) > 10
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [r["loss"] for r in losses(whole)][6:] == [r["loss"] for r in losses(parts)][6:]


def test_bad_run_config_is_a_clear_error(tmp_path):
    from trn_workloads.titan.config import ConfigError, config_from_dict

    base = run_config(tmp_path, "/data/x")
    cases = {("tensor_parallel_size", 3): "run.tensor_parallel_size: 3 does not divide the 2 NeuronCores",
             ("model_flavor", "9B"): "allowed values: debugmodel, 1B, 3B, 8B, 70B, 405B",
             ("fsdp_size", 4): "run.fsdp_size: fsdp_size 4 x tensor_parallel_size 1 must equal the world size 2",
             ("steps", "10"): "run.steps: expected an integer"}
    for (key, value), message in cases.items():
        with pytest.raises(ConfigError) as err:
            config_from_dict({**base, key: value})
        assert message in str(err.value)
    with pytest.raises(ConfigError, match="run.nodes: 3 nodes exceed the pool's limit of 2"):
        config_from_dict({**base, "nodes": 3}, max_nodes=2)


def titan_python(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    if not TITAN_PYTHON.exists():
        pytest.fail(f"{TITAN_PYTHON} not found: `make setup` creates .venv-titan")
    return subprocess.run([str(TITAN_PYTHON), *args], env={**os.environ, "PYTHONPATH": str(REPO / "images")},
                          capture_output=True, text=True, timeout=timeout)


def test_the_installed_torchtitan_has_every_name_and_signature_the_trainer_uses():
    """The image build's check (trn_workloads.titan.titan_api) against a real torchtitan: PyPI 0.3.0 here."""
    proc = titan_python("-m", "trn_workloads.titan.titan_api")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("torchtitan 0.3.0: 12 symbols and 9 call signatures fit the trainer")


def test_every_layer_attends_with_sdpa_not_the_stock_flex_attention():
    """Issue 22 item 13: model_spec takes no runtime, so the Neuron pods build what this builds."""
    code = ("from trn_workloads.titan import titan_api\n"
            "from trn_workloads.titan.config import RunConfig\n"
            "from trn_workloads.titan.train import model_spec\n"
            "api = titan_api.load()\n"
            "stock = api.model_registry('8B').model.layers\n"
            "ours = model_spec(RunConfig(dataset_prefix='/x', run_dir='/y', model_flavor='8B')).model.layers\n"
            "print(len(ours), sorted({type(l.attention.inner_attention).__qualname__ for l in stock}),"
            " sorted({type(l.attention.inner_attention).__qualname__ for l in ours}))\n")
    proc = titan_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["32", "['FlexAttention.Config']", "['ScaledDotProductAttention.Config']"]


def test_a_dataset_tokenized_for_a_bigger_vocabulary_is_refused(dataset):
    if not TITAN_PYTHON.exists():
        pytest.fail(f"{TITAN_PYTHON} not found: `make setup` creates .venv-titan")
    code = ("from trn_workloads.titan.data import TokenSamples\n"
            f"s = TokenSamples.open({dataset!r}, seq_len=32, seed=0, vocab_size=2048)\n"
            "assert s.batch(3, dp_rank=1, dp_size=2, batch_size=2).shape == (2, 33)\n"
            f"TokenSamples.open({dataset!r}, seq_len=32, seed=0, vocab_size=100)\n")
    proc = subprocess.run([str(TITAN_PYTHON), "-c", code], env={**os.environ, "PYTHONPATH": str(REPO / "images")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "was tokenized with a vocabulary of 512, larger than the model's 100" in proc.stderr
