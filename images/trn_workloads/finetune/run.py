"""One finetuning run, top to bottom: vet inputs, tokenize + pack, train, merge, evaluate, publish.

Everything that can be checked before training is checked before anything is written:
the config, every data record, the model's limits. Outputs are built in
`<run_dir>.partial/` and renamed to `<run_dir>` only when complete, so a run dir either
holds a finished run or does not exist. Layout of a finished run:

    <run_dir>/config.json            the resolved config (timestamp filled in)
    <run_dir>/data_report.json       record counts, bad records with line numbers, packing stats
    <run_dir>/adapter/               adapter_model.safetensors + adapter_config.json + tokenizer
    <run_dir>/merged/                base + adapter merged, safetensors (output.merge)
    <run_dir>/eval.json              exact match and execution accuracy, base vs finetuned
    <run_dir>/eval_predictions.jsonl per held-out record: reference and generated SQL
    <run_dir>/train_losses.json      loss at every logging step
    <run_dir>/finetune.log           this run's log
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from trn_workloads import accel
from trn_workloads.finetune.config import ConfigError, FinetuneConfig
from trn_workloads.finetune.evaluate import evaluate, make_generators
from trn_workloads.finetune.model_io import check_model_fits, load_tokenizer, merge_adapter
from trn_workloads.finetune.packing import pack_examples, tokenize_example, unpacked_dataset
from trn_workloads.finetune.records import load_records, render_prompt, split_train_eval, write_jsonl_atomic
from trn_workloads.finetune.train import TRAINER_DIR, train_adapter

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_dir: Path
    losses: list[float]
    eval_report: dict | None
    uploaded_to: str | None


def write_json_atomic(path: Path, document) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(cfg: FinetuneConfig) -> RunResult:
    cfg = cfg.with_resolved_run_dir() if "{timestamp}" in cfg.output.run_dir else cfg
    run_dir = Path(cfg.output.run_dir)
    if run_dir.exists():
        raise FileExistsError(f"output.run_dir: {run_dir} already exists; runs are never overwritten")
    token = os.environ.get(cfg.model.hf_token_env) or None  # never logged

    # 1. Vet everything that can fail before writing anything.
    loaded = load_records(cfg.data, hf_token=token)
    train_records, eval_records = split_train_eval(loaded.good, cfg.data.eval_records, cfg.data.shuffle_seed)
    check_model_fits(cfg, token)
    tokenizer = load_tokenizer(cfg.model, token)

    # 2. Tokenize; an example longer than seq_len could never be seen whole, so it is dropped.
    examples = [tokenize_example(tokenizer, render_prompt(cfg.data.prompt_template, r),
                                 r.fields[cfg.data.answer_field], loss_on_prompt=cfg.train.loss_on_prompt)
                for r in train_records]
    too_long = [r.line for r, ex in zip(train_records, examples) if len(ex) > cfg.train.seq_len]
    examples = [ex for ex in examples if len(ex) <= cfg.train.seq_len]
    if cfg.train.packing:
        packed = pack_examples(examples, cfg.train.seq_len)
        if len(packed) == 0:
            raise ConfigError(f"train.seq_len: {cfg.train.seq_len} tokens is more than all training examples "
                             f"together; no full block to train on")
        train_dataset, data_stats = packed.to_dataset(), packed.stats()
    else:
        train_dataset = unpacked_dataset(examples)
        data_stats = {"examples": len(examples), "tokens": sum(len(ex) for ex in examples)}

    # 3. Build the run in <run_dir>.partial, publish by rename.
    work_dir = run_dir.with_name(run_dir.name + ".partial")
    if work_dir.exists():
        shutil.rmtree(work_dir)  # a crashed attempt at this very run dir
    work_dir.mkdir(parents=True)
    log_handler = logging.FileHandler(work_dir / "finetune.log")
    log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log_handler)
    try:
        write_json_atomic(work_dir / "config.json", cfg.to_dict())
        write_json_atomic(work_dir / "data_report.json", {
            "source": loaded.source,
            "records": {"good": len(loaded.good), "bad": len(loaded.bad), "train": len(train_records),
                        "eval": len(eval_records), "too_long_for_seq_len": len(too_long)},
            "bad_records": [dataclasses.asdict(b) for b in loaded.bad],
            "too_long_lines": too_long,
            "training_data": data_stats,
        })
        log.info("backend %s; %d train / %d eval records; %s", accel.backend().value, len(train_records),
                 len(eval_records), data_stats)

        result = train_adapter(cfg, work_dir, train_dataset, tokenizer, token)
        shutil.rmtree(work_dir / TRAINER_DIR, ignore_errors=True)
        log.info("training losses: first %.4f, last %.4f", result.losses[0], result.losses[-1])

        # Merging and CPU-side loading use bf16 on Neuron hosts (8B weights), float32 on CPU.
        dtype = torch.bfloat16 if accel.is_neuron() else torch.float32
        merged_dir = (merge_adapter(cfg.model, result.adapter_dir, work_dir / "merged", tokenizer, token, dtype)
                      if cfg.output.merge else None)

        report = None
        if cfg.eval.enabled:
            generators = make_generators(cfg, result.adapter_dir, merged_dir, tokenizer, token)
            report, predictions = evaluate(cfg, eval_records, generators)
            write_json_atomic(work_dir / "eval.json", report)
            write_jsonl_atomic(work_dir / "eval_predictions.jsonl", predictions)
            shutil.rmtree(work_dir / "eval_merged", ignore_errors=True)
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()

    os.replace(work_dir, run_dir)
    log.info("run complete: %s", run_dir)

    uploaded_to = None
    if cfg.output.s3_uri:
        from trn_workloads import artifacts

        uploaded_to = cfg.output.s3_uri.rstrip("/") + "/" + run_dir.name + "/"
        artifacts.upload_dir(run_dir, uploaded_to)
    return RunResult(run_dir, result.losses, report, uploaded_to)
