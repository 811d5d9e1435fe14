"""Every TorchTitan name the trainer uses, imported here and nowhere else, and the check the
titan image build runs on them (`python -m trn_workloads.titan.titan_api`).

TorchTitan Neuron is a fork installed from source (images/titan/Dockerfile, commit pinned in
images/neuron-sdk.json); its version string "0.2.2+neuron.1" names no API, because
pytorch/torchtitan kept assets/version.txt at 0.2.2 from 73a0e6979 (2026-02-20) through main of
2026-08-21 (b5bcd76c6) while the names below landed on main:
  config.CompileConfig/ParallelismConfig/TrainingConfig, models.llama3.model_registry  #2386 9810191bb 2026-02-23
  models.common.attention.ScaledDotProductAttention                                 #2761 261819688 2026-03-31
  ParallelDims(spmd_backend=...) (parallelism.spmd_backend)                          #3466 641b5f6b8 2026-06-06
  components.optimizer.utils (flat optimizer state helpers as a package)            #4140 970fbddb3 2026-08-17
  components.checkpointer.base.ModelWrapper                                         #4141 6bc2108e9 2026-08-17
PyPI torchtitan 0.3.0 (.venv-titan, the CPU test) carries all of them (its torchtitan/ tree matches
pytorch/torchtitan main of 2026-08-19 for these modules). A fork commit without one of them, or
with other keyword arguments, fails the image build here instead of the first training step.

The keyword arguments of each call are built by the *_kwargs functions below: the trainer calls
with exactly those, and `problems()` binds exactly those against the installed signatures.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from types import SimpleNamespace

# (module, name): every TorchTitan symbol the trainer touches.
SYMBOLS = (
    ("torchtitan.components.checkpointer.base", "ModelWrapper"),
    ("torchtitan.components.optimizer.utils", "get_flat_optim_state_dict"),
    ("torchtitan.components.optimizer.utils", "init_optim_state"),
    ("torchtitan.components.optimizer.utils", "load_flat_optim_state_dict"),
    ("torchtitan.config", "CompileConfig"),
    ("torchtitan.config", "ParallelismConfig"),
    ("torchtitan.config", "TrainingConfig"),
    ("torchtitan.distributed", "ParallelDims"),
    ("torchtitan.distributed.utils", "clip_grad_norm_"),
    ("torchtitan.models.common.attention", "ScaledDotProductAttention"),
    ("torchtitan.models.llama3", "model_registry"),
    ("torchtitan.models.llama3", "parallelize_llama"),
)
# torchtitan resolves the mesh device type from CUDA-like modules at import; the trainer names it here.
DEVICE_TYPE_MODULE = "torchtitan.distributed.parallel_dims"
# Plain DTensor FSDP2/TP, TorchTitan's default (pytorch/torchtitan 641b5f6b8 config spmd_backend).
SPMD_BACKEND = "partial_dtensor"


def load() -> SimpleNamespace:
    """The symbols as attributes (`api.ParallelDims`); raises ImportError/AttributeError."""
    return SimpleNamespace(**{name: getattr(importlib.import_module(module), name) for module, name in SYMBOLS})


def parallel_dims_kwargs(*, dp_shard: int, tp: int, world_size: int) -> dict:
    return {"dp_replicate": 1, "dp_shard": dp_shard, "cp": 1, "tp": tp, "pp": 1, "ep": 1, "world_size": world_size,
            "spmd_backend": SPMD_BACKEND}


def training_kwargs(*, seq_len: int, local_batch_size: int, dtype: str) -> dict:
    return {"seq_len": seq_len, "local_batch_size": local_batch_size, "mixed_precision_param": dtype,
            "mixed_precision_reduce": "float32"}


def parallelism_kwargs(*, fsdp: int, tp: int) -> dict:
    return {"data_parallel_shard_degree": fsdp, "tensor_parallel_degree": tp, "spmd_backend": SPMD_BACKEND}


def compile_kwargs(*, enable: bool) -> dict:
    # TorchNeuron's torch.compile backend is "neuron" (it lowers through StableHLO and neuronx-cc, not
    # inductor): https://awsdocs-neuron.readthedocs-hosted.com/en/latest/torch/compile/about-torch-compile.html
    return {"enable": enable, "backend": "neuron"}


def parallelize_kwargs(*, parallel_dims, training, parallelism, compile_config, dump_folder: str) -> dict:
    return {"parallel_dims": parallel_dims, "training": training, "parallelism": parallelism,
            "compile_config": compile_config, "ac_config": None, "dump_folder": dump_folder}


def clip_kwargs(*, max_norm: float) -> dict:
    return {"max_norm": max_norm, "foreach": True}


def _calls(api: SimpleNamespace) -> list[tuple[str, object, tuple, dict]]:
    """(label, callable, positional, keyword) of every call the trainer makes, with placeholder values."""
    return [
        ("ParallelDims", api.ParallelDims, (), parallel_dims_kwargs(dp_shard=1, tp=1, world_size=1)),
        ("TrainingConfig", api.TrainingConfig, (), training_kwargs(seq_len=1, local_batch_size=1, dtype="float32")),
        ("ParallelismConfig", api.ParallelismConfig, (), parallelism_kwargs(fsdp=1, tp=1)),
        ("CompileConfig", api.CompileConfig, (), compile_kwargs(enable=False)),
        ("parallelize_llama", api.parallelize_llama, (None,),
         parallelize_kwargs(parallel_dims=None, training=None, parallelism=None, compile_config=None, dump_folder="")),
        ("clip_grad_norm_", api.clip_grad_norm_, ([],), clip_kwargs(max_norm=1.0)),
        ("model_registry", api.model_registry, ("debugmodel",), {}),
        ("ModelWrapper", api.ModelWrapper, (None,), {}),
        ("ScaledDotProductAttention.Config", api.ScaledDotProductAttention.Config, (), {}),
    ]


def problems() -> list[str]:
    """What the installed torchtitan lacks for the trainer, one line each (empty: it fits)."""
    found: list[str] = []
    for module, name in SYMBOLS:
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            found.append(f"{module}.{name}: {type(err).__name__}: {err}")
    try:
        if not hasattr(importlib.import_module(DEVICE_TYPE_MODULE), "device_type"):
            found.append(f"{DEVICE_TYPE_MODULE}.device_type: missing (the trainer sets the mesh device type there)")
    except ImportError as err:
        found.append(f"{DEVICE_TYPE_MODULE}: ImportError: {err}")
    if found:
        return found
    for label, func, args, kwargs in _calls(load()):
        try:
            inspect.signature(func).bind(*args, **kwargs)
        except TypeError as err:
            found.append(f"{label}({', '.join(kwargs)}): {err}; installed signature {inspect.signature(func)}")
    spmd = inspect.signature(load().ParallelDims).parameters.get("spmd_backend")
    allowed = "" if spmd is None else spmd.annotation if isinstance(spmd.annotation, str) else repr(spmd.annotation)
    if "Literal" in allowed and repr(SPMD_BACKEND) not in allowed.replace('"', "'"):  # a Literal that lacks ours
        found.append(f"ParallelDims(spmd_backend={SPMD_BACKEND!r}): not among {allowed}")
    return found


def main() -> int:
    found = problems()
    if found:
        print("torchtitan does not have the API trn_workloads.titan.train uses (pin another commit of the "
              "fork in images/neuron-sdk.json tracks.native.torchtitan_neuron_source, or port "
              "trn_workloads/titan/titan_api.py):\n  " + "\n  ".join(found), file=sys.stderr)
        return 1
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("torchtitan")
    except PackageNotFoundError:
        installed = "not installed as a distribution"
    print(f"torchtitan {installed}: {len(SYMBOLS)} symbols and {len(_calls(load()))} call signatures fit the trainer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
