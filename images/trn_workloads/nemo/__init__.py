"""Launcher for Llama pretraining with neuronx-nemo-megatron on trn1 (MPIJob workers).

    presets   PRESETS: llama2-7b (the upstream tutorial, 4 nodes) and small (1 node)
    config    RunConfig + load_run_config(): preset + overrides, derived values checked
    command   build_env(cfg, mode), build_command(cfg, mode), mpirun_command(nodes, launch)
    launch    python -m trn_workloads.nemo.launch --config run.json --mode train|precompile

The Pulumi stack imports PRESETS and load_run_config (pool limits checked at preview time)
and mpirun_command (the MPIJob launcher's command).
"""
from trn_workloads.nemo.command import MODES, build_command, build_env, mpirun_command
from trn_workloads.nemo.config import ConfigError, RunConfig, load_run_config, read_run_config
from trn_workloads.nemo.presets import PRESETS, ModelPreset

__all__ = ["MODES", "PRESETS", "ConfigError", "ModelPreset", "RunConfig", "build_command", "build_env",
           "load_run_config", "mpirun_command", "read_run_config"]
