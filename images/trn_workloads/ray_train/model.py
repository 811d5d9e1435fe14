"""Llama for pretraining from a preset: random init, the vocabulary of the prepared data.

Both paths train `PretrainingLlama`: transformers' LlamaForCausalLM (same modules, same
parameter names) with a training forward of our own and `LlamaSelfAttention` in every
layer, which recomputes the core attention (scores, softmax, weighted sum) in the backward
pass instead of keeping it: the selective activation checkpointing NxD Training's Llama-2-7B
example uses (`activations_checkpoint_granularity: selective`, recompute `CoreAttention`:
aws-neuron/neuronx-distributed-training 9169aa03f39efd4eb02da63891a7ed98defb1714,
examples/conf/megatron_llama_7B_config.yaml).

CPU: plain linear layers, data parallel only. Neuron: every projection, the embedding and the
output head are neuronx-distributed tensor-parallel layers (each rank holds 1/tp of them) with
sequence parallelism, as NxD's own Llama training model does (aws-neuron/neuronx-distributed
v2.26.0 = 0.15, examples/training/llama/modeling_llama_nxd.py): between the projections the
activations are split along the sequence, sequence-first [seq/tp, batch, hidden]; the
column-parallel projections all-gather the sequence, the row-parallel ones reduce-scatter it,
and the norms' weight gradients are summed over the tensor-parallel group
(runtime.NeuronRuntime.optimizer_step). Together this brings the activations of Llama-2-7B at
sequence 4096, TP 8, micro-batch 1 from about 18 GB to about 2.4 GB per NeuronCore (memory.py).
The model is first built on the meta device: no worker ever materialises the full 7B weights.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import torch

from trn_workloads.ray_train.config import ModelPreset

Checkpoint = Callable[..., torch.Tensor]  # torch.utils.checkpoint.checkpoint or torch_xla's


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int) -> int:
    """The vocabulary rounded up so the embedding and the output head split evenly across the TP group."""
    return -(-vocab_size // tensor_parallel_size) * tensor_parallel_size


def llama_config(preset: ModelPreset, *, vocab_size: int, attn_implementation: str = "eager"):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=preset.hidden_size, intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers, num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads, max_position_embeddings=preset.max_position_embeddings,
        rms_norm_eps=preset.rms_norm_eps, rope_theta=preset.rope_theta, initializer_range=preset.initializer_range,
        tie_word_embeddings=False, use_cache=False, attn_implementation=attn_implementation)


def core_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(d)) v over [batch, heads, seq, head_dim]; key/value heads repeat
    for grouped-query attention. Plain matmul/softmax ops, which the Neuron compiler fuses well."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.shape[-1])
    seq = query.shape[2]
    future = torch.ones(seq, seq, dtype=torch.bool, device=query.device).triu(1)
    scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value)


class LlamaSelfAttention(torch.nn.Module):
    """Llama attention over this rank's heads; the core attention is recomputed in the backward pass.

    `sequence_first`: hidden states come as [seq, batch, hidden] (sequence parallel: the
    projections gather the full sequence from [seq/tp, batch, hidden] shards), else [batch, seq, hidden].
    """

    def __init__(self, q_proj, k_proj, v_proj, o_proj, *, head_dim: int, sequence_first: bool,
                 checkpoint: Checkpoint | None):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.head_dim = head_dim
        self.sequence_first = sequence_first
        self.checkpoint = checkpoint  # None: keep the core attention's activations (no recompute)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:  # -> [batch, heads, seq, head_dim]
        if self.sequence_first:
            seq, batch, _ = states.shape
            return states.view(seq, batch, -1, self.head_dim).permute(1, 2, 0, 3)
        batch, seq, _ = states.shape
        return states.view(batch, seq, -1, self.head_dim).transpose(1, 2)

    def _merge_heads(self, states: torch.Tensor) -> torch.Tensor:  # [batch, heads, seq, head_dim] ->
        batch, heads, seq, _ = states.shape
        if self.sequence_first:
            return states.permute(2, 0, 1, 3).reshape(seq, batch, heads * self.head_dim)
        return states.transpose(1, 2).reshape(batch, seq, heads * self.head_dim)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                **_unused) -> tuple[torch.Tensor, None]:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        query, key, value = (self._split_heads(proj(hidden_states)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if self.checkpoint is not None and self.training:
            attended = self.checkpoint(core_attention, query, key, value)
        else:
            attended = core_attention(query, key, value)
        return self.o_proj(self._merge_heads(attended)), None


@functools.lru_cache(maxsize=None)
def _pretraining_llama_class():
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class PretrainingLlama(LlamaForCausalLM):
        """LlamaForCausalLM with a training forward: input_ids [batch, seq] -> logits [batch, seq, vocab(/tp)].

        Positions are 0..seq-1 (full blocks, no padding), causal attention, no cache. With
        `sequence_first` (sequence parallel) the embedding returns [seq/tp, batch, hidden]
        shards and the output head gathers [seq, batch, vocab/tp], transposed back here.
        """

        sequence_first = False

        def forward(self, input_ids: torch.Tensor, **_unused) -> CausalLMOutputWithPast:
            hidden = self.model.embed_tokens(input_ids)
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            position_embeddings = self.model.rotary_emb(hidden, positions)
            for layer in self.model.layers:
                hidden = layer(hidden, position_embeddings=position_embeddings)
            logits = self.lm_head(self.model.norm(hidden))
            if self.sequence_first:
                logits = logits.transpose(0, 1).contiguous()
            return CausalLMOutputWithPast(logits=logits)

    return PretrainingLlama


def cpu_checkpoint(function, *args):
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)


def build_cpu_llama(config, *, checkpoint: Checkpoint | None = cpu_checkpoint) -> torch.nn.Module:
    """A full-size PretrainingLlama in float32; the caller seeds torch first (same weights on every rank)."""
    model = _pretraining_llama_class()(config)
    head_dim = config.hidden_size // config.num_attention_heads
    for layer in model.model.layers:
        attn = layer.self_attn
        layer.self_attn = LlamaSelfAttention(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, head_dim=head_dim,
                                             sequence_first=False, checkpoint=checkpoint)
    return model


def build_tensor_parallel_llama(config, *, sequence_parallel: bool) -> torch.nn.Module:
    """PretrainingLlama whose linear layers and embedding are this rank's neuronx-distributed shards.

    Requires `parallel_state.initialize_model_parallel` to have run. Output logits are
    vocabulary-parallel (each rank has 1/tp of the vocabulary): use `parallel_cross_entropy`.
    With `sequence_parallel`, the norms' weights carry `sequence_parallel_enabled` so that
    neuronx-distributed's allreduce_sequence_parallel_gradients sums their gradients.
    """
    from neuronx_distributed.parallel_layers.layers import (ColumnParallelLinear, ParallelEmbedding,
                                                            RowParallelLinear)
    from torch_xla.utils.checkpoint import checkpoint as xla_checkpoint
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

    init = functools.partial(torch.nn.init.normal_, mean=0.0, std=config.initializer_range)
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    # sequence_dimension 0: the sequence-first layout of NxD's and optimum-neuron's Llama.
    sp = {"sequence_parallel_enabled": sequence_parallel, "sequence_dimension": 0} if sequence_parallel else {}

    def column(inputs: int, outputs: int) -> torch.nn.Module:  # output features split across ranks
        return ColumnParallelLinear(inputs, outputs, bias=False, gather_output=False, init_method=init, **sp)

    def row(inputs: int, outputs: int) -> torch.nn.Module:  # input features split, outputs all-reduced
        return RowParallelLinear(inputs, outputs, bias=False, input_is_parallel=True, init_method=init, **sp)

    def norm() -> torch.nn.Module:
        layer = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        layer.weight.sequence_parallel_enabled = sequence_parallel  # the attribute NxD's grads module reads
        return layer

    with torch.device("meta"):
        model = _pretraining_llama_class()(config)
    for layer in model.model.layers:
        layer.self_attn = LlamaSelfAttention(column(hidden, q_out), column(hidden, kv_out), column(hidden, kv_out),
                                             row(q_out, hidden), head_dim=head_dim, sequence_first=sequence_parallel,
                                             checkpoint=xla_checkpoint)
        mlp = layer.mlp
        mlp.gate_proj, mlp.up_proj, mlp.down_proj = column(hidden, inner), column(hidden, inner), row(inner, hidden)
        layer.input_layernorm, layer.post_attention_layernorm = norm(), norm()
    # Sequence parallel: the embedding reduce-scatters into [seq/tp, batch, hidden] (its own transpose).
    model.model.embed_tokens = ParallelEmbedding(config.vocab_size, hidden, init_method=init,
                                                 sequence_parallel_enabled=sequence_parallel)
    model.model.norm = norm()
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    model.lm_head = column(hidden, config.vocab_size)
    model.sequence_first = sequence_parallel
    left_on_meta = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left_on_meta:  # a transformers change added a module this function does not know about
        raise RuntimeError(f"tensor-parallel Llama: not materialised: {left_on_meta[:5]}")
    return model
