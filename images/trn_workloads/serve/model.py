"""Load a compiled artifact and run batches through it at its fixed compiled batch size."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trn_workloads import accel, artifacts
from trn_workloads.compile.manifest import Manifest, read_manifest, sha256_file

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedModel:
    manifest: Manifest
    module: Callable[..., object]  # the TorchScript module (or anything called like it)
    calls: int = 0  # model invocations so far, for /stats

    def predict(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run rows through the model; inputs[i] is [n, *sample_shape] for manifest input i.

        The traced graph takes exactly `batch_size` rows (a Neuron NEFF has fixed shapes),
        so rows go through in chunks of that size, the last one padded with zeros and the
        padding dropped from the outputs.
        """
        batch = self.manifest.batch_size
        rows = inputs[0].shape[0]
        tensors = [_to_tensor(a, spec.dtype) for a, spec in zip(inputs, self.manifest.inputs)]
        chunks: list[list[torch.Tensor]] = []
        for start in range(0, rows, batch):
            chunk = [pad_rows(t[start:start + batch], batch) for t in tensors]
            with torch.inference_mode():
                result = self.module(*chunk)
            self.calls += 1
            outputs = [result] if isinstance(result, torch.Tensor) else list(result)
            chunks.append([o[: min(batch, rows - start)] for o in outputs])
        return [torch.cat(parts).float().numpy() if parts[0].is_floating_point() else torch.cat(parts).numpy()
                for parts in zip(*chunks)]


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero-pad the batch dimension up to `rows`."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((missing, *tensor.shape[1:]))])


def _to_tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    # numpy has no bfloat16: requests arrive as float32 and are cast here.
    return torch.from_numpy(np.ascontiguousarray(array)).to(getattr(torch, dtype))


def fetch_artifact(model_uri: str, cache_dir: str | Path) -> Path:
    """A local directory with model.pt + manifest.json: the path itself, or a download of s3://."""
    if artifacts.is_s3_uri(model_uri):
        prefix = model_uri if model_uri.endswith("/") else model_uri + "/"
        return artifacts.download(prefix, Path(cache_dir))
    path = Path(model_uri)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {model_uri} does not exist")
    return path


def load_model(model_uri: str, cache_dir: str | Path) -> LoadedModel:
    directory = fetch_artifact(model_uri, cache_dir)
    manifest = read_manifest(directory)
    model_path = directory / manifest.model_file
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} is missing (named by {directory / 'manifest.json'})")
    actual = sha256_file(model_path)
    if actual != manifest.model_sha256:
        raise ValueError(f"{model_path}: sha256 {actual} does not match the manifest's model_sha256 {manifest.model_sha256}")
    module = _load_torchscript(model_path, manifest)
    log.info("loaded %s (%s, compiled batch %d) from %s", manifest.model_name, manifest.tracer, manifest.batch_size, model_uri)
    return LoadedModel(manifest=manifest, module=module)


def _load_torchscript(path: Path, manifest: Manifest):
    if accel.is_neuron():
        # Importing torch_neuronx registers the Neuron op that runs the embedded NEFF; the
        # runtime places it on the NeuronCores this pod was given (NEURON_RT_VISIBLE_CORES).
        import torch_neuronx  # noqa: F401

        if manifest.backend != accel.Backend.NEURON.value:
            log.warning("%s was traced on %s, not compiled for Neuron: it will run on the host CPU", path, manifest.backend)
        return torch.jit.load(str(path))

    if manifest.backend == accel.Backend.NEURON.value:
        raise RuntimeError(f"{path} was compiled for Neuron ({manifest.tracer}); this host has no Neuron runtime")
    log.warning("CPU path: serving %s on the host CPU", path)
    return torch.jit.load(str(path), map_location="cpu")
