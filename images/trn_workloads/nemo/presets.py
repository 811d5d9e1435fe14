"""Model presets for NeMo-Megatron-style Llama pretraining with NxD Training on trn1.32xlarge.

`llama2-7b` is Llama-2-7B with the sizes of the Neuron Llama-2-7B pretraining tutorial
(4 x trn1.32xlarge, TP 8, PP 1, sequence 4096, global batch 256, micro batch 1); the
architecture values are those of NxD Training's Megatron Llama-7B example
(examples/conf/megatron_llama_7B_config.yaml at the pinned commit, see nxdt.py). `small`
is a ~1B Llama that fits one trn1.32xlarge, for trying the stack end to end cheaply. `tiny` is a
few-hundred-thousand-parameter model for rehearsals (trnctl/rehearse/overlay.py): the CPU stand-in
(standin.py) trains it for real, from the same YAML, in well under a second a step.
"""
from __future__ import annotations

import dataclasses
import types

# One trn1.32xlarge: 16 Trainium chips x 2 NeuronCores, 8 EFA interfaces.
TRN1_32XL_NEURON_CORES = 32
TRN1_32XL_EFA = 8


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    name: str
    # architecture (NxD Training `model.*` names)
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int  # = num_attention_heads: multi-head attention, as in Llama-2-7B
    init_method_std: float
    layernorm_epsilon: float
    # run defaults a RunConfig may override
    nodes: int
    seq_length: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    global_batch_size: int
    micro_batch_size: int
    lr: float
    min_lr: float
    warmup_steps: int
    instance_type: str = "trn1.32xlarge"
    neuron_cores_per_node: int = TRN1_32XL_NEURON_CORES
    efa_per_node: int = TRN1_32XL_EFA


PRESETS: types.MappingProxyType[str, ModelPreset] = types.MappingProxyType({
    "llama2-7b": ModelPreset(
        name="llama2-7b", hidden_size=4096, ffn_hidden_size=11008, num_layers=32, num_attention_heads=32,
        num_kv_heads=32, init_method_std=0.021, layernorm_epsilon=1e-5,
        nodes=4, seq_length=4096, tensor_parallel_size=8, pipeline_parallel_size=1,
        global_batch_size=256, micro_batch_size=1, lr=3.0e-4, min_lr=3.0e-5, warmup_steps=10),
    "small": ModelPreset(
        name="small", hidden_size=2048, ffn_hidden_size=5504, num_layers=16, num_attention_heads=16,
        num_kv_heads=16, init_method_std=0.02, layernorm_epsilon=1e-5,
        nodes=1, seq_length=2048, tensor_parallel_size=8, pipeline_parallel_size=1,
        global_batch_size=64, micro_batch_size=1, lr=3.0e-4, min_lr=3.0e-5, warmup_steps=10),
    "tiny": ModelPreset(
        name="tiny", hidden_size=64, ffn_hidden_size=172, num_layers=2, num_attention_heads=4,
        num_kv_heads=4, init_method_std=0.02, layernorm_epsilon=1e-5,
        nodes=1, seq_length=128, tensor_parallel_size=1, pipeline_parallel_size=1,
        global_batch_size=64, micro_batch_size=1, lr=3.0e-3, min_lr=3.0e-4, warmup_steps=2),
})
