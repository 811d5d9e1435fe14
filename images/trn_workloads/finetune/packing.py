"""Tokenize prompt/answer pairs and pack them into fixed-length blocks.

Choices, and why:
- Loss: by default only answer tokens and the closing EOS carry labels; prompt tokens
  (instructions + CREATE TABLE schema, most of each example) are -100. The model is
  judged on the SQL it writes, not on reproducing schemas. `train.loss_on_prompt` turns
  prompt loss on. The first token of every example (BOS) never carries a label: nothing
  before it in the same example predicts it.
- Prompt and answer are tokenized separately, exactly as at inference time, where the
  prompt is tokenized alone and the model continues it.
- Packing: examples (each BOS ... answer EOS) are concatenated and cut into blocks of
  exactly `seq_len` tokens, so every step has one input shape (one Neuron graph) and no
  compute goes to padding. The tail shorter than `seq_len` is dropped and counted.
- Example boundaries: `position_ids` restart at 0 for every example (an example cut by a
  block boundary continues its positions in the next block), and an example never attends
  to its neighbours, on either path:
  - CPU: given `position_ids` and no `attention_mask`, transformers' Llama (4.57) turns
    position restarts into a block-diagonal causal mask (masking_utils.find_packed_sequence_indices).
  - Neuron: optimum-neuron's Llama ignores that: with `recompute_causal_mask` (its default)
    it uses a plain causal mask, and its own create_causal_mask never reads position_ids
    (optimum-neuron v0.4.5, optimum/neuron/models/training/llama/modeling_llama.py and
    masking_utils.py). It does take a ready 4D `attention_mask` as-is and adds it to the
    eager attention scores, so the Neuron path turns `recompute_causal_mask` off, keeps eager
    attention (its flash-attention kernel is causal only) and gets the same block-diagonal
    mask, built here from the same position restarts (`block_causal_mask`).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import torch

IGNORE_INDEX = -100  # label value that the causal-LM loss skips


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # same length; IGNORE_INDEX where the token carries no loss

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_example(tokenizer, prompt: str, answer: str, *, loss_on_prompt: bool = False) -> TokenizedExample:
    """BOS + prompt + answer + EOS, with labels on the answer (and EOS) only unless loss_on_prompt."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; packing needs one to end every example")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt_labels = list(prompt_ids) if loss_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
    if prompt_labels:
        prompt_labels[0] = IGNORE_INDEX
    return TokenizedExample(list(prompt_ids) + answer_ids, prompt_labels + answer_ids)


@dataclasses.dataclass(frozen=True)
class PackedBlocks:
    input_ids: torch.Tensor  # [blocks, seq_len] int64
    labels: torch.Tensor  # [blocks, seq_len] int64, IGNORE_INDEX where no loss
    position_ids: torch.Tensor  # [blocks, seq_len] int64, restarting at 0 for every example
    examples: int
    dropped_tail_tokens: int  # tokens after the last full block

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def stats(self) -> dict:
        total = self.input_ids.numel()
        return {
            "blocks": len(self),
            "seq_len": self.seq_len if len(self) else 0,
            "examples": self.examples,
            "tokens": total,
            "loss_tokens": int((self.labels != IGNORE_INDEX).sum()),
            "padding_tokens": 0,  # by construction
            "dropped_tail_tokens": self.dropped_tail_tokens,
        }

    def to_dataset(self):
        """A datasets.Dataset with input_ids / labels / position_ids columns (what the trainers take)."""
        from datasets import Dataset

        return Dataset.from_dict({
            "input_ids": self.input_ids.tolist(),
            "labels": self.labels.tolist(),
            "position_ids": self.position_ids.tolist(),
        })


def pack_examples(examples: Sequence[TokenizedExample], seq_len: int) -> PackedBlocks:
    """Concatenate examples and cut them into full `seq_len` blocks (the short tail is dropped)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    ids = torch.tensor([t for ex in examples for t in ex.input_ids], dtype=torch.long)
    labels = torch.tensor([t for ex in examples for t in ex.labels], dtype=torch.long)
    positions = torch.cat([torch.arange(len(ex), dtype=torch.long) for ex in examples]) if examples else \
        torch.zeros(0, dtype=torch.long)
    blocks = ids.numel() // seq_len
    kept = blocks * seq_len
    return PackedBlocks(
        input_ids=ids[:kept].view(blocks, seq_len),
        labels=labels[:kept].view(blocks, seq_len),
        position_ids=positions[:kept].view(blocks, seq_len),
        examples=len(examples),
        dropped_tail_tokens=ids.numel() - kept,
    )


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[batch, seq] positions -> the additive [batch, 1, seq, seq] mask of per-example causal attention.

    0 where query i may see key j (j <= i, same example), the dtype's minimum elsewhere. An
    example starts wherever the position does not follow the previous one by 1, the rule
    transformers applies to position_ids on the CPU path (find_packed_sequence_indices).
    """
    first = position_ids[:, :1] - 1
    example = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)  # [batch, seq]
    seq = position_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    allowed = causal[None] & (example[:, :, None] == example[:, None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


class PackedBlockCollator:
    """Stacks packed blocks into a batch.

    CPU (default): no attention_mask on purpose: with position_ids alone, transformers builds
    the per-example (block-diagonal) causal mask. `mask_dtype` set (the Neuron path): the same
    mask is passed explicitly as a 4D `attention_mask` of that dtype (optimum-neuron reads no
    position restarts; see the module docstring).
    """

    def __init__(self, mask_dtype: torch.dtype | None = None) -> None:
        self.mask_dtype = mask_dtype

    def __call__(self, rows: Iterable[dict]) -> dict[str, torch.Tensor]:
        rows = list(rows)
        batch = {key: torch.tensor([row[key] for row in rows], dtype=torch.long)
                 for key in ("input_ids", "labels", "position_ids")}
        if self.mask_dtype is not None:
            batch["attention_mask"] = block_causal_mask(batch["position_ids"], self.mask_dtype)
        return batch


def unpacked_dataset(examples: Sequence[TokenizedExample]):
    """One row per example, for `train.packing: false` (batches are then padded to their longest)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [ex.input_ids for ex in examples],
                              "labels": [ex.labels for ex in examples]})


def padding_collator(tokenizer):
    """The usual collator: pads each batch to its longest example (labels padded with -100)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
