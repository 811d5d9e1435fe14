"""Tracing a model into TorchScript: torch_neuronx.trace on Neuron, torch.jit.trace on CPU.

`trace_model` is the one place in compile that branches on `trn_workloads.accel`.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from pathlib import Path
from typing import Sequence

import torch

from trn_workloads import accel

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Traced:
    module: torch.jit.ScriptModule
    backend: str  # accel.Backend value
    tracer: str


def trace_model(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    compiler_args: Sequence[str] = (),
    compiler_workdir: Path | None = None,
) -> Traced:
    model = model.eval()
    example = example_inputs[0] if len(example_inputs) == 1 else example_inputs
    if accel.is_neuron():
        import torch_neuronx  # only in the Neuron images

        # neuronx-cc compiles the graph for NeuronCore-v2 (trn1/inf2); the result holds a
        # NEFF with fixed input shapes, so the batch size is part of the artifact.
        module = torch_neuronx.trace(
            model,
            example,
            compiler_args=list(compiler_args) or None,
            compiler_workdir=str(compiler_workdir) if compiler_workdir else None,
        )
        return Traced(module, accel.Backend.NEURON.value, "torch_neuronx.trace")

    if compiler_args:
        log.warning("CPU path: ignoring Neuron compiler args %s", list(compiler_args))
    log.warning("CPU path: tracing with torch.jit.trace; the artifact runs on CPU only, not on Neuron")
    with torch.no_grad():
        module = torch.jit.trace(model, example)
    return Traced(module, accel.Backend.CPU.value, "torch.jit.trace")


def compiler_version() -> str | None:
    """neuronx-cc's version where it is installed (the Neuron images), else None."""
    try:
        return importlib.metadata.version("neuronx-cc")
    except importlib.metadata.PackageNotFoundError:
        return None
