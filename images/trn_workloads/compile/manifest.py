"""The manifest written beside every compiled `model.pt`, and read back by the server.

It records what the traced graph expects (the graph has fixed input shapes, so the
server validates requests against it) and where the artifact came from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"

# Input dtypes a compiled model may take; the names are torch's and numpy's alike.
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32")
FLOAT_DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # full shape, batch dimension first
    dtype: str

    def __post_init__(self):
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(SUPPORTED_DTYPES)}")
        if not self.shape or any((not isinstance(d, int)) or d < 1 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: shape {list(self.shape)} must be positive integers, batch first")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


@dataclasses.dataclass(frozen=True)
class Manifest:
    model_name: str
    batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str  # "neuron" or "cpu": which tracer produced model.pt
    tracer: str
    neuron_sdk_version: str | None
    compiler_version: str | None
    compiler_args: tuple[str, ...]
    torch_version: str
    source: str  # the checkpoint the weights came from, or "state_dict"
    source_sha256: str
    model_sha256: str
    created_at: str
    model_file: str = MODEL_FILE
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str = MANIFEST_FILE) -> "Manifest":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - data.keys() - {"model_file", "format_version"})
        if missing:
            raise ValueError(f"{where}: missing keys {', '.join(missing)}")
        unknown = sorted(data.keys() - fields)
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
        try:
            values = dict(data)
            values["inputs"] = tuple(_tensor_spec(t) for t in data["inputs"])
            values["outputs"] = tuple(_tensor_spec(t) for t in data["outputs"])
            values["compiler_args"] = tuple(data["compiler_args"])
            manifest = cls(**values)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{where}: {err}") from err
        if not manifest.inputs:
            raise ValueError(f"{where}: inputs is empty")
        for spec in manifest.inputs:
            if spec.shape[0] != manifest.batch_size:
                raise ValueError(f"{where}: input {spec.name!r} batch dimension {spec.shape[0]} != batch_size {manifest.batch_size}")
        return manifest


def _tensor_spec(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=data["name"], shape=tuple(data["shape"]), dtype=data["dtype"])


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, then rename into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    path = directory / MANIFEST_FILE
    write_atomic(path, (json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {directory}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    return Manifest.from_json(data, where=str(path))
