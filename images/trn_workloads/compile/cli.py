r"""Compile a model to a TorchScript artifact (`model.pt` + `manifest.json`) and upload it.

    python -m trn_workloads.compile --model housing-mlp --checkpoint /fsx/housing/housing_mlp.pt \
        --batch-size 8 --output-dir /fsx/compiled/housing-mlp --s3-uri s3://bucket/compiled/housing-mlp/

    python -m trn_workloads.compile --model resnet50 --batch-size 1 --output-dir /fsx/compiled/resnet50 \
        --compiler-args "--auto-cast matmult --auto-cast-type bf16"

    python -m trn_workloads.compile --model mypkg.models:Net --input-shape 3,32,32 --output-dir out/

On Neuron (trn1/inf2, see trn_workloads.accel) the model goes through torch_neuronx.trace
and neuronx-cc; elsewhere through torch.jit.trace, and the manifest says so ("backend").
The traced graph has a fixed batch size: the server pads smaller batches up to it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from trn_workloads import artifacts
from trn_workloads.compile import models
from trn_workloads.compile.manifest import (
    FLOAT_DTYPES,
    MANIFEST_FILE,
    MODEL_FILE,
    SUPPORTED_DTYPES,
    Manifest,
    TensorSpec,
    sha256_file,
    write_manifest,
)
from trn_workloads.compile.tracing import compiler_version, trace_model

log = logging.getLogger(__name__)

NEURON_SDK_VERSION_ENV = "NEURON_SDK_VERSION"  # set by the image from images/neuron-sdk.json


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    model: str  # registry name (resnet50, housing-mlp) or module:attr
    output_dir: str
    batch_size: int = 1
    input_shapes: tuple[tuple[int, ...], ...] = ()  # per input, without the batch dimension
    input_dtypes: tuple[str, ...] = ()  # per input; float32 when empty
    input_names: tuple[str, ...] = ()
    checkpoint: str | None = None  # local/FSx path or s3:// URI
    example_input: str | None = None  # torch.save'd tensor (or tuple of tensors), batch first
    s3_uri: str | None = None
    compiler_args: tuple[str, ...] = ()
    compiler_workdir: str | None = None
    model_name: str | None = None  # name in the manifest; defaults to `model`

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for dtype in self.input_dtypes:
            if dtype not in SUPPORTED_DTYPES:
                raise ValueError(f"input dtype {dtype!r} is not one of {', '.join(SUPPORTED_DTYPES)}")
        for shape in self.input_shapes:
            if not shape or any(d < 1 for d in shape):
                raise ValueError(f"input shape {list(shape)} must be one or more positive integers")
        if self.s3_uri is not None:
            artifacts.parse_s3_uri(self.s3_uri)
        if self.example_input is not None and not Path(self.example_input).is_file():
            raise ValueError(f"example_input {self.example_input} is not a file")


@dataclasses.dataclass(frozen=True)
class InputLayout:
    names: tuple[str, ...]
    sample_shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]


def input_layout(config: CompileConfig, entry: models.ModelEntry, example: tuple[torch.Tensor, ...] | None) -> InputLayout:
    """Settle names/shapes/dtypes from the CLI, the example input file and the registry, in that order."""
    if example is not None:
        from_example = tuple(tuple(t.shape[1:]) for t in example)
        if config.input_shapes and tuple(config.input_shapes) != from_example:
            raise ValueError(f"--input-shape {_fmt(config.input_shapes)} disagrees with --example-input shapes {_fmt(from_example)}")
        shapes = from_example
        dtypes = tuple(str(t.dtype).removeprefix("torch.") for t in example)
    else:
        shapes = tuple(config.input_shapes) or entry.sample_shapes
        if not shapes:
            raise ValueError(f"--model {config.model} has no default input shape: pass --input-shape (e.g. 3,224,224)")
        dtypes = tuple(config.input_dtypes) or ("float32",) * len(shapes)
    if len(dtypes) != len(shapes):
        raise ValueError(f"{len(dtypes)} input dtypes given for {len(shapes)} inputs")
    for dtype in dtypes:
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"input dtype {dtype!r} is not one of {', '.join(SUPPORTED_DTYPES)}")
    names = tuple(config.input_names) or entry.input_names or tuple(f"input{i}" for i in range(len(shapes)))
    if len(names) != len(shapes):
        raise ValueError(f"{len(names)} input names given for {len(shapes)} inputs")
    return InputLayout(names, shapes, dtypes)


def load_example(path: str, batch_size: int) -> tuple[torch.Tensor, ...]:
    """The first `batch_size` rows of each tensor saved at `path`."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    tensors = (loaded,) if isinstance(loaded, torch.Tensor) else tuple(loaded) if isinstance(loaded, (list, tuple)) else ()
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise ValueError(f"{path}: expected a tensor or a tuple of tensors with a batch dimension")
    for t in tensors:
        if t.shape[0] < batch_size:
            raise ValueError(f"{path}: has {t.shape[0]} rows, fewer than --batch-size {batch_size}")
    return tuple(t[:batch_size].contiguous() for t in tensors)


def random_example(layout: InputLayout, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for shape, dtype in zip(layout.sample_shapes, layout.dtypes):
        torch_dtype = getattr(torch, dtype)
        if dtype in FLOAT_DTYPES:
            tensors.append(torch.randn((batch_size, *shape), generator=generator).to(torch_dtype))
        else:  # integer inputs are usually ids: 0 is valid for any vocabulary
            tensors.append(torch.zeros((batch_size, *shape), dtype=torch_dtype))
    return tuple(tensors)


def compile_model(config: CompileConfig) -> Path:
    """Build, trace, save and (optionally) upload; returns the output directory."""
    entry = models.resolve(config.model)
    out = Path(config.output_dir)
    with tempfile.TemporaryDirectory(prefix="compile-") as scratch:
        checkpoint = _local_copy(config.checkpoint, Path(scratch))
        example = load_example(config.example_input, config.batch_size) if config.example_input else None
        layout = input_layout(config, entry, example)
        model = entry.build(checkpoint).eval()
        if example is None:
            example = random_example(layout, config.batch_size)
        float_dtypes = [d for d in layout.dtypes if d in FLOAT_DTYPES]
        if float_dtypes and float_dtypes[0] != "float32":
            model = model.to(getattr(torch, float_dtypes[0]))

        with torch.no_grad():
            eager_out = model(*example)
        outputs = _output_specs(eager_out)
        source_sha = sha256_file(checkpoint) if checkpoint else models.state_dict_sha256(model)

        workdir = Path(config.compiler_workdir) if config.compiler_workdir else Path(scratch) / "neuronx-cc"
        traced = trace_model(model, example, compiler_args=config.compiler_args, compiler_workdir=workdir)

        out.mkdir(parents=True, exist_ok=True)
        model_path = out / MODEL_FILE
        tmp_model = out / f".{MODEL_FILE}.tmp"
        try:
            torch.jit.save(traced.module, str(tmp_model))
            # A manifest from an earlier run must not describe the new model.pt, even briefly.
            (out / MANIFEST_FILE).unlink(missing_ok=True)
            os.replace(tmp_model, model_path)
        finally:
            tmp_model.unlink(missing_ok=True)

    manifest = Manifest(
        model_name=config.model_name or config.model,
        batch_size=config.batch_size,
        inputs=tuple(TensorSpec(n, (config.batch_size, *s), d) for n, s, d in zip(layout.names, layout.sample_shapes, layout.dtypes)),
        outputs=outputs,
        backend=traced.backend,
        tracer=traced.tracer,
        neuron_sdk_version=os.environ.get(NEURON_SDK_VERSION_ENV) or None,
        compiler_version=compiler_version(),
        compiler_args=tuple(config.compiler_args),
        torch_version=torch.__version__,
        source=config.checkpoint or "state_dict",
        source_sha256=source_sha,
        model_sha256=sha256_file(model_path),
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_manifest(manifest, out)
    log.info("wrote %s and %s (%s, batch %d)", model_path, out / MANIFEST_FILE, traced.tracer, config.batch_size)

    if config.s3_uri:
        prefix = config.s3_uri if config.s3_uri.endswith("/") else config.s3_uri + "/"
        # The manifest goes last: a reader that finds it can trust model.pt is complete.
        artifacts.upload_file(model_path, prefix + MODEL_FILE)
        artifacts.upload_file(out / MANIFEST_FILE, prefix + MANIFEST_FILE)
    return out


def _local_copy(source: str | None, scratch: Path) -> Path | None:
    if source is None:
        return None
    if artifacts.is_s3_uri(source):
        return artifacts.download(source, scratch / "source" / Path(source).name)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"checkpoint {source} is not a file")
    return path


def _output_specs(result) -> tuple[TensorSpec, ...]:
    tensors = (result,) if isinstance(result, torch.Tensor) else tuple(result) if isinstance(result, (tuple, list)) else None
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise ValueError(f"model output must be a tensor or a tuple of tensors, got {type(result).__name__}")
    return tuple(TensorSpec(f"output{i}", tuple(t.shape), str(t.dtype).removeprefix("torch.")) for i, t in enumerate(tensors))


def _fmt(shapes) -> str:
    return " ".join(",".join(map(str, s)) for s in shapes)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 3,224,224") from None


def parse_args(argv: list[str] | None = None) -> CompileConfig:
    p = argparse.ArgumentParser(prog="python -m trn_workloads.compile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"{' | '.join(models.REGISTRY)} | module:attr")
    p.add_argument("--output-dir", required=True, help="where model.pt and manifest.json go (an FSx path in the cluster)")
    p.add_argument("--batch-size", type=int, default=1, help="compiled (fixed) batch size")
    p.add_argument("--input-shape", type=_shape, action="append", default=[],
                   help="per-sample shape without batch, e.g. 3,224,224; repeat for several inputs")
    p.add_argument("--input-dtype", action="append", default=[], choices=SUPPORTED_DTYPES, help="per input; default float32")
    p.add_argument("--input-name", action="append", default=[], help="per input; defaults from the registry")
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", help="weights file, local/FSx path or s3:// URI")
    p.add_argument("--example-input", help="torch.save'd example tensor(s), batch first (e.g. from housing_mlp train)")
    p.add_argument("--s3-uri", help="upload model.pt and manifest.json under this s3://bucket/prefix/")
    p.add_argument("--compiler-args", default="", help='neuronx-cc arguments as one string, e.g. "--auto-cast none"')
    p.add_argument("--compiler-workdir", help="keep neuronx-cc intermediates here (debugging)")
    p.add_argument("--model-name", help="name recorded in the manifest (default: --model)")
    a = p.parse_args(argv)
    return CompileConfig(
        model=a.model, output_dir=a.output_dir, batch_size=a.batch_size,
        input_shapes=tuple(a.input_shape), input_dtypes=tuple(a.input_dtype), input_names=tuple(a.input_name),
        checkpoint=a.checkpoint, example_input=a.example_input, s3_uri=a.s3_uri,
        compiler_args=tuple(shlex.split(a.compiler_args)), compiler_workdir=a.compiler_workdir, model_name=a.model_name,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        compile_model(parse_args(argv))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
