"""The bridge from workload stacks to the code inside the images.

A stack checks a run's configuration with the very code the image runs (presets,
parallelism rules, config loaders under images/trn_workloads/), against the platform pool
it will land on, and builds the container command lines from the same place. Errors
come back as WorkloadConfigError naming the stack config key.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from workloads.errors import WorkloadConfigError
from workloads.platform import PoolScheduling

_IMAGES = Path(__file__).resolve().parent.parent / "images"
if str(_IMAGES) not in sys.path:
    sys.path.insert(0, str(_IMAGES))


# --------------------------------------------------------------------------- finetune


def _finetune_run_config(raw: dict, *, pool: PoolScheduling, devices: int, run_dir: str, s3_uri: str,
                         key: str) -> dict:
    """The finetune run config with the platform's facts filled in (cores of the devices
    requested, run dir on FSx, upload prefix), validated by the finetune code itself."""
    from trn_workloads.finetune.config import ConfigError, config_from_dict

    cores = devices * (pool.neuron_cores_per_node // max(pool.neuron_devices_per_node, 1))
    merged = {**raw}
    merged["train"] = {**raw.get("train", {}), "neuron_cores_per_node": cores}
    merged["output"] = {**raw.get("output", {}), "run_dir": run_dir, "s3_uri": s3_uri}
    for section in ("train", "output"):
        for fixed in (("neuron_cores_per_node",) if section == "train" else ("run_dir", "s3_uri")):
            if fixed in raw.get(section, {}):
                raise WorkloadConfigError([f"{key}.{section}.{fixed}: set by the stack (from the pool and the "
                                           f"platform outputs); remove it"])
    try:
        return config_from_dict(merged).to_dict()
    except ConfigError as err:
        raise WorkloadConfigError([f"{key}.{err}"]) from None


finetune = SimpleNamespace(
    run_config=_finetune_run_config,
    command=lambda config_file: ["python", "-m", "trn_workloads.finetune", "--config", config_file],
)


# --------------------------------------------------------------------------- NeMo-style pretraining


def _nemo_run_config(raw: dict, *, paths: dict, pool: PoolScheduling, key: str) -> dict:
    """The launcher's RunConfig with the stack-owned paths and the pool's per-node facts
    filled in, validated by the launcher (parallelism, batch divisibility, nodes <= pool
    limit). Returns the JSON the launcher reads back from the ConfigMap."""
    from trn_workloads.nemo import ConfigError, load_run_config

    owned = {**paths, "neuron_cores_per_node": pool.neuron_cores_per_node, "efa_per_node": pool.efa_per_node}
    clash = sorted(set(raw) & set(owned))
    if clash:
        raise WorkloadConfigError([f"{key}.{clash[0]}: set by the stack (from the platform outputs); remove it"])
    try:
        run = load_run_config({**raw, **owned}, max_nodes=pool.max_nodes, key=key)
    except ConfigError as err:
        raise WorkloadConfigError([str(err)]) from None
    return {**run.to_dict(), "nodes": run.num_nodes}


def _nemo_mpirun(nodes: int, launch: list[str]) -> list[str]:
    from trn_workloads.nemo.mpirun import launcher_command

    return launcher_command(nodes, launch)


nemo_launcher = SimpleNamespace(run_config=_nemo_run_config, mpirun_command=_nemo_mpirun)


# --------------------------------------------------------------------------- Ray Train pretraining


def _ray_run_config(raw: dict, *, paths: dict, pool: PoolScheduling, workers: int, key: str) -> dict:
    """The training code's PretrainConfig with the stack-owned paths and one Ray Train
    worker per NeuronCore of the worker nodes, validated by that code."""
    from trn_workloads.ray_train.config import ConfigError, config_from_dict

    owned = {**paths, "num_workers": workers * pool.neuron_cores_per_node}
    clash = sorted(set(raw) & set(owned))
    if clash:
        raise WorkloadConfigError([f"{key}.{clash[0]}: set by the stack (from the platform outputs); remove it"])
    try:
        return config_from_dict({**raw, **owned}).to_dict()
    except ConfigError as err:
        raise WorkloadConfigError([f"{key}.{err}"]) from None


def _ray_version() -> str:
    from trn_workloads.ray_train import RAY_VERSION

    return RAY_VERSION


def _ray_data_entrypoint(config_file: str, inputs: tuple[str, ...], tokenizer: str, save_tokenizer: str,
                         ray_cpus: int) -> list[str]:
    """Tokenizing runs as one Ray task on a worker node (the head has num-cpus 0)."""
    cmd = ["python", "-m", "trn_workloads.ray_train.data", "--config", config_file, "--tokenizer", tokenizer,
           "--save-tokenizer", save_tokenizer, "--ray-cpus", str(ray_cpus)]
    for item in inputs:
        cmd += ["--input", item]
    return cmd


ray_train = SimpleNamespace(
    run_config=_ray_run_config,
    ray_version=_ray_version,
    data_entrypoint=_ray_data_entrypoint,
    train_entrypoint=lambda config_file, *, precompile: [
        "python", "-m", "trn_workloads.ray_train.train", "--config", config_file, *(["--precompile"] if precompile else [])],
)


# --------------------------------------------------------------------------- TorchTitan pretraining


def _titan_run_config(raw: dict, *, owned: dict, max_nodes: int, key: str) -> dict:
    """The trainer's RunConfig with the stack-owned values (nodes, processes per node = the
    pool's logical NeuronCores, paths) filled in, validated by the trainer's own code."""
    from trn_workloads.titan.config import ConfigError, config_from_dict

    clash = sorted(set(raw) & set(owned))
    if clash:
        raise WorkloadConfigError([f"{key}.{clash[0]}: set by the stack (from the pool and the platform outputs); "
                                   "remove it"])
    try:
        return config_from_dict({**raw, **owned}, max_nodes=max_nodes, key=key).to_dict()
    except ConfigError as err:
        raise WorkloadConfigError([str(err)]) from None


def _titan_torchrun(processes_per_node: int, config_file: str) -> list[str]:
    """torchrun in each pod of the Volcano Job; $(VAR) are the pytorch plugin's env vars
    (volcano v1.15.1 pytorch.go: MASTER_ADDR, MASTER_PORT, WORLD_SIZE = pods, RANK = pod index)."""
    return ["torchrun", "--nnodes=$(WORLD_SIZE)", "--node-rank=$(RANK)", f"--nproc-per-node={processes_per_node}",
            "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)",
            "-m", "trn_workloads.titan.train", "--config", config_file]


titan_trainer = SimpleNamespace(run_config=_titan_run_config, torchrun_command=_titan_torchrun)
