"""What differs between a Neuron worker and a CPU worker, behind one small interface.

`worker_runtime(cfg)` is the only place a training worker chooses (through
`trn_workloads.accel`). Both runtimes offer the same operations, in the order a step uses them:

    build_model   -> the model on this rank's device (CPU: DDP-wrapped; Neuron: TP + sequence-parallel shards, bf16)
    no_sync       -> context for non-final micro-batches (skip the gradient all-reduce)
    loss          -> mean next-token cross entropy of logits vs targets
    optimizer_step-> reduce gradients over data parallel ranks, clip, step; returns the grad norm
    mark_step     -> end of the traced step (Neuron: cut and run the XLA graph)
    mean_over_data_parallel, save, load

Ranks: `dp_rank`/`dp_size` choose the data a worker reads; `tp_rank` names its checkpoint shard.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from trn_workloads import accel
from trn_workloads.neuron_flags import merge_compiler_flags
from trn_workloads.ray_train.config import ConfigError, ModelPreset, PretrainConfig
from trn_workloads.ray_train.model import build_cpu_llama, build_tensor_parallel_llama, llama_config


def neuron_compiler_env(env: Mapping[str, str], compile_cache: str) -> dict[str, str]:
    """Neuron compiler/runtime settings for training workers, keeping whatever the pod already sets.

    The cache on FSx is shared by every node, so graphs compiled by the precompile step (or by
    any worker) are never compiled again.
    """
    flags = merge_compiler_flags(env.get("NEURON_CC_FLAGS"), [
        f"--cache_dir={compile_cache}", "--model-type=transformer", "--distribution-strategy=llm-training"])
    return {
        "NEURON_CC_FLAGS": flags,
        "NEURON_COMPILE_CACHE_URL": env.get("NEURON_COMPILE_CACHE_URL", compile_cache),
        # bf16 weights with stochastic rounding keep small updates from rounding away.
        "NEURON_RT_STOCHASTIC_ROUNDING_EN": env.get("NEURON_RT_STOCHASTIC_ROUNDING_EN", "1"),
    }


def worker_runtime(cfg: PretrainConfig, *, driver_backend: str) -> "CpuRuntime | NeuronRuntime":
    """The runtime of this Ray Train worker: Neuron on Trainium, CPU (gloo data parallel) elsewhere.

    `driver_backend` is what the job driver chose its Ray backend config by (gloo or xla); a
    worker on the other backend could not join that process group, so it stops here instead.
    """
    here = accel.backend().value
    if here != driver_backend:
        raise RuntimeError(f"the job driver runs the {driver_backend} backend but this worker runs {here}: set "
                           f"{accel.ENV_VAR}={here} for the whole job (RayJob runtimeEnvYAML env_vars), not only "
                           f"on the worker pods")
    if accel.is_neuron():
        return NeuronRuntime(cfg)
    return CpuRuntime(cfg)


class CpuRuntime:
    """Data parallel over the gloo process group that Ray's TorchConfig set up; float32."""

    name = "cpu"

    def __init__(self, cfg: PretrainConfig) -> None:
        if cfg.tensor_parallel_size != 1:
            raise ConfigError(f"tensor_parallel_size: {cfg.tensor_parallel_size} needs the Neuron backend; the CPU "
                              f"path is data parallel only, set 1 (TRN_BACKEND={accel.backend().value})")
        self.device = torch.device("cpu")
        distributed = torch.distributed.is_initialized()
        self.dp_rank = torch.distributed.get_rank() if distributed else 0
        self.dp_size = torch.distributed.get_world_size() if distributed else 1
        self.tp_rank = 0

    def build_model(self, preset: ModelPreset, vocab_size: int) -> torch.nn.Module:
        model = build_cpu_llama(llama_config(preset, vocab_size=vocab_size))
        if self.dp_size == 1:
            return model
        # DDP broadcasts rank 0's weights, so every replica starts identical.
        return torch.nn.parallel.DistributedDataParallel(model)

    @staticmethod
    def unwrap(model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def no_sync(self, model: torch.nn.Module, *, last_micro_batch: bool):
        if last_micro_batch or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return model.no_sync()

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @staticmethod
    def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # DDP has averaged the gradients
        optimizer.step()
        return norm

    @staticmethod
    def mark_step() -> None:
        pass

    def mean_over_data_parallel(self, value: torch.Tensor) -> float:
        value = value.detach().clone()
        if self.dp_size > 1:
            torch.distributed.all_reduce(value)
        return value.item() / self.dp_size

    @staticmethod
    def save(state: dict[str, Any], path: Path) -> None:
        torch.save(state, path)

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)


class NeuronRuntime:
    """torch-xla on one NeuronCore per worker; neuronx-distributed tensor parallel groups of tp workers.

    Ray's TorchXLAConfig has already initialised the "xla" process group on every worker.
    """

    name = "neuron"

    def __init__(self, cfg: PretrainConfig) -> None:
        os.environ.update(neuron_compiler_env(os.environ, cfg.compile_cache))  # before the first graph compiles
        import torch_xla.core.xla_model as xm
        from neuronx_distributed.parallel_layers import parallel_state

        parallel_state.initialize_model_parallel(tensor_model_parallel_size=cfg.tensor_parallel_size)
        self._xm, self._parallel_state = xm, parallel_state
        self.device = xm.xla_device()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_size()
        self._dp_groups = parallel_state.get_data_parallel_group(as_list=True)
        self.sequence_parallel = cfg.tensor_parallel_size > 1

    def build_model(self, preset: ModelPreset, vocab_size: int) -> torch.nn.Module:
        # Sequence parallel whenever there is a tensor-parallel group to split the sequence over.
        from neuronx_distributed.utils.model_utils import move_model_to_device

        model = build_tensor_parallel_llama(llama_config(preset, vocab_size=vocab_size),
                                            sequence_parallel=self.sequence_parallel)
        # Not model.to(device): moving to XLA makes new Parameter objects and drops the attributes
        # NxD reads (tensor_model_parallel for the gradient-norm clip, sequence_parallel_enabled for the
        # norms' gradient sum); NxD's helper keeps them (neuronx-distributed 0.15 utils/model_utils.py).
        move_model_to_device(model.to(torch.bfloat16), self.device)
        return model

    @staticmethod
    def unwrap(model: torch.nn.Module) -> torch.nn.Module:
        return model

    @staticmethod
    def no_sync(model: torch.nn.Module, *, last_micro_batch: bool):
        return contextlib.nullcontext()  # gradients accumulate locally; optimizer_step reduces them once

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from neuronx_distributed.parallel_layers.loss_functions import parallel_cross_entropy

        return parallel_cross_entropy(logits.float(), targets).mean()  # logits are vocabulary-parallel

    def optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
        from neuronx_distributed.parallel_layers.grads import allreduce_sequence_parallel_gradients, clip_grad_norm

        # Sequence parallel: each TP rank saw 1/tp of the sequence, so the norms' weight gradients
        # are partial sums over the group (NxD marks and sums them: neuronx-distributed 0.15 grads.py).
        if self.sequence_parallel:
            allreduce_sequence_parallel_gradients(optimizer)
        # Not xm.optimizer_step: it averages over the whole world (1/world size), but with tensor
        # parallelism only the data parallel replicas hold the same parameters, and the clip
        # must see the averaged gradients, across the TP shards (NxD's clip_grad_norm does that).
        if self.dp_size > 1:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            self._xm.all_reduce(self._xm.REDUCE_SUM, grads, scale=1.0 / self.dp_size, groups=self._dp_groups)
        norm = clip_grad_norm(list(model.parameters()), max_norm)  # it needs a list, not a generator
        optimizer.step()
        return norm

    def mark_step(self) -> None:
        self._xm.mark_step()

    def mean_over_data_parallel(self, value: torch.Tensor) -> float:
        if self.dp_size > 1:
            value = self._xm.all_reduce(self._xm.REDUCE_SUM, value.detach(), scale=1.0 / self.dp_size,
                                        groups=self._dp_groups)
        return value.item()

    @staticmethod
    def save(state: dict[str, Any], path: Path) -> None:
        # Not xm.save: it ends in a rendezvous of all workers, but only the TP ranks of data
        # parallel replica 0 write shards. The step's graph has run (mark_step), so this copies.
        torch.save(_to_cpu(state), path)

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
