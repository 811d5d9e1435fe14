"""Evaluate base vs finetuned model on held-out records: generate SQL, run it in SQLite.

Generation is greedy with the training prompt template. `make_generators` is the one place
that picks the path: on CPU the base weights are loaded once with the adapter attached
(base = adapter disabled); on Neuron each model is compiled with optimum-neuron.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from trn_workloads import accel
from trn_workloads.finetune.config import FinetuneConfig
from trn_workloads.finetune.records import Record, render_prompt
from trn_workloads.finetune.sql_eval import extract_sql, score_sql, summarize

log = logging.getLogger(__name__)

# prompts -> continuations (text after the prompt, special tokens removed)
Generator = Callable[[Sequence[str]], list[str]]


@dataclasses.dataclass(frozen=True)
class Generators:
    finetuned: Generator
    base: Generator | None  # None when eval.compare_base is false


def generate_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Batched greedy decoding with left padding; returns only the generated continuations."""
    tokenizer.padding_side = "left"
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                          return_token_type_ids=False)
        with torch.inference_mode():
            generated = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs


def make_generators(cfg: FinetuneConfig, adapter_dir: Path, merged_dir: Path | None, tokenizer,
                    token: str | None) -> Generators:
    if accel.is_neuron():
        from trn_workloads.finetune import neuron

        return neuron.neuron_generators(cfg, adapter_dir, merged_dir, tokenizer, token)
    return _cpu_generators(cfg, adapter_dir, tokenizer, token)


def _cpu_generators(cfg: FinetuneConfig, adapter_dir: Path, tokenizer, token: str | None) -> Generators:
    from trn_workloads.finetune.model_io import load_adapter_model

    model = load_adapter_model(cfg.model, adapter_dir, token, dtype=torch.float32).eval()
    model.config.use_cache = True
    e = cfg.eval

    def finetuned(prompts):
        return generate_greedy(model, tokenizer, prompts, e.max_new_tokens, e.batch_size)

    def base(prompts):
        with model.disable_adapter():
            return generate_greedy(model, tokenizer, prompts, e.max_new_tokens, e.batch_size)

    return Generators(finetuned, base if e.compare_base else None)


def score_model(cfg: FinetuneConfig, records: Sequence[Record], generate: Generator) -> tuple[dict, list[dict]]:
    """Generate for every record and score it; returns (summary, per-record rows)."""
    d, e = cfg.data, cfg.eval
    prompts = [render_prompt(d.prompt_template, r) for r in records]
    continuations = generate(prompts)
    rows, scores = [], []
    for i, (record, text) in enumerate(zip(records, continuations)):
        sql = extract_sql(text)
        score = score_sql(record.fields[d.schema_field], record.fields[d.answer_field], sql,
                          rows_per_table=e.rows_per_table, seed=i, max_steps=e.query_timeout_steps)
        scores.append(score)
        rows.append({"line": record.line, "generated": sql, "exact_match": score.exact_match,
                     "execution_match": score.execution_match, "error": score.error})
    return summarize(scores), rows


def evaluate(cfg: FinetuneConfig, records: Sequence[Record], generators: Generators) -> tuple[dict, list[dict]]:
    """The eval.json document and one prediction row per record (for eval_predictions.jsonl)."""
    if not cfg.data.schema_field:
        raise ValueError("eval.enabled needs data.schema_field (the CREATE TABLE context to run SQL against)")
    finetuned_summary, finetuned_rows = score_model(cfg, records, generators.finetuned)
    report = {"records": len(records), "metric_notes": {
        "exact_match": "normalized SQL text equal (sqlglot SQLite rendering, lower case, whitespace collapsed)",
        "execution_accuracy": "same result rows in an SQLite DB built from the record's schema plus generated rows",
    }, "finetuned": finetuned_summary}
    predictions = [{"line": r.line, "question": r.fields.get("question"), "reference": r.fields[cfg.data.answer_field],
                    "finetuned": row} for r, row in zip(records, finetuned_rows)]
    if generators.base is not None:
        base_summary, base_rows = score_model(cfg, records, generators.base)
        report["base"] = base_summary
        report["improvement"] = {k: finetuned_summary[k] - base_summary[k]
                                 for k in ("exact_match", "execution_accuracy")}
        for prediction, row in zip(predictions, base_rows):
            prediction["base"] = row
    log.info("evaluation: %s", {k: report[k] for k in ("finetuned", "base") if k in report})
    return report, predictions
