"""Which models `python -m trn_workloads.compile --model NAME` can build.

Each registry entry is a builder (checkpoint path -> eval-mode nn.Module) plus the
default example-input layout. `module:attr` builds anything importable: an nn.Module
instance, or a class/factory called with no arguments.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trn_workloads.compile import housing_mlp

# The compile image bakes torchvision's ImageNet weights at this path (see images/compile/Dockerfile).
RESNET50_WEIGHTS_ENV = "RESNET50_WEIGHTS"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    build: Callable[[Path | None], nn.Module]
    input_names: tuple[str, ...] = ()
    sample_shapes: tuple[tuple[int, ...], ...] = ()  # per input, without the batch dimension


def _build_resnet50(weights: Path | None) -> nn.Module:
    weights = weights or (Path(os.environ[RESNET50_WEIGHTS_ENV]) if os.environ.get(RESNET50_WEIGHTS_ENV) else None)
    if weights is None:
        raise ValueError(f"--model resnet50 needs --weights PATH (a torchvision state dict) or ${RESNET50_WEIGHTS_ENV}")
    import torchvision  # pinned in images/compile/requirements.txt; not installable beside the test torch

    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(_state_dict(torch.load(weights, map_location="cpu", weights_only=True), weights))
    return model


def _build_housing_mlp(checkpoint: Path | None) -> nn.Module:
    if checkpoint is None:
        raise ValueError("--model housing-mlp needs --checkpoint PATH (written by `housing_mlp train`)")
    return housing_mlp.load_checkpoint(checkpoint)


REGISTRY: dict[str, ModelEntry] = {
    "resnet50": ModelEntry(_build_resnet50, ("image",), ((3, 224, 224),)),
    "housing-mlp": ModelEntry(_build_housing_mlp, ("features",), ((housing_mlp.INPUT_FEATURES,),)),
}


def resolve(name: str) -> ModelEntry:
    """A registry entry, or an entry for `module:attr` (no default input layout)."""
    if name in REGISTRY:
        return REGISTRY[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model {name!r} is not one of {', '.join(REGISTRY)} or a 'module:attr' reference")
    return ModelEntry(lambda checkpoint: _build_import(module_name, attr, checkpoint))


def _build_import(module_name: str, attr: str, checkpoint: Path | None) -> nn.Module:
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--model {module_name}:{attr} cannot be imported: {err}") from err
    if not (isinstance(target, nn.Module) or callable(target)):
        raise ValueError(f"--model {module_name}:{attr} gave a {type(target).__name__}, expected a torch.nn.Module")
    model = target if isinstance(target, nn.Module) else target()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {module_name}:{attr} gave a {type(model).__name__}, expected a torch.nn.Module")
    if checkpoint is not None:
        model.load_state_dict(_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), checkpoint))
    return model


def _state_dict(loaded, path: Path) -> dict[str, torch.Tensor]:
    # Accept a bare state dict or the common {"state_dict": ...} wrapper.
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor)")
    return loaded


def state_dict_sha256(model: nn.Module) -> str:
    """Checksum of the weights themselves, for models built without a checkpoint file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
