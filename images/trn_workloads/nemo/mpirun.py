"""`python -m trn_workloads.nemo.mpirun --nodes N -- <launch command>`: the MPIJob launcher's command.

Only the launcher pod has the hostfile: the MPI operator mounts `/etc/mpi` there alone and points Open MPI at
it with OMPI_MCA_orte_default_hostfile (kubeflow/mpi-operator@b10758da:pkg/controller/mpi_job_controller.go,
newLauncherPodTemplate, ompiEnvVars; trnctl/operators/mpi.py). The workers get the ssh keys and nothing else,
and ssh does not carry the launcher's environment. So the launcher works out rank 0's host here, the first
host of the hostfile (where `--map-by ppr:1:node` places rank 0), exports it as MASTER_ADDR and has mpirun
forward it with `-x` to every rank, as it forwards the rest of FORWARDED_ENV (Open MPI mpirun(1), `-x <env>`:
"Export the specified environment variables to the remote nodes"). Each rank reads its node rank and the world
size from OMPI_COMM_WORLD_RANK/SIZE, which Open MPI defines on every process
(https://docs.open-mpi.org/en/v5.0.x/tuning-apps/environment-var.html).

Exit status: 2 when the hostfile is missing or lists no host; otherwise mpirun's own (exec).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Mapping

from trn_workloads.nemo.command import mpirun_command

# Where the MPI operator mounts the hostfile; OMPI_MCA_orte_default_hostfile names it in the launcher pod.
DEFAULT_HOSTFILE = "/etc/mpi/hostfile"


class HostfileError(Exception):
    pass


def hostfile_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("OMPI_MCA_orte_default_hostfile") or DEFAULT_HOSTFILE)


def first_host(text: str) -> str | None:
    """The first host of an Open MPI hostfile (`<host> slots=N` lines, `#` comments)."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            return words[0]
    return None


def rank0_host(env: Mapping[str, str]) -> str:
    path = hostfile_path(env)
    try:
        host = first_host(path.read_text())
    except OSError as err:
        raise HostfileError(f"cannot read the MPI hostfile {path}: {err.strerror} (the MPI operator mounts it in "
                            "the launcher pod only; this command is the launcher's)") from None
    if not host:
        raise HostfileError(f"the MPI hostfile {path} lists no hosts")
    return host


def launcher_command(nodes: int, launch: list[str]) -> list[str]:
    """The launcher container's command: this module, which execs `mpirun_command(nodes, launch)`."""
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    return ["python", "-m", "trn_workloads.nemo.mpirun", "--nodes", str(nodes), "--", *launch]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trn_workloads.nemo.mpirun", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True, help="worker nodes (one rank each)")
    parser.add_argument("launch", nargs=argparse.REMAINDER, help="-- then the command each rank runs")
    args = parser.parse_args(argv)
    launch = args.launch[1:] if args.launch[:1] == ["--"] else args.launch
    if not launch:
        parser.error("the command each rank runs is missing (after --)")
    try:
        master = rank0_host(os.environ)
        command = mpirun_command(args.nodes, launch)
    except (HostfileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"rank 0 on {master}: mpirun over {args.nodes} node(s)", flush=True)
    os.execvpe(command[0], command, {**os.environ, "MASTER_ADDR": master})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
