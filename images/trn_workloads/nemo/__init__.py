"""Launcher for NeMo-Megatron-style Llama pretraining on trn1 (MPIJob workers) with NxD Training.

NxD Training (`neuronx-distributed-training`, the NeMo-based successor of neuronx-nemo-megatron
on Neuron) trains a Megatron-style Llama on Megatron `.bin/.idx` data; we run its
`training_orchestrator.py` under torchrun on a YAML generated from our RunConfig.

    presets   PRESETS: llama2-7b (4 nodes, TP 8, seq 4096, GBS 256) and small (1 node)
    config    RunConfig + load_run_config(): preset + overrides, derived values checked
    nxdt      nxdt_config(cfg, mode): the NxD Training YAML tree; write_nxdt_config()
    command   build_env(cfg, mode), build_command(cfg, mode), mpirun_command(nodes, launch)
    mpirun    python -m trn_workloads.nemo.mpirun --nodes N -- <launch>: the MPIJob launcher's command
              (rank 0's host from the launcher's hostfile, forwarded as MASTER_ADDR by mpirun -x)
    launch    python -m trn_workloads.nemo.launch --config run.json --mode train|precompile

The Pulumi stack imports PRESETS and load_run_config (pool limits checked at preview time)
and mpirun_command (the MPIJob launcher's command).
"""
from trn_workloads.nemo.command import build_command, build_env, mpirun_command
from trn_workloads.nemo.config import ConfigError, RunConfig, load_run_config, read_run_config
from trn_workloads.nemo.nxdt import MODES, nxdt_config, write_nxdt_config
from trn_workloads.nemo.presets import PRESETS, ModelPreset

__all__ = ["MODES", "PRESETS", "ConfigError", "ModelPreset", "RunConfig", "build_command", "build_env",
           "load_run_config", "mpirun_command", "nxdt_config", "read_run_config", "write_nxdt_config"]
