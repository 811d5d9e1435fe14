"""How much NeuronCore memory (HBM) one Ray Train worker needs: a pure estimate, checked before anything runs.

Activations follow Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
Models" (2022, arXiv:2205.05198), Table 2: bytes per transformer layer with 16-bit activations,
sequence s, micro-batch b, hidden h, attention heads a, tensor parallel degree t:

    tensor parallel only                              s*b*h * (10 + 24/t + 5*a*s/(h*t))
    + sequence parallel                               s*b*h * (34/t + 5*a*s/(h*t))
    + selective recompute of the core attention       drops the 5*a*s/(h*t) term (softmax, scores)

(10 of the 34 are the norms', dropout masks' and layer inputs' shares that only sequence
parallelism splits.) The output layer adds the vocabulary-parallel logits (bf16, and the fp32
copy the loss takes). Model state per core: bf16 weights and gradients and AdamW's two bf16
moments of its 1/t shard (the runtime trains in bf16 without ZeRO, runtime.NeuronRuntime).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config.py imports this module to check a run before it starts
    from trn_workloads.ray_train.config import ModelPreset

# trn1: 32 GiB of HBM per Trainium chip, shared by its 2 NeuronCore-v2 (one Ray Train worker each).
NEURONCORE_HBM_BYTES = 16 * 2**30
LLAMA2_VOCAB = 32000  # the Llama-2 tokenizer's; the real one comes from the data step
BF16, FP32 = 2, 4


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    activations: int
    model_state: int

    @property
    def total(self) -> int:
        return self.activations + self.model_state


def parameter_count(preset: "ModelPreset", vocab_size: int) -> int:
    h, kv = preset.hidden_size, preset.num_key_value_heads * (preset.hidden_size // preset.num_attention_heads)
    attention = h * h * 2 + h * kv * 2  # q, o and k, v projections
    mlp = 3 * h * preset.intermediate_size  # gate, up, down
    per_layer = attention + mlp + 2 * h  # + two RMSNorm weights
    return preset.num_hidden_layers * per_layer + 2 * vocab_size * h + h  # embeddings, lm_head, final norm


def activation_bytes_per_core(preset: "ModelPreset", *, seq_len: int, micro_batch_size: int, tensor_parallel_size: int,
                              sequence_parallel: bool, recompute_core_attention: bool,
                              vocab_size: int = LLAMA2_VOCAB) -> int:
    s, b, h, a, t = seq_len, micro_batch_size, preset.hidden_size, preset.num_attention_heads, tensor_parallel_size
    sbh = s * b * h
    per_layer = 34 * sbh / t if sequence_parallel else sbh * (10 + 24 / t)
    if not recompute_core_attention:
        per_layer += 5 * a * s * s * b / t
    logits = s * b * (vocab_size / t) * (BF16 + FP32)
    return int(preset.num_hidden_layers * per_layer + logits)


def estimate_per_core(preset: "ModelPreset", *, seq_len: int, micro_batch_size: int, tensor_parallel_size: int,
                      sequence_parallel: bool, recompute_core_attention: bool,
                      vocab_size: int = LLAMA2_VOCAB) -> MemoryEstimate:
    """HBM one worker needs at the peak of a training step (activations of one micro-batch + model state)."""
    shard = parameter_count(preset, vocab_size) / tensor_parallel_size
    model_state = int(shard * (BF16 + BF16 + 2 * BF16))  # weights, gradients, AdamW exp_avg + exp_avg_sq
    activations = activation_bytes_per_core(
        preset, seq_len=seq_len, micro_batch_size=micro_batch_size, tensor_parallel_size=tensor_parallel_size,
        sequence_parallel=sequence_parallel, recompute_core_attention=recompute_core_attention, vocab_size=vocab_size)
    return MemoryEstimate(activations=activations, model_state=model_state)
