"""Ray Train pretraining without Ray: config, token blocks, the data step, batch order, LR schedule, runtime picks.

The training itself (a local Ray cluster with 2 CPU workers) is in test_ray_train_ray.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trn_workloads.dataprep import synthetic
from trn_workloads.dataprep.documents import BadRecordError, InputError
from trn_workloads.ray_train import data as data_step
from trn_workloads.ray_train import train as train_cli
from trn_workloads.ray_train.batches import BatchPlan
from trn_workloads.ray_train.blocks import (BlockFormatError, BlockPacker, BlockWriter, block_paths, open_blocks,
                                            read_index)
from trn_workloads.ray_train.config import ConfigError, config_from_dict, load_config
from trn_workloads.ray_train.data import BlockPrepConfig, prepare_blocks
from trn_workloads.ray_train.loop import lr_multiplier
from trn_workloads.ray_train.model import padded_vocab_size
from trn_workloads.ray_train.runtime import CpuRuntime, neuron_compiler_env, worker_runtime

EOD = 2  # </s> in synthetic.train_bpe_tokenizer
SEQ_LEN = 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    return synthetic.train_bpe_tokenizer(synthetic.generate_documents(200, seed=5), out, vocab_size=300)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(synthetic.generate_documents(120, seed=9, median_words=40)) + ["", "café 東京 😀"]


def expected_blocks(tokenizer_dir: Path, texts: list[str], seq_len: int) -> tuple[np.ndarray, int]:
    """The reference: every document encoded on its own + EOD, concatenated, cut into seq_len + 1 windows."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    stream = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        stream += ids + [EOD] if ids else []
    n = len(stream) // (seq_len + 1)
    return np.array(stream[:n * (seq_len + 1)]).reshape(n, seq_len + 1), len(stream) - n * (seq_len + 1)


def prep(tokenizer_dir, inputs, data_dir, **kw) -> BlockPrepConfig:
    return BlockPrepConfig(tokenizer=str(tokenizer_dir), inputs=tuple(str(i) for i in inputs), data_dir=str(data_dir),
                           seq_len=kw.pop("seq_len", SEQ_LEN), workers=1, batch_size=kw.pop("batch_size", 16), **kw)


def write_parquet(path: Path, texts: list[str | None], column: str = "text") -> Path:
    pq.write_table(pa.table({"id": list(range(len(texts))), column: texts}), path, row_group_size=25)
    return path


def run_config(tmp_path: Path, **overrides) -> dict:
    return {"data_dir": str(tmp_path / "data"), "run_dir": str(tmp_path / "runs"), "model": "tiny",
            "seq_len": SEQ_LEN, "steps": 10, "global_batch_size": 8, "micro_batch_size": 2, "num_workers": 2,
            "tensor_parallel_size": 1, "warmup_steps": 2, **overrides}


# --------------------------------------------------------------------------- config


def test_production_defaults_are_valid_and_split_the_batch():
    cfg = config_from_dict({"data_dir": "/shared/data/blocks", "run_dir": "/shared/runs/r1"})
    assert (cfg.model, cfg.seq_len, cfg.tensor_parallel_size, cfg.num_workers) == ("llama2-7b", 4096, 8, 32)
    assert cfg.data_parallel_size == 4 and cfg.grad_accumulation_steps == 64  # 256 = 1 x 4 x 64
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("change, message", [
    ({"model": "llama3-70b"}, "model: must be one of ['llama2-7b', 'tiny'], got 'llama3-70b'"),
    ({"tensor_parallel_size": 3}, "tensor_parallel_size: must be one of [1, 2, 4, 8, 16, 32]"),
    ({"tensor_parallel_size": 4, "num_workers": 2}, "num_workers: 2 is not a multiple of tensor_parallel_size (4)"),
    ({"tensor_parallel_size": 8, "num_workers": 8}, "tensor_parallel_size: 8 must divide num_attention_heads (4)"),
    ({"global_batch_size": 6}, "global_batch_size: 6 must be a multiple of micro_batch_size x data parallel size"),
    ({"seq_len": 1024}, "seq_len: must be 8 to 512 for model 'tiny', got 1024"),
    ({"warmup_steps": 10}, "warmup_steps: must be below steps (10)"),
    ({"min_learning_rate": 1.0}, "min_learning_rate: must be between 0 and learning_rate"),
    ({"steps": 0}, "steps: must be >= 1, got 0"),
    ({"steps": "10"}, "steps: expected an integer, got '10'"),
    ({"steps": True}, "steps: expected an integer, got True"),
    ({"learning_rate": "fast"}, "learning_rate: expected a number"),
    ({"run_name": "a/b"}, "run_name: must be a plain name"),
    ({"stepz": 10}, "stepz: unknown key; allowed keys:"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(run_config(tmp_path, **change))
    assert message in str(err.value)


def test_missing_required_key_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="run_dir: required key is missing"):
        config_from_dict({"data_dir": "/d"})
    bad = tmp_path / "run.json"
    bad.write_text('{"data_dir": "/d",\n "run_dir": }')
    with pytest.raises(ConfigError, match=r"run.json: invalid JSON at line 2"):
        load_config(bad)
    bad.write_text(json.dumps(run_config(tmp_path, model="huge")))
    with pytest.raises(ConfigError, match=r"run.json: model: must be one of"):
        load_config(bad)


def test_train_cli_reports_config_errors_with_exit_2(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_config(tmp_path, micro_batch_size=3)))
    assert train_cli.main(["--config", str(path)]) == 2
    assert "global_batch_size: 8 must be a multiple of micro_batch_size x data parallel size (3 x 2 = 6" in \
        capsys.readouterr().err
    path.write_text(json.dumps(run_config(tmp_path)))
    assert train_cli.main(["--config", str(path), "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "tiny"


# --------------------------------------------------------------------------- blocks


def test_packer_cuts_the_concatenated_stream_into_windows():
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 1000, size=int(n)) for n in rng.integers(0, 40, size=50)]
    packer = BlockPacker(17)
    blocks = np.concatenate([packer.add(c) for c in chunks])
    stream = np.concatenate(chunks)
    n = len(stream) // 17
    assert np.array_equal(blocks, stream[:n * 17].reshape(n, 17))
    assert packer.leftover == len(stream) - n * 17


def test_writer_keeps_previous_output_until_finish_and_cleans_up_on_error(tmp_path):
    with BlockWriter(tmp_path, 4, np.uint16) as w:
        w.add(np.arange(8).reshape(2, 4))
        w.finish({"seq_len": 3, "fingerprint": "first"})
    with pytest.raises(RuntimeError, match="disk full"):
        with BlockWriter(tmp_path, 4, np.uint16) as w:
            w.add(np.arange(12).reshape(3, 4))
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.bin", "index.json"]
    blocks, index = open_blocks(tmp_path, seq_len=3)
    assert index["fingerprint"] == "first" and blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="does not fit uint16"):
        with BlockWriter(tmp_path, 4, np.uint16) as w:
            w.add(np.full((1, 4), 70000))


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(BlockFormatError, match=r"index.json: not found; run the data step"):
        read_index(tmp_path)
    with BlockWriter(tmp_path, 4, np.int32) as w:
        w.add(np.arange(8).reshape(2, 4))
        w.finish({"seq_len": 3})
    with pytest.raises(BlockFormatError, match="blocks were made for seq_len 3, the run config has seq_len 8"):
        open_blocks(tmp_path, seq_len=8)
    bin_path, _ = block_paths(tmp_path)
    bin_path.write_bytes(bin_path.read_bytes()[:-4])  # truncated
    with pytest.raises(BlockFormatError, match=r"blocks.bin: 28 bytes, index.json says 2 blocks x 4 x int32 = 32"):
        read_index(tmp_path)


# --------------------------------------------------------------------------- data step


def test_jsonl_blocks_equal_the_token_stream_cut_into_windows(tokenizer_dir, texts, tmp_path):
    a = synthetic.write_jsonl(tmp_path / "a.jsonl", texts[:70])
    b = synthetic.write_jsonl(tmp_path / "b.jsonl.gz", texts[70:])
    result = prepare_blocks(prep(tokenizer_dir, [a, b], tmp_path / "data"))
    expected, tail = expected_blocks(tokenizer_dir, texts, SEQ_LEN)
    blocks, index = open_blocks(tmp_path / "data", seq_len=SEQ_LEN)
    assert np.array_equal(blocks, expected) and blocks.dtype == np.uint16
    assert (result.n_blocks, result.dropped_tail_tokens, result.documents) == (len(expected), tail, len(texts))
    assert (index["n_blocks"], index["block_len"], index["eod_id"], index["dropped_tail_tokens"]) == \
        (len(expected), SEQ_LEN + 1, EOD, tail)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["blocks.bin", "index.json"]


def test_parquet_gives_the_same_blocks_as_jsonl(tokenizer_dir, texts, tmp_path):
    (tmp_path / "pq").mkdir()
    write_parquet(tmp_path / "pq" / "train-00000.parquet", texts[:50], column="content")
    write_parquet(tmp_path / "pq" / "train-00001.parquet", texts[50:], column="content")
    prepare_blocks(prep(tokenizer_dir, [tmp_path / "pq"], tmp_path / "from_dir", text_key="content"))
    prepare_blocks(prep(tokenizer_dir, [tmp_path / "pq" / "train-*.parquet"], tmp_path / "from_glob",
                        text_key="content"))
    expected, _ = expected_blocks(tokenizer_dir, texts, SEQ_LEN)
    for out in ("from_dir", "from_glob"):
        assert np.array_equal(open_blocks(tmp_path / out, seq_len=SEQ_LEN)[0], expected)


def test_mixed_inputs_keep_the_given_order(tokenizer_dir, texts, tmp_path):
    parquet = write_parquet(tmp_path / "first.parquet", texts[60:])
    jsonl = synthetic.write_jsonl(tmp_path / "second.jsonl", texts[:60])
    prepare_blocks(prep(tokenizer_dir, [parquet, jsonl], tmp_path / "data"))
    expected, _ = expected_blocks(tokenizer_dir, texts[60:] + texts[:60], SEQ_LEN)
    assert np.array_equal(open_blocks(tmp_path / "data", seq_len=SEQ_LEN)[0], expected)


def test_rerun_skips_and_a_changed_input_or_setting_rebuilds(tokenizer_dir, texts, tmp_path):
    path = synthetic.write_jsonl(tmp_path / "a.jsonl", texts)
    first = prepare_blocks(prep(tokenizer_dir, [path], tmp_path / "data"))
    assert not first.skipped
    again = prepare_blocks(prep(tokenizer_dir, [path], tmp_path / "data"))
    assert again.skipped and again.n_blocks == first.n_blocks
    assert not prepare_blocks(prep(tokenizer_dir, [path], tmp_path / "data", seq_len=8)).skipped
    assert read_index(tmp_path / "data")["seq_len"] == 8
    synthetic.write_jsonl(path, texts[:-5])
    changed = prepare_blocks(prep(tokenizer_dir, [path], tmp_path / "data", seq_len=8))
    assert not changed.skipped and changed.documents == len(texts) - 5


def test_bad_records_fail_with_file_and_row_or_are_skipped(tokenizer_dir, texts, tmp_path):
    bad = write_parquet(tmp_path / "bad.parquet", texts[:30] + [None] + texts[30:60])
    with pytest.raises(BadRecordError, match=r"bad.parquet:row 31: 'text' is null"):
        prepare_blocks(prep(tokenizer_dir, [bad], tmp_path / "data"))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    result = prepare_blocks(prep(tokenizer_dir, [bad], tmp_path / "data", on_bad_record="skip"))
    assert (result.bad_records, result.documents) == (1, 60)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"txt": "wrong key"}\n')
    with pytest.raises(BadRecordError, match=r"bad.jsonl:2: missing key 'text'"):
        prepare_blocks(prep(tokenizer_dir, [jsonl], tmp_path / "data2"))


def test_input_problems_are_clear_errors(tokenizer_dir, texts, tmp_path):
    wrong_column = write_parquet(tmp_path / "x.parquet", texts[:10], column="body")
    with pytest.raises(InputError, match=r"x.parquet: no column 'text' \(columns: id, body\)"):
        prepare_blocks(prep(tokenizer_dir, [wrong_column], tmp_path / "data"))
    with pytest.raises(InputError, match="matches no files"):
        prepare_blocks(prep(tokenizer_dir, [tmp_path / "none-*.parquet"], tmp_path / "data"))
    short = synthetic.write_jsonl(tmp_path / "short.jsonl", ["a few words"])
    with pytest.raises(BadRecordError, match=r"fewer than one block of seq_len \+ 1 = 17"):
        prepare_blocks(prep(tokenizer_dir, [short], tmp_path / "data"))
    assert not (tmp_path / "data" / "blocks.bin.partial").exists()


def test_data_cli_takes_paths_from_the_run_config(tokenizer_dir, texts, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_config(tmp_path, tokenizer=str(tokenizer_dir))))
    corpus = synthetic.write_jsonl(tmp_path / "a.jsonl", texts)
    assert data_step.main(["--config", str(path), "--input", str(corpus), "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["n_blocks"] == len(expected_blocks(tokenizer_dir, texts, SEQ_LEN)[0])
    assert read_index(tmp_path / "data")["seq_len"] == SEQ_LEN
    path.write_text(json.dumps(run_config(tmp_path)))  # no tokenizer anywhere
    assert data_step.main(["--config", str(path), "--input", str(corpus)]) == 2
    assert "--tokenizer: must name a tokenizer directory" in capsys.readouterr().err


def test_precompile_on_cpu_checks_config_and_data_without_ray(tokenizer_dir, texts, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_config(tmp_path)))
    assert train_cli.main(["--config", str(path), "--precompile"]) == 2
    assert "index.json: not found; run the data step" in capsys.readouterr().err
    prepare_blocks(prep(tokenizer_dir, [synthetic.write_jsonl(tmp_path / "a.jsonl", texts)], tmp_path / "data"))
    assert train_cli.main(["--config", str(path), "--precompile"]) == 0
    path.write_text(json.dumps(run_config(tmp_path, global_batch_size=4096, micro_batch_size=2048)))
    assert train_cli.main(["--config", str(path), "--precompile"]) == 2
    assert "global_batch_size: the data has" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- batch order, schedule


def test_batch_plan_is_deterministic_disjoint_and_drops_the_partial_batch():
    plan = BatchPlan(n_blocks=103, global_batch_size=12, micro_batch_size=2, data_parallel_size=3, seed=1)
    assert (plan.steps_per_epoch, plan.accumulation_steps) == (8, 2)
    epoch0 = np.concatenate([plan.global_batch(s) for s in range(8)])
    assert len(set(epoch0.tolist())) == 96  # 8 full batches, 7 blocks left out, none repeated
    assert not np.array_equal(plan.global_batch(8), plan.global_batch(0))  # a new permutation
    for step in (0, 5, 8, 13):
        per_rank = [np.concatenate(plan.micro_batches(step, r)) for r in range(3)]
        assert sorted(np.concatenate(per_rank).tolist()) == sorted(plan.global_batch(step).tolist())
        assert all(len(m) == 2 for r in range(3) for m in plan.micro_batches(step, r))
    again = BatchPlan(n_blocks=103, global_batch_size=12, micro_batch_size=2, data_parallel_size=3, seed=1)
    assert np.array_equal(again.global_batch(13), plan.global_batch(13))
    other_seed = BatchPlan(n_blocks=103, global_batch_size=12, micro_batch_size=2, data_parallel_size=3, seed=2)
    assert not np.array_equal(other_seed.global_batch(0), plan.global_batch(0))
    with pytest.raises(ValueError, match="fewer than global_batch_size 12"):
        BatchPlan(n_blocks=11, global_batch_size=12, micro_batch_size=2, data_parallel_size=3, seed=1)


def test_lr_schedule_warms_up_then_decays_to_the_minimum():
    f = [lr_multiplier(s, warmup_steps=4, total_steps=20, min_ratio=0.1) for s in range(25)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert math.isclose(f[12], 0.55) and math.isclose(f[20], 0.1) and f[24] == f[20]


# --------------------------------------------------------------------------- runtime picks


def test_cpu_runtime_refuses_tensor_parallelism_and_a_mismatched_driver(tmp_path):
    cfg = config_from_dict(run_config(tmp_path, tensor_parallel_size=2))
    with pytest.raises(ConfigError, match="tensor_parallel_size: 2 needs the Neuron backend"):
        worker_runtime(cfg, driver_backend="cpu")
    with pytest.raises(RuntimeError, match="driver runs the neuron backend but this worker runs cpu: set "
                                           "TRN_BACKEND=cpu for the whole job"):
        worker_runtime(config_from_dict(run_config(tmp_path)), driver_backend="neuron")
    rt = worker_runtime(config_from_dict(run_config(tmp_path)), driver_backend="cpu")
    assert isinstance(rt, CpuRuntime) and (rt.dp_rank, rt.dp_size, rt.tp_rank) == (0, 1, 0)


def test_neuron_compiler_env_keeps_the_pod_settings():
    env = neuron_compiler_env({"NEURON_CC_FLAGS": "--cache_dir=/shared/cache -O1"}, "/ignored")
    assert env["NEURON_CC_FLAGS"] == ("--cache_dir=/shared/cache -O1 --model-type=transformer "
                                      "--distribution-strategy=llm-training")
    fresh = neuron_compiler_env({}, "/shared/neuron-cache")
    assert fresh["NEURON_CC_FLAGS"].startswith("--cache_dir=/shared/neuron-cache ")
    assert fresh["NEURON_COMPILE_CACHE_URL"] == "/shared/neuron-cache"


def test_vocab_is_padded_to_split_evenly():
    assert [padded_vocab_size(v, tp) for v, tp in ((32000, 8), (300, 1), (301, 8))] == [32000, 300, 304]


def test_ray_version_constant_is_the_image_pin():
    from trn_workloads.ray_train import RAY_VERSION

    requirements = (Path(__file__).resolve().parents[1] / "images" / "ray-train" / "requirements.txt").read_text()
    ray_pins = {line.split("==")[1] for line in requirements.splitlines() if line.startswith("ray[")}
    assert ray_pins == {RAY_VERSION}
    import ray

    assert ray.__version__ == RAY_VERSION  # what the tests ran against


# --- memory per NeuronCore: sequence parallelism and selective recompute (Llama-2-7B) ----------


def test_llama2_7b_fits_a_neuroncore_only_with_sequence_parallel_and_selective_recompute():
    from trn_workloads.ray_train.config import MODEL_PRESETS
    from trn_workloads.ray_train.memory import NEURONCORE_HBM_BYTES, estimate_per_core, parameter_count

    preset = MODEL_PRESETS["llama2-7b"]
    assert round(parameter_count(preset, 32000) / 1e9, 2) == 6.74  # Llama-2-7B's published size
    shape = {"seq_len": 4096, "micro_batch_size": 1, "tensor_parallel_size": 8}  # the preset's run (config.py)
    before = estimate_per_core(preset, **shape, sequence_parallel=False, recompute_core_attention=False)
    after = estimate_per_core(preset, **shape, sequence_parallel=True, recompute_core_attention=True)
    assert before.activations > NEURONCORE_HBM_BYTES  # ~17.8 GB of activations alone: the issue's ~18 GB
    assert before.total > NEURONCORE_HBM_BYTES > after.total
    assert after.activations < 3 * 10**9 and after.activations * 7 < before.activations
    # What the default run config promises is what the Neuron path builds (both on, model.py).
    cfg = config_from_dict({"data_dir": "/shared/d", "run_dir": "/shared/r"})
    assert cfg.memory_per_core() == after


@pytest.mark.parametrize("change, message", [
    ({"micro_batch_size": 8, "global_batch_size": 256},
     r"micro_batch_size: 8 x seq_len 4096 needs about \d+\.\d GiB per NeuronCore \(activations .*more than its 16 GiB"),
    ({"seq_len": 4092}, r"seq_len: 4092 must be a multiple of tensor_parallel_size \(8\): sequence parallelism"),
])
def test_neuron_runs_that_cannot_fit_or_split_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data_dir": "/shared/d", "run_dir": "/shared/r", **change})


def _tiny_llama_pair(preset_name: str = "tiny", vocab: int = 96):
    """(transformers' LlamaForCausalLM, our PretrainingLlama) with the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    from trn_workloads.ray_train.config import MODEL_PRESETS
    from trn_workloads.ray_train.model import build_cpu_llama, llama_config

    config = llama_config(MODEL_PRESETS[preset_name], vocab_size=vocab)
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config)
    calls = []

    def counting_checkpoint(function, *args):
        calls.append(function.__name__)
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)

    ours = build_cpu_llama(config, checkpoint=counting_checkpoint)
    assert ours.state_dict().keys() == reference.state_dict().keys()  # checkpoints keep their names
    ours.load_state_dict(reference.state_dict())
    return reference, ours, calls


def test_pretraining_llama_computes_what_transformers_llama_does_with_recomputed_attention():
    import torch

    reference, ours, calls = _tiny_llama_pair()
    tokens = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(tokens, -1, dims=1)
    losses = []
    for model in (reference, ours):
        model.train()
        logits = model(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        losses.append((logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref_logits, ref_loss, ref_grads), (our_logits, our_loss, our_grads) = losses
    torch.testing.assert_close(our_logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_loss, ref_loss)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The core attention of every layer went through the checkpoint (recomputed in backward), in training only.
    assert calls == ["core_attention"] * 2
    ours.eval()
    with torch.no_grad():
        ours(input_ids=tokens)
    assert len(calls) == 2


def test_sequence_first_layout_of_the_sequence_parallel_path_gives_the_same_logits():
    """The Neuron path's layout ([seq, batch, hidden] between projections, transposed logits) on one
    rank, where gathering and scattering the sequence are identities."""
    import torch

    reference, ours, _ = _tiny_llama_pair()

    class SequenceFirst(torch.nn.Module):  # stands in for ParallelEmbedding(sequence_parallel_enabled=True)
        def __init__(self, embedding):
            super().__init__()
            self.embedding = embedding

        def forward(self, input_ids):
            return self.embedding(input_ids).transpose(0, 1)

    ours.model.embed_tokens = SequenceFirst(ours.model.embed_tokens)
    ours.sequence_first = True
    for layer in ours.model.layers:
        layer.self_attn.sequence_first = True
    tokens = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=tokens).logits, reference(input_ids=tokens).logits,
                                   rtol=1e-5, atol=1e-5)
