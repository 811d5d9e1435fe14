"""Llama 3 pretraining with TorchTitan (TorchTitan Neuron on trn2/trn3, plain torchtitan on CPU).

    config   the run config (typed; no torch import, the workload stack validates with it)
    data     fixed-length samples from the data-prep output (Megatron indexed dataset)
    titan_api  every TorchTitan name the trainer uses, and the check the image build runs on them
    train    python -m trn_workloads.titan.train --config run.json, one process per
             NeuronCore under torchrun: TorchTitan's Llama 3 model and parallelize_llama
             (FSDP2 + tensor parallel on a DeviceMesh) driven by our loop, with
             torch.distributed.checkpoint saves/resume and TensorBoard scalars
"""
from trn_workloads.typed_config import ConfigError  # noqa: F401  (the error the stack catches)
