"""A temporary change to the sandbox's bwrap command line, for the MPIJob and RayJob rehearsals
(trnctl/rehearse/mpijob.py, rayjob.py) until the sandbox (trnctl/rehearse/sandbox.py) covers what they need."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from trnctl.rehearse import sandbox


def writable_etc_mount_points(argv: list[str]) -> list[str]:
    """The sandbox binds this machine's /etc read-only, where bwrap cannot create the mount points of volumes
    under /etc (the MPI operator's /etc/mpi, our run config at /etc/run): a tmpfs /etc holding each entry of the
    machine's /etc read-only instead, so volume mount points can be made next to them."""
    at = next((i for i in range(len(argv) - 2) if argv[i:i + 3] == ["--ro-bind", "/etc", "/etc"]), None)
    if at is None:  # the sandbox already makes /etc a tmpfs of the machine's entries
        return argv
    entries: list[str] = ["--tmpfs", "/etc"]
    for entry in sorted(Path("/etc").iterdir()):
        if entry.is_symlink():
            entries += ["--symlink", os.readlink(entry), str(entry)]
        elif entry.exists():
            entries += ["--ro-bind", str(entry), str(entry)]
    return argv[:at] + entries + argv[at + 3:]


@contextlib.contextmanager
def bwrap_argv_through(transform: Callable[[list[str]], list[str]]) -> Iterator[None]:
    """sandbox.bwrap_argv with `transform` applied to its result, inside the block (the runner looks the function
    up on the module at each call)."""
    original = sandbox.bwrap_argv

    def wrapped(*args, **kwargs):
        return transform(writable_etc_mount_points(original(*args, **kwargs)))

    sandbox.bwrap_argv = wrapped
    try:
        yield
    finally:
        sandbox.bwrap_argv = original
