"""LoRA finetuning: config validation, record vetting, packing, SQL evaluation, and a real CPU run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trn_workloads.finetune import synthetic
from trn_workloads.finetune.cli import main as cli_main
from trn_workloads.finetune.config import (DEFAULT_PROMPT_TEMPLATE, ConfigError, DataConfig, config_from_dict,
                                           load_config)
from trn_workloads.finetune.packing import IGNORE_INDEX, PackedBlockCollator, pack_examples, tokenize_example
from trn_workloads.finetune.records import BadRecordsError, load_records
from trn_workloads.finetune.sql_eval import extract_sql, normalize_sql, score_sql, summarize


@pytest.fixture(scope="module")
def sql_records():
    return synthetic.synthetic_sql_records(260, seed=7)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, sql_records) -> Path:
    return synthetic.save_tiny_base_model(tmp_path_factory.mktemp("tiny-llama"), sql_records)


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def minimal_config(**sections) -> dict:
    raw = {"model": {"base": "some/model"}, "data": {"source": "data.jsonl"}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


# --- config ------------------------------------------------------------------------------


def test_config_defaults_are_the_seed_lora_settings():
    cfg = config_from_dict(minimal_config())
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.use_rslora) == (8, 64, 0.05, True)
    assert set(cfg.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"}
    assert cfg.train.packing is True
    # trn1.32xlarge: 32 NeuronCores, tp 8 -> 32 worker processes, 4 data-parallel replicas
    assert (cfg.train.processes_per_node, cfg.train.data_parallel_size) == (32, 4)


@pytest.mark.parametrize("raw, message", [
    (minimal_config(train={"tensor_parallel_size": 3}), "train.tensor_parallel_size: must be one of [1, 2, 4, 8"),
    (minimal_config(train={"tensor_parallel_size": 8, "neuron_cores_per_node": 4}),
     "train.tensor_parallel_size: 8 must divide train.neuron_cores_per_node (4); allowed: [1, 2, 4]"),
    (minimal_config(data={"bad_records": "ignore"}), "data.bad_records: must be one of ['skip', 'fail']"),
    (minimal_config(lora={"rank": 8}), "lora.rank: unknown key; allowed keys in lora:"),
    (minimal_config(train={"seq_len": "1024"}), "train.seq_len: expected an integer, got '1024'"),
    (minimal_config(lora={"dropout": 1.5}), "lora.dropout: must be in [0, 1)"),
    (minimal_config(eval={"max_new_tokens": 0}), "eval.max_new_tokens: must be >= 1"),
    (minimal_config(output={"s3_uri": "bucket/prefix"}), "output.s3_uri: must look like s3://"),
    (minimal_config(output={"run_dir": "/shared/run_{date}"}), "output.run_dir: the only allowed placeholder"),
    (minimal_config(data={"prompt_template": "Q: {question} A: {answer}"}), "data.answer_field: 'answer' must not"),
    ({"data": {"source": "x.jsonl"}}, "model: required key is missing"),
])
def test_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert message in str(err.value)


def test_config_file_errors_name_the_file_and_line(tmp_path):
    broken = tmp_path / "run.json"
    broken.write_text('{\n  "model": {"base": "x"},\n  "data": {"source": }\n}\n')
    with pytest.raises(ConfigError, match=r"run.json: invalid JSON at line 3"):
        load_config(broken)
    yaml_cfg = tmp_path / "run.yaml"
    yaml_cfg.write_text("model:\n  base: x\ndata:\n  source: d.jsonl\ntrain:\n  epochs: -1\n")
    with pytest.raises(ConfigError, match=r"run.yaml: train.epochs: must be > 0"):
        load_config(yaml_cfg)


# --- records -----------------------------------------------------------------------------


def bad_and_good_rows(sql_records):
    good = sql_records[:3]
    return [
        good[0],
        {"question": "q?", "context": good[1]["context"]},  # line 2: no answer
        "{not json",  # line 3
        {**good[1], "answer": "SELECT nope FROM nowhere"},  # line 4: unknown table
        {**good[1], "context": "CREATE TABLE (broken"},  # line 5: schema does not run
        {**good[2], "question": ""},  # line 6: empty field
        good[2],
    ]


def test_bad_records_are_skipped_with_line_numbers(tmp_path, sql_records):
    data = write_jsonl(tmp_path / "d.jsonl", bad_and_good_rows(sql_records))
    loaded = load_records(DataConfig(source=str(data), bad_records="skip"))
    assert [r.line for r in loaded.good] == [1, 7]
    reasons = {b.line: b.reason for b in loaded.bad}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "missing field 'answer'" in reasons[2]
    assert "invalid JSON" in reasons[3]
    assert "not valid SQL for its schema" in reasons[4] and "nowhere" in reasons[4]
    assert "not valid CREATE TABLE SQL" in reasons[5]
    assert "'question' must be a non-empty string" in reasons[6]


def test_bad_records_fail_lists_every_line(tmp_path, sql_records):
    data = write_jsonl(tmp_path / "d.jsonl", bad_and_good_rows(sql_records))
    with pytest.raises(BadRecordsError) as err:
        load_records(DataConfig(source=str(data), bad_records="fail"))
    for line in (2, 3, 4, 5, 6):
        assert f"line {line}:" in str(err.value)
    assert "line 1:" not in str(err.value) and "line 7:" not in str(err.value)


# --- packing -----------------------------------------------------------------------------


def test_tokenized_example_labels_only_the_answer(tokenizer, sql_records):
    record = sql_records[0]
    prompt = DEFAULT_PROMPT_TEMPLATE.format(**record)
    ex = tokenize_example(tokenizer, prompt, record["answer"])
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert ex.input_ids[0] == tokenizer.bos_token_id and ex.input_ids[-1] == tokenizer.eos_token_id
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert tokenizer.decode(ex.labels[n_prompt:-1]) == record["answer"]
    with_prompt = tokenize_example(tokenizer, prompt, record["answer"], loss_on_prompt=True)
    assert with_prompt.labels[0] == IGNORE_INDEX and with_prompt.labels[1:] == with_prompt.input_ids[1:]


def test_packing_makes_only_full_blocks_with_aligned_labels(tokenizer, sql_records):
    examples = [tokenize_example(tokenizer, DEFAULT_PROMPT_TEMPLATE.format(**r), r["answer"]) for r in sql_records[:40]]
    seq_len = 128
    packed = pack_examples(examples, seq_len)
    total = sum(len(ex) for ex in examples)
    assert packed.input_ids.shape == (total // seq_len, seq_len)
    assert packed.dropped_tail_tokens == total % seq_len
    assert packed.stats()["padding_tokens"] == 0 and tokenizer.pad_token_id not in packed.input_ids
    flat_ids = [t for ex in examples for t in ex.input_ids][: packed.input_ids.numel()]
    flat_labels = [t for ex in examples for t in ex.labels][: packed.input_ids.numel()]
    assert packed.input_ids.flatten().tolist() == flat_ids
    assert packed.labels.flatten().tolist() == flat_labels
    # Positions restart at every example's BOS, and only there.
    positions, ids = packed.position_ids.flatten(), packed.input_ids.flatten()
    assert ((positions == 0) == (ids == tokenizer.bos_token_id)).all()
    batch = PackedBlockCollator()(packed.to_dataset().select(range(2)))
    assert set(batch) == {"input_ids", "labels", "position_ids"} and batch["input_ids"].shape == (2, seq_len)


def test_packed_examples_do_not_attend_to_each_other(tokenizer, sql_records):
    """The documented boundary choice: position_ids restarts give each example its own causal mask."""
    model = synthetic.tiny_llama(tokenizer).eval()
    model.config.use_cache = False
    first, second = [tokenize_example(tokenizer, DEFAULT_PROMPT_TEMPLATE.format(**r), r["answer"])
                     for r in sql_records[:2]]
    packed = pack_examples([first, second], len(first) + len(second))
    with torch.no_grad():
        together = model(input_ids=packed.input_ids, position_ids=packed.position_ids).logits[0, len(first):]
        alone = model(input_ids=torch.tensor([second.input_ids])).logits[0]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def packed_loss(model, batch) -> torch.Tensor:
    return model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"]).loss


def test_neuron_collator_trains_the_cpu_objective_on_packed_blocks(tokenizer, sql_records):
    """The explicit 4D mask the Neuron path passes (optimum-neuron reads no position restarts) gives the
    same loss as the CPU path's position_ids-derived mask, and differs from the plain causal mask that
    optimum-neuron's default recompute_causal_mask would apply (packed examples attending to each other)."""
    from trn_workloads.finetune.packing import block_causal_mask

    model = synthetic.tiny_llama(tokenizer).eval()
    model.config.use_cache = False
    model.config._attn_implementation = "eager"  # what the Neuron path uses (finetune/neuron.py)
    examples = [tokenize_example(tokenizer, DEFAULT_PROMPT_TEMPLATE.format(**r), r["answer"]) for r in sql_records[:9]]
    seq_len = sum(len(ex) for ex in examples) // 3  # blocks start and end inside examples
    rows = pack_examples(examples, seq_len).to_dataset()
    cpu_batch, neuron_batch = PackedBlockCollator()(rows), PackedBlockCollator(torch.float32)(rows)
    assert "attention_mask" not in cpu_batch and neuron_batch["attention_mask"].shape == (3, 1, seq_len, seq_len)
    with torch.no_grad():
        cpu, neuron = packed_loss(model, cpu_batch), packed_loss(model, neuron_batch)
        causal_only = packed_loss(model, {k: v for k, v in cpu_batch.items() if k != "position_ids"} |
                                  {"position_ids": torch.arange(seq_len).expand(3, -1)})
    torch.testing.assert_close(neuron, cpu, rtol=1e-5, atol=1e-5)
    assert abs(causal_only.item() - cpu.item()) > 1e-3
    # The mask itself: causal inside an example, closed across examples (also for a block starting mid-example).
    positions = torch.tensor([[5, 6, 0, 1, 2, 0]])
    allowed = block_causal_mask(positions)[0, 0] == 0
    assert allowed.tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                                [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    assert block_causal_mask(positions, torch.bfloat16).dtype == torch.bfloat16


def test_neuron_trainer_uses_the_batch_mask_and_eager_attention():
    from trn_workloads.finetune import neuron

    options = neuron.neuron_trainer_options(config_from_dict(minimal_config()))
    assert options["recompute_causal_mask"] is False  # optimum-neuron's default (True) drops the batch's mask
    assert (options["bf16"], options["tensor_parallel_size"]) == (True, 8)


# --- Neuron worker environment and evaluation compile ------------------------------------


def test_neuron_workers_keep_the_pods_compiler_flags_and_add_their_own():
    from trn_workloads.finetune import neuron
    from trn_workloads.ray_train import runtime

    pod = {"NEURON_CC_FLAGS": "--cache_dir=/shared/neuron-cache", "MALLOC_ARENA_MAX": "8", "PATH": "/usr/bin"}
    env = neuron.worker_env(pod)
    assert env["NEURON_CC_FLAGS"].split() == ["--cache_dir=/shared/neuron-cache", "--model-type=transformer",
                                              "--retry_failed_compilation"]
    assert (env["MALLOC_ARENA_MAX"], env["NEURON_FUSE_SOFTMAX"], env["PATH"]) == ("8", "1", "/usr/bin")
    # A flag the pod sets itself (either spelling) is kept as the pod has it, not repeated.
    env = neuron.worker_env({"NEURON_CC_FLAGS": "--model-type transformer -O1"})
    assert env["NEURON_CC_FLAGS"] == "--model-type transformer -O1 --retry_failed_compilation"
    assert neuron.worker_env({})["NEURON_CC_FLAGS"] == "--model-type=transformer --retry_failed_compilation"
    # One merger for the LoRA and the Ray Train workers.
    assert neuron.merge_compiler_flags is runtime.merge_compiler_flags


def test_neuron_eval_compile_takes_the_models_revision_and_token(monkeypatch, tmp_path):
    import sys
    import types

    from trn_workloads.finetune import model_io, neuron

    calls = []

    class FakeNeuronModel:  # records what optimum-neuron's get_neuron_config/export receive
        @classmethod
        def get_neuron_config(cls, **kwargs):
            calls.append(("get_neuron_config", kwargs))
            return "neuron-config"

        @classmethod
        def export(cls, **kwargs):
            calls.append(("export", kwargs))
            return cls()

    monkeypatch.setitem(sys.modules, "optimum.neuron", types.SimpleNamespace(NeuronModelForCausalLM=FakeNeuronModel))
    monkeypatch.setattr(model_io, "merge_adapter", lambda *a, **k: pytest.fail("merged_dir was given"))
    cfg = config_from_dict(minimal_config(model={"base": "meta-llama/Llama-3.1-8B", "revision": "0e9e39f",
                                                 "hf_token_env": "MY_HUB_TOKEN"}, eval={"compare_base": True}))
    neuron.neuron_generators(cfg, tmp_path / "adapter", tmp_path / "merged", tokenizer=None, token="hf_secret")
    by_model = {}
    for name, kwargs in calls:
        model_id = kwargs.get("model_name_or_path") or kwargs.get("model_id")
        by_model.setdefault(model_id, {})[name] = kwargs
    base, merged = by_model["meta-llama/Llama-3.1-8B"], by_model[str(tmp_path / "merged")]
    for step in ("get_neuron_config", "export"):
        assert (base[step]["revision"], base[step]["token"]) == ("0e9e39f", "hf_secret"), step
        assert (merged[step]["revision"], merged[step]["token"]) == (None, "hf_secret"), step


# --- SQL evaluation ------------------------------------------------------------------------

SCHEMA = "CREATE TABLE player (name VARCHAR, team VARCHAR, goals INTEGER)"
REFERENCE = 'SELECT name FROM player WHERE team = "green bay"'


def test_correct_sql_scores_one_even_when_written_differently():
    assert score_sql(SCHEMA, REFERENCE, REFERENCE) .execution_match
    rewritten = score_sql(SCHEMA, REFERENCE, "select name from player where team = 'green bay';")
    assert rewritten.execution_match and rewritten.error is None and rewritten.reference_rows >= 1


def test_wrong_sql_scores_zero():
    wrong = score_sql(SCHEMA, REFERENCE, 'SELECT name FROM player WHERE team != "green bay"')
    assert (wrong.exact_match, wrong.execution_match, wrong.error) == (False, False, None)
    assert not score_sql(SCHEMA, "SELECT COUNT(*) FROM player WHERE goals > 5",
                         "SELECT COUNT(*) FROM player WHERE goals < 5").execution_match


@pytest.mark.parametrize("generated", [
    "SELEC name FROM", "SELECT height FROM player", "", "DELETE FROM player",
    "SELECT 1; SELECT 2", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
])
def test_malformed_or_harmful_sql_scores_zero_without_crashing(generated):
    score = score_sql(SCHEMA, REFERENCE, generated, max_steps=100_000)
    assert (score.exact_match, score.execution_match) == (False, False)
    assert score.error


def test_order_by_reference_compares_in_order_and_summary_counts():
    reference = "SELECT goals FROM player ORDER BY goals DESC"
    assert score_sql(SCHEMA, reference, reference).execution_match
    assert not score_sql(SCHEMA, reference, "SELECT goals FROM player ORDER BY goals ASC").execution_match
    assert normalize_sql("SELECT  a FROM t ;") == normalize_sql("select a from t")
    assert extract_sql("\n SELECT a FROM t\n### junk") == "SELECT a FROM t"
    scores = [score_sql(SCHEMA, REFERENCE, REFERENCE), score_sql(SCHEMA, REFERENCE, "nonsense")]
    assert summarize(scores) == {"records": 2, "exact_match": 0.5, "execution_accuracy": 0.5,
                                 "generated_sql_errors": 1}


# --- a real run on CPU ------------------------------------------------------------------------


def run_config(tiny_base: Path, data_path: Path, run_dir: Path, **overrides) -> dict:
    raw = {
        "model": {"base": str(tiny_base)},
        "data": {"source": str(data_path), "eval_records": 12},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"seq_len": 256, "max_steps": 60, "learning_rate": 1e-2, "per_device_batch_size": 4,
                  "gradient_accumulation_steps": 1, "logging_steps": 10, "gradient_checkpointing": False,
                  "tensor_parallel_size": 1, "neuron_cores_per_node": 1},
        "eval": {"max_new_tokens": 24, "batch_size": 12},
        "output": {"run_dir": str(run_dir), "merge": True},
    }
    for section, values in overrides.items():
        raw[section].update(values)
    return raw


@pytest.mark.slow
def test_cpu_run_trains_saves_merges_evaluates_and_uploads(tmp_path, tiny_base, sql_records, aws_env, capsys):
    import boto3
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trn_workloads.finetune.run import run

    rows = list(sql_records[:200])
    rows.insert(5, {"question": "q", "context": "CREATE TABLE t (a INTEGER)", "answer": "SELECT b FROM t"})
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    run_dir = tmp_path / "runs" / "sql_{timestamp}"
    boto3.client("s3").create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    cfg = config_from_dict(run_config(tiny_base, data, run_dir, output={"s3_uri": "s3://artifacts/finetune"}))

    result = run(cfg)

    out = result.run_dir
    assert out.parent == tmp_path / "runs" and out.name.startswith("sql_2") and out.is_dir()
    assert not list((tmp_path / "runs").glob("*.partial"))
    # loss decreases
    assert len(result.losses) == 6 and result.losses[-1] < 0.7 * result.losses[0]
    # adapter saved as safetensors with the configured LoRA settings
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (adapter_cfg["r"], adapter_cfg["lora_alpha"], adapter_cfg["use_rslora"]) == (8, 16, True)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # the bad record was reported with its line number
    report = json.loads((out / "data_report.json").read_text())
    assert report["bad_records"][0]["line"] == 6 and report["records"]["good"] == 200
    assert report["training_data"]["padding_tokens"] == 0
    # merged weights give the same logits as base + adapter, and not the base model's
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])
    adapter_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base)),
                                              str(out / "adapter")).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    with torch.no_grad():
        adapter_logits = adapter_model(ids).logits
        merged_logits = merged_model(ids).logits
        with adapter_model.disable_adapter():
            base_logits = adapter_model(ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-2
    # evaluation ran SQL for both models and wrote numbers
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["records"] == 12
    for model in ("finetuned", "base"):
        assert evaluation[model]["records"] == 12
        assert 0.0 <= evaluation[model]["execution_accuracy"] <= 1.0
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and all("generated" in p["finetuned"] and "base" in p for p in predictions)
    # uploaded to the artifacts bucket under the run's name
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="artifacts")["Contents"]}
    assert f"finetune/{out.name}/eval.json" in keys
    assert f"finetune/{out.name}/adapter/adapter_model.safetensors" in keys
    assert result.uploaded_to == f"s3://artifacts/finetune/{out.name}/"


def test_unpacked_run_pads_batches_and_still_trains(tmp_path, tiny_base, sql_records):
    from trn_workloads.finetune.run import run

    data = write_jsonl(tmp_path / "train.jsonl", sql_records[:40])
    raw = run_config(tiny_base, data, tmp_path / "run", train={"packing": False, "max_steps": 4, "logging_steps": 2},
                     eval={"enabled": False}, output={"merge": False})
    result = run(config_from_dict(raw))
    assert len(result.losses) == 2 and result.eval_report is None
    assert sorted(p.name for p in result.run_dir.iterdir()) == [
        "adapter", "config.json", "data_report.json", "finetune.log", "train_losses.json"]
    report = json.loads((result.run_dir / "data_report.json").read_text())
    # 40 records less 12 held out for evaluation, less those longer than seq_len (reported by line)
    too_long = report["records"]["too_long_for_seq_len"]
    assert report["records"]["train"] == 28 and len(report["too_long_lines"]) == too_long
    assert report["training_data"]["examples"] == 28 - too_long


def test_cli_reports_bad_data_before_writing_anything(tmp_path, tiny_base, sql_records, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", bad_and_good_rows(sql_records))
    run_dir = tmp_path / "run"
    config_path = tmp_path / "run.json"
    raw = run_config(tiny_base, data, run_dir, data={"bad_records": "fail", "eval_records": 1})
    config_path.write_text(json.dumps(raw))
    assert cli_main(["--config", str(config_path)]) == 2
    assert "line 2: missing field 'answer'" in capsys.readouterr().err
    assert not run_dir.exists() and not (tmp_path / "run.partial").exists()

    raw["train"]["seq_len"] = 4096  # the tiny model has 1024 positions
    config_path.write_text(json.dumps(raw | {"data": {"source": str(data), "eval_records": 1}}))
    assert cli_main(["--config", str(config_path)]) == 2
    assert "train.seq_len: 4096 exceeds the model's max_position_embeddings (1024)" in capsys.readouterr().err
    assert not run_dir.exists()

    config_path.write_text(json.dumps(raw | {"lora": {"rank": 4}}))
    assert cli_main(["--config", str(config_path)]) == 2
    assert "lora.rank: unknown key" in capsys.readouterr().err
