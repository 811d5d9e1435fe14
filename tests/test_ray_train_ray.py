"""Ray Train pretraining on a local Ray cluster: 2 CPU workers, gloo, the tiny Llama, generated data.

One Ray session and one prepared data set serve the whole module; the uninterrupted run is
shared by the tests that compare against it. About a minute on 2 cores.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trn_workloads.dataprep import synthetic
from trn_workloads.ray_train.blocks import open_blocks
from trn_workloads.ray_train.config import ConfigError, config_from_dict
from trn_workloads.ray_train.data import BlockPrepConfig, prepare_blocks, prepare_blocks_on_ray
from trn_workloads.ray_train.loop import META_FILE, build_optimizer, metrics_path, restore_checkpoint, shard_name
from trn_workloads.ray_train.runtime import CpuRuntime
from trn_workloads.ray_train.train import train

pytestmark = pytest.mark.slow

IMAGES = Path(__file__).resolve().parents[1] / "images"
SEQ_LEN = 32
STEPS = 24


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    # Workers import trn_workloads from the repository, on the CPU path.
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"env_vars": {"PYTHONPATH": str(IMAGES), "TRN_BACKEND": "cpu",
                                       "TOKENIZERS_PARALLELISM": "false"}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    texts = list(synthetic.generate_documents(150, seed=1, median_words=60))
    tokenizer = synthetic.train_bpe_tokenizer(texts, root / "tok", vocab_size=300)
    return tokenizer, synthetic.write_jsonl(root / "corpus.jsonl", texts)


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory) -> Path:
    tokenizer, jsonl = corpus
    out = tmp_path_factory.mktemp("blocks")
    prepare_blocks(BlockPrepConfig(tokenizer=str(tokenizer), inputs=(str(jsonl),), data_dir=str(out),
                                   seq_len=SEQ_LEN, workers=1))
    return out


def run_config(data_dir: Path, run_dir: Path, **overrides):
    return config_from_dict({
        "data_dir": str(data_dir), "run_dir": str(run_dir), "model": "tiny", "seq_len": SEQ_LEN, "steps": STEPS,
        "global_batch_size": 8, "micro_batch_size": 2, "num_workers": 2, "tensor_parallel_size": 1,
        "learning_rate": 3e-3, "min_learning_rate": 3e-4, "warmup_steps": 3, "log_interval": 4,
        "checkpoint_interval": 12, "max_failures": 0, **overrides})


def logged(cfg) -> list[dict]:
    return [json.loads(line) for line in metrics_path(cfg).read_text().splitlines()]


def shard(checkpoint_dir: str | Path) -> dict:
    return torch.load(Path(checkpoint_dir) / shard_name(0), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(ray_session, data_dir, tmp_path_factory):
    cfg = run_config(data_dir, tmp_path_factory.mktemp("runs"), run_name="straight")
    return cfg, train(cfg)


def test_loss_decreases_and_one_input_shape_reaches_the_model(uninterrupted):
    cfg, result = uninterrupted
    history = logged(cfg)
    assert [m["step"] for m in history] == [4, 8, 12, 16, 20, 24]
    assert history[-1]["loss"] < history[0]["loss"] - 0.5, [m["loss"] for m in history]
    # Every micro-batch on both workers was [micro_batch_size, seq_len]: one graph for the Neuron compiler.
    assert {tuple(m["input_shapes"]) for m in history} == {("2x32",)}
    assert result.metrics["input_shapes"] == ["2x32"] and result.metrics["backend"] == "cpu"
    assert all(m["tokens_per_s"] > 0 for m in history)
    run_dir = Path(cfg.run_dir) / cfg.run_name
    for step in (12, 24):
        assert sorted(p.name for p in (run_dir / f"step-{step:08d}").iterdir()) == [META_FILE, shard_name(0)]
    assert Path(result.checkpoint.path) == run_dir / "step-00000024"
    meta = json.loads((run_dir / "step-00000024" / META_FILE).read_text())
    assert meta["data_position"] == {"next_step": 24, "epoch": 0, "blocks_consumed": 24 * 8}


def test_stopped_run_resumes_to_the_same_weights(uninterrupted, data_dir, tmp_path):
    straight_cfg, straight = uninterrupted
    cfg = run_config(data_dir, tmp_path / "runs", run_name="interrupted")
    first = train(cfg, stop_at_step=10)
    assert Path(first.checkpoint.path).name == "step-00000010"  # a checkpoint where it stopped
    second = train(cfg)  # a new job, same run_dir and run_name
    # The second job continued at step 11: steps 1-10 were not trained again.
    assert [m["step"] for m in logged(cfg)] == [4, 8, 10, 12, 16, 20, 24]
    assert Path(second.checkpoint.path).name == "step-00000024"
    expected, resumed = shard(straight.checkpoint.path), shard(second.checkpoint.path)
    assert expected["model"].keys() == resumed["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for param, state in expected["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][param]["exp_avg_sq"])
    assert expected["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"] == STEPS
    assert logged(cfg)[-1]["loss"] == logged(straight_cfg)[-1]["loss"]


def test_resume_refuses_a_checkpoint_made_with_other_settings(uninterrupted, data_dir):
    straight_cfg, straight = uninterrupted
    _, index = open_blocks(data_dir, seq_len=SEQ_LEN)
    changed = run_config(data_dir, straight_cfg.run_dir, run_name="straight", global_batch_size=16)
    rt = CpuRuntime(changed)
    model = rt.build_model(changed.preset, index["vocab_size"])
    optimizer = build_optimizer(model, changed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint = Path(straight.checkpoint.path)
    with pytest.raises(ConfigError, match=r"global_batch_size: the checkpoint at step 24 .* was made with "
                                          r"global_batch_size=8, the config now has 16; use a new run_name"):
        restore_checkpoint(checkpoint, rt=rt, model=model, optimizer=optimizer, scheduler=scheduler, cfg=changed,
                           index=index)
    same = run_config(data_dir, straight_cfg.run_dir, run_name="straight")
    step = restore_checkpoint(checkpoint, rt=rt, model=model, optimizer=optimizer, scheduler=scheduler, cfg=same,
                              index=index)
    assert step == STEPS
    assert torch.equal(model.lm_head.weight, shard(straight.checkpoint.path)["model"]["lm_head.weight"])


def test_data_step_runs_as_a_ray_task(ray_session, corpus, data_dir, tmp_path):
    tokenizer, jsonl = corpus
    cfg = BlockPrepConfig(tokenizer=str(tokenizer), inputs=(str(jsonl),), data_dir=str(tmp_path / "blocks"),
                          seq_len=SEQ_LEN, workers=2)
    result = prepare_blocks_on_ray(cfg, cpus=1)
    assert not result.skipped
    assert np.array_equal(open_blocks(tmp_path / "blocks", seq_len=SEQ_LEN)[0],
                          open_blocks(data_dir, seq_len=SEQ_LEN)[0])
