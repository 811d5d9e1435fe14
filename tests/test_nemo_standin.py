"""The NxD CPU stand-in (images/trn_workloads/nemo/standin.py) and its checkpoint rules (nemo/checkpoints.py):
retention as NxD Training's exp_manager has them (pure functions), then a real one-node run from the YAML it
writes: it trains to trainer.max_steps, saves where and as often as exp_manager says, writes TensorBoard events the
progress sidecar reads, and a second run resumes from the newest complete save (a partial one is never chosen)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from trn_workloads import progress
from trn_workloads.nemo import checkpoints, load_run_config, standin
from trn_workloads.nemo.nxdt import nxdt_config

TEMPLATE = "megatron_llama--{step}-{consumed_samples}"  # nxdt.py's checkpoint_callback_params.filename


def test_checkpoint_names_follow_the_yaml_template():
    name = checkpoints.checkpoint_name(TEMPLATE, step=10, consumed_samples=640)
    assert name == "megatron_llama--step=10-consumed_samples=640.0.ckpt"
    assert checkpoints.checkpoint_step(Path(name)) == 10
    assert checkpoints.checkpoint_step(Path("megatron_llama--consumed_samples=640.0.ckpt")) is None


def _save(directory: Path, step: int, mtime: float) -> Path:
    path = directory / checkpoints.checkpoint_name(TEMPLATE, step=step, consumed_samples=step * 64)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_the_newest_complete_save_is_chosen_and_a_partial_one_never(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    assert checkpoints.newest_checkpoint(ckpt) is None and checkpoints.newest_checkpoint(tmp_path / "absent") is None
    _save(ckpt, 10, 1000)
    twenty = _save(ckpt, 20, 2000)
    # a save being written (killed mid-save): its temporary name does not match *.ckpt
    partial = ckpt / f".{checkpoints.checkpoint_name(TEMPLATE, step=30, consumed_samples=1920)}.123.partial"
    partial.write_bytes(b"half")
    assert checkpoints.newest_checkpoint(ckpt) == twenty
    # newest by modification time, as NxD Training's check_resume sorts (not by the largest step)
    older_step_written_later = _save(ckpt, 5, 3000)
    assert checkpoints.newest_checkpoint(ckpt) == older_step_written_later


def test_save_top_k_keeps_the_newest_steps(tmp_path):
    saves = [_save(tmp_path, s, 1000 + s) for s in (10, 20, 30)]
    assert checkpoints.checkpoints_to_remove(saves, 2) == [saves[0]]
    assert checkpoints.checkpoints_to_remove(saves, 1) == [saves[1], saves[0]]
    assert checkpoints.checkpoints_to_remove(saves, -1) == []
    assert checkpoints.checkpoints_to_remove(saves, 1, resumed_from=saves[0]) == [saves[1]]  # the resumed-from stays
    assert [s for s in range(1, 31) if checkpoints.should_save(s, 10)] == [10, 20, 30]
    assert not checkpoints.should_save(10, None) and not checkpoints.should_save(10, 0)


def test_resume_point_follows_exp_manager(tmp_path):
    exp = nxdt_config(_cfg(tmp_path), "train")["exp_manager"]
    assert exp["resume_if_exists"] and exp["resume_ignore_no_checkpoint"]
    assert checkpoints.resume_point(exp, tmp_path) is None  # nothing saved yet: a fresh start
    (tmp_path / "checkpoints").mkdir()
    newest = _save(tmp_path / "checkpoints", 10, 1000)
    assert checkpoints.resume_point(exp, tmp_path) == newest
    assert checkpoints.resume_point({**exp, "resume_if_exists": False}, tmp_path) is None
    newest.unlink()
    with pytest.raises(checkpoints.ResumeError, match="no checkpoints in"):
        checkpoints.resume_point({**exp, "resume_ignore_no_checkpoint": False}, tmp_path)


def _cfg(tmp_path: Path, **overrides):
    return load_run_config({"tokenizer": str(tmp_path / "tok"), "dataset_prefix": str(tmp_path / "data" / "c_text_document"),
                            "run_dir": str(tmp_path / "run"), "compile_cache": str(tmp_path / "cache"),
                            "preset": "tiny", "global_batch_size": 32, "precompile_steps": 2, **overrides})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from trn_workloads.dataprep import synthetic
    from trn_workloads.dataprep.config import DataPrepConfig
    from trn_workloads.dataprep.pipeline import prepare
    root = tmp_path_factory.mktemp("nemo-standin")
    texts = list(synthetic.generate_documents(60, seed=5, median_words=60))
    synthetic.train_bpe_tokenizer(texts, root / "tok", vocab_size=300)
    synthetic.write_jsonl(root / "corpus.jsonl", texts)
    prepare(DataPrepConfig(tokenizer=str(root / "tok"), inputs=(str(root / "corpus.jsonl"),),
                           output_prefix=str(root / "data" / "c"), workers=1))
    return root


def test_one_node_trains_from_its_yaml_saves_logs_and_resumes(dataset, capsys):
    from tests.loopback import free_port
    cfg = _cfg(dataset, steps=4, checkpoint_every_n_steps=2, keep_checkpoints=1, master_port=free_port())
    standin.run(cfg, "train", rank=0, master="127.0.0.1")
    out = capsys.readouterr().out
    assert "resumed from" not in out and "trained to step 4 of 4" in out
    ckpt = Path(cfg.checkpoint_dir)
    assert [p.name for p in checkpoints.complete_checkpoints(ckpt)] == ["megatron_llama--step=4-consumed_samples=128.0.ckpt"]
    assert progress.latest_step_tensorboard(Path(cfg.run_dir)) == 4  # what the progress sidecar serves

    # a longer run of the same job: resumes from the newest complete save, a partial one beside it is ignored
    (ckpt / ".megatron_llama--step=6-consumed_samples=192.0.ckpt.99.partial").write_bytes(b"half")
    longer = _cfg(dataset, steps=6, checkpoint_every_n_steps=2, keep_checkpoints=1, master_port=free_port())
    standin.run(longer, "train", rank=0, master="127.0.0.1")
    out = capsys.readouterr().out
    assert re.search(r"resumed from \S+step=4-consumed_samples=128\.0\.ckpt \(step 4\)", out), out
    assert "trained to step 6 of 6" in out
    assert checkpoints.checkpoint_step(checkpoints.newest_checkpoint(ckpt)) == 6
    assert progress.latest_step_tensorboard(Path(cfg.run_dir)) == 6
    assert yaml.safe_load((Path(cfg.run_dir) / "nxdt-config" / "train.yaml").read_text())["trainer"]["max_steps"] == 6
