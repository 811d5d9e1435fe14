"""`python -m trn_workloads.nemo.launch --config run.json --mode train|precompile [--dry-run]`

Started once per worker node by the MPIJob launcher (mpirun, one rank per node). It reads
the run config, works out this node's rank (OMPI_COMM_WORLD_RANK) and the rank-0 address
(MASTER_ADDR, else the first host of the MPI hostfile), writes the NxD Training YAML to
<run_dir>/nxdt-config/<mode>.yaml, then execs torchrun (NxD Training's orchestrator) with
the environment from `build_env`. `--dry-run` prints the YAML, environment and command
instead and writes nothing.

On the CPU path (TRN_BACKEND=cpu) it runs `standin` instead of torchrun: the YAML, the input files, then what
the YAML says at tiny scale without Neuron (train: gloo data parallel training with checkpoints, resume and
TensorBoard events; precompile: a rendezvous of every node at rank 0's address).

Exit status: 2 bad config, MPI environment, missing inputs or unwritable run dir; 1 a rank that did not meet
rank 0 or found no checkpoint to resume (CPU path); otherwise torchrun's own (or the stand-in's traceback).
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
from pathlib import Path
from typing import Mapping

from trn_workloads import accel
from trn_workloads.nemo import checkpoints, standin
from trn_workloads.nemo.command import build_command, build_env
from trn_workloads.nemo.config import ConfigError, RunConfig, read_run_config
from trn_workloads.nemo.nxdt import MODES, config_path, config_yaml, write_nxdt_config

OPEN_FILES = 65535  # 32 ranks x (dataloader, checkpoint shards, EFA endpoints)


def node_rank(cfg: RunConfig, env: Mapping[str, str]) -> int:
    """This node's rank: Open MPI's world rank (one rank per node), 0 for a single node. Open MPI defines
    OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK on every process it starts
    (https://docs.open-mpi.org/en/v5.0.x/tuning-apps/environment-var.html)."""
    rank, size = env.get("OMPI_COMM_WORLD_RANK"), env.get("OMPI_COMM_WORLD_SIZE")
    if env.get("OMPI_COMM_WORLD_LOCAL_RANK") not in (None, "0"):
        raise ConfigError(f"OMPI_COMM_WORLD_LOCAL_RANK={env['OMPI_COMM_WORLD_LOCAL_RANK']}: mpirun must start one "
                          f"process per node (--map-by ppr:1:node); torchrun starts the per-core processes")
    if rank is None:
        if cfg.num_nodes == 1:
            return 0
        raise ConfigError(f"nodes={cfg.num_nodes} but OMPI_COMM_WORLD_RANK is not set: multi-node runs are "
                          f"started by mpirun (one process per node) from the MPIJob launcher")
    if size is not None and int(size) != cfg.num_nodes:
        raise ConfigError(f"mpirun started {size} processes but the run config has nodes={cfg.num_nodes}: "
                          f"they must match (one process per worker node)")
    return int(rank)


def master_address(cfg: RunConfig, env: Mapping[str, str]) -> str:
    """Rank 0's host: MASTER_ADDR, which the MPIJob launcher (trn_workloads.nemo.mpirun) takes from its hostfile
    and mpirun forwards with `-x`; `localhost` for a single node started without it. A worker pod has no
    hostfile: the MPI operator mounts /etc/mpi in the launcher only (trnctl/operators/mpi.py)."""
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    if cfg.num_nodes == 1:
        return "localhost"
    raise ConfigError(f"nodes={cfg.num_nodes} but MASTER_ADDR is not set: multi-node runs are started by the MPIJob "
                      f"launcher (python -m trn_workloads.nemo.mpirun), which sets it and forwards it with mpirun -x")


def render(env: Mapping[str, str], command: list[str], *, yaml_path: Path, yaml_text: str) -> str:
    """A shell-pasteable view: the YAML as comments, one `export` per variable, then the command."""
    lines = [f"# {yaml_path} (written at launch):"] + [f"#   {line}" for line in yaml_text.splitlines()]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    return "\n".join(lines + [" \\\n    ".join(shlex.quote(part) for part in command)])


def _exec_on_neuron(command: list[str], env: dict[str, str], cfg: RunConfig, mode: str) -> None:
    """Write the NxD Training YAML and hand the process over to torchrun; the only step that
    needs a Neuron host. Every node writes the same YAML (atomically), so none waits for another."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    write_nxdt_config(cfg, mode)
    os.execvpe(command[0], command, {**os.environ, **env})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trn_workloads.nemo.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config JSON (RunConfig fields)")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--dry-run", action="store_true", help="print the environment and command; run nothing")
    args = parser.parse_args(argv)
    try:
        cfg = read_run_config(args.config)
        rank = node_rank(cfg, os.environ)
        master = master_address(cfg, os.environ)
        env = build_env(cfg, args.mode)
        command = build_command(cfg, args.mode, node_rank=rank, master_addr=master)
        if args.dry_run:
            print(render(env, command, yaml_path=config_path(cfg, args.mode), yaml_text=config_yaml(cfg, args.mode)))
            return 0
        print(f"node {rank}/{cfg.num_nodes}: {args.mode} with NxD Training, data-parallel {cfg.data_parallel_size}, "
              f"gradient accumulation {cfg.gradient_accumulation}, run dir {cfg.run_dir}", flush=True)
        if accel.is_neuron():
            _exec_on_neuron(command, env, cfg, args.mode)
        else:  # the CPU path (TRN_BACKEND=cpu): what the step needs from its pod, without Neuron
            standin.run(cfg, args.mode, rank=rank, master=master)
    except (standin.RendezvousError, checkpoints.ResumeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, OSError) as err:  # OSError: the YAML could not be written
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0  # not reached after exec


if __name__ == "__main__":
    sys.exit(main())
