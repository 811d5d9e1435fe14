"""Sequence packing vs pad-to-longest batches: padding fraction and useful training tokens/s.

Both arms train the same LoRA-wrapped tiny Llama on CPU over the same generated
text-to-SQL records (sql-create-context-like length spread), in the same run:

- baseline: records in shuffled batches padded to the batch's longest record
  (transformers' DataCollatorForSeq2Seq, the usual SFT collator), attention_mask on pads;
- packed:   trn_workloads.finetune.packing blocks of exactly --seq-len tokens, position_ids
  restarting per record (per-record causal mask), no padding.

"Useful" tokens are non-padding tokens. Arms alternate for --repeats rounds so drifting
machine load hits both; the median round is reported. Run:

    .venv/bin/python benchmarks/packing_bench.py            # about 2-3 minutes on 2 cores

The useful-tokens/s gain cannot exceed about 1 / (1 - baseline padding fraction) unless
longer sequences also cost less per token; on CPU they cost slightly more (attention).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "images"))

from trn_workloads.finetune import synthetic  # noqa: E402
from trn_workloads.finetune.config import DEFAULT_PROMPT_TEMPLATE  # noqa: E402
from trn_workloads.finetune.packing import (PackedBlockCollator, pack_examples, padding_collator,  # noqa: E402
                                            tokenize_example)


def lora_model(tokenizer, hidden: int, layers: int):
    from peft import LoraConfig, get_peft_model

    model = synthetic.tiny_llama(tokenizer, hidden_size=hidden, layers=layers, heads=max(1, hidden // 32),
                                 init_std=0.02)
    model.config.use_cache = False
    lora = LoraConfig(r=8, lora_alpha=64, use_rslora=True, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, lora)


def train_tokens_per_second(model, batches: list[dict], useful_tokens: int, warmup: int = 2) -> float:
    """Useful tokens per second over full optimizer steps (forward, backward, AdamW update)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return useful_tokens / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=8, help="records per baseline batch")
    parser.add_argument("--seq-len", type=int, default=256, help="packed block length")
    parser.add_argument("--blocks-per-batch", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    records = synthetic.synthetic_sql_records(args.records, seed=1)
    tokenizer = synthetic.train_bpe_tokenizer(
        [f"{r['question']}\n{r['context']}\n{r['answer']}" for r in records], vocab_size=2048)
    examples = [tokenize_example(tokenizer, DEFAULT_PROMPT_TEMPLATE.format(**r), r["answer"]) for r in records]
    # As in a run, a record longer than a block is dropped (from both arms).
    examples = [ex for ex in examples if len(ex) <= args.seq_len]
    random.Random(0).shuffle(examples)
    lengths = sorted(len(ex) for ex in examples)

    # Baseline: pad each batch to its longest record.
    collate_padded = padding_collator(tokenizer)
    padded_batches = [collate_padded([{"input_ids": ex.input_ids, "labels": ex.labels}
                                      for ex in examples[i:i + args.batch_size]])
                      for i in range(0, len(examples), args.batch_size)]
    padded_total = sum(b["input_ids"].numel() for b in padded_batches)
    padded_useful = sum(int(b["attention_mask"].sum()) for b in padded_batches)

    # Packed: full blocks of seq_len, nothing padded (the short tail is dropped, and reported).
    packed = pack_examples(examples, args.seq_len)
    rows = packed.to_dataset()
    collate_packed = PackedBlockCollator()
    packed_batches = [collate_packed(rows.select(range(i, min(i + args.blocks_per_batch, len(rows)))))
                      for i in range(0, len(rows), args.blocks_per_batch)]
    packed_total = packed_useful = packed.input_ids.numel()

    print(f"records {len(examples)}; tokens per record min {lengths[0]} / median {lengths[len(lengths) // 2]} / "
          f"p90 {lengths[int(0.9 * len(lengths))]} / max {lengths[-1]}")
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, vocab {len(tokenizer)}, LoRA r8 on all "
          f"projections; {args.threads} CPU threads")
    print(f"baseline: {len(padded_batches)} batches of {args.batch_size} records padded to longest")
    print(f"packed:   {len(packed_batches)} batches of {args.blocks_per_batch} x {args.seq_len}-token blocks "
          f"({packed.dropped_tail_tokens} tail tokens dropped)")

    padded_rate, packed_rate = [], []
    for round_no in range(args.repeats):
        model = lora_model(tokenizer, args.hidden, args.layers)
        padded_rate.append(train_tokens_per_second(model, padded_batches, padded_useful))
        model = lora_model(tokenizer, args.hidden, args.layers)
        packed_rate.append(train_tokens_per_second(model, packed_batches, packed_useful))
        print(f"  round {round_no + 1}: baseline {padded_rate[-1]:8.0f} useful tok/s, packed {packed_rate[-1]:8.0f}")

    pad_fraction_baseline = 1 - padded_useful / padded_total
    pad_fraction_packed = 1 - packed_useful / packed_total
    base, pack = statistics.median(padded_rate), statistics.median(packed_rate)
    print()
    print(f"{'':10s} {'padding':>9s} {'useful tok/s':>13s}")
    print(f"{'baseline':10s} {pad_fraction_baseline:9.1%} {base:13.0f}")
    print(f"{'packed':10s} {pad_fraction_packed:9.1%} {pack:13.0f}")
    print(f"(for reference, padding every record to a fixed {args.seq_len} tokens, the static-shape way to "
          f"batch on Neuron without packing, would be {1 - sum(lengths) / (len(lengths) * args.seq_len):.1%} padding)")
    print(f"ratio packed/baseline: useful tokens/s {pack / base:.2f}x; padding {pad_fraction_packed:.1%} vs "
          f"{pad_fraction_baseline:.1%} (packing also dropped "
          f"{packed.dropped_tail_tokens / (packed_total + packed.dropped_tail_tokens):.2%} of tokens as the short tail)")
    print(f"targets: padding < 2%: {'met' if pad_fraction_packed < 0.02 else 'NOT met'}; "
          f">= 1.5x useful tokens/s: {'met' if pack / base >= 1.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
