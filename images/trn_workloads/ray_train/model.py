"""Llama for pretraining from a preset: random init, the vocabulary of the prepared data.

CPU: a plain `transformers` LlamaForCausalLM. Neuron: the same model class with every
projection, the embedding and the output head replaced by neuronx-distributed tensor-parallel
layers, so each rank holds 1/tp of them. The decoder's attention reshapes with `-1` heads
and keeps the query/key-value head ratio, so it runs unchanged on a shard of the heads.
The model is first built on the meta device: no worker ever materialises the full 7B weights.
"""
from __future__ import annotations

import functools
import itertools

import torch

from trn_workloads.ray_train.config import ModelPreset


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int) -> int:
    """The vocabulary rounded up so the embedding and the output head split evenly across the TP group."""
    return -(-vocab_size // tensor_parallel_size) * tensor_parallel_size


def llama_config(preset: ModelPreset, *, vocab_size: int, attn_implementation: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=preset.hidden_size, intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers, num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads, max_position_embeddings=preset.max_position_embeddings,
        rms_norm_eps=preset.rms_norm_eps, rope_theta=preset.rope_theta, initializer_range=preset.initializer_range,
        tie_word_embeddings=False, use_cache=False, attn_implementation=attn_implementation)


def build_cpu_llama(config) -> torch.nn.Module:
    """A full-size LlamaForCausalLM in float32; the caller seeds torch first (same weights on every rank)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(config)


def build_tensor_parallel_llama(config) -> torch.nn.Module:
    """LlamaForCausalLM whose linear layers and embedding are this rank's neuronx-distributed shards.

    Requires `parallel_state.initialize_model_parallel` to have run. Output logits are
    vocabulary-parallel (each rank has 1/tp of the vocabulary): use `parallel_cross_entropy`.
    """
    from neuronx_distributed.parallel_layers.layers import (ColumnParallelLinear, ParallelEmbedding,
                                                            RowParallelLinear)
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

    init = functools.partial(torch.nn.init.normal_, mean=0.0, std=config.initializer_range)
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim

    def column(inputs: int, outputs: int) -> torch.nn.Module:  # output features split across ranks
        return ColumnParallelLinear(inputs, outputs, bias=False, gather_output=False, init_method=init)

    def row(inputs: int, outputs: int) -> torch.nn.Module:  # input features split, outputs all-reduced
        return RowParallelLinear(inputs, outputs, bias=False, input_is_parallel=True, init_method=init)

    def norm() -> torch.nn.Module:
        return LlamaRMSNorm(hidden, eps=config.rms_norm_eps)

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj, attn.k_proj, attn.v_proj = column(hidden, q_out), column(hidden, kv_out), column(hidden, kv_out)
        attn.o_proj = row(q_out, hidden)
        mlp.gate_proj, mlp.up_proj, mlp.down_proj = column(hidden, inner), column(hidden, inner), row(inner, hidden)
        layer.input_layernorm, layer.post_attention_layernorm = norm(), norm()
    model.model.embed_tokens = ParallelEmbedding(config.vocab_size, hidden, init_method=init)
    model.model.norm = norm()
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    model.lm_head = ColumnParallelLinear(hidden, config.vocab_size, bias=False, gather_output=False,
                                         init_method=init)
    left_on_meta = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left_on_meta:  # a transformers change added a module this function does not know about
        raise RuntimeError(f"tensor-parallel Llama: not materialised: {left_on_meta[:5]}")
    return model
