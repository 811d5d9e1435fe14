"""One run per output prefix: an exclusive `flock` on `<dataset_prefix>.lock`, held for the whole run.

A second run on the same prefix (another pod, another terminal) fails at once with the
holder's host, pid and start time instead of writing into the same `.partial` files or
renaming over them. The kernel drops the lock when its process dies (also on SIGKILL), so a
killed run never blocks the rerun. The file is removed when the run ends; a run that
opened the old file just before it was removed notices (different inode) and retries.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class RunLockedError(ValueError):
    """Another run holds the output prefix's lock (or the file system cannot lock)."""


def lock_path(dataset_prefix: str) -> Path:
    return Path(dataset_prefix + ".lock")


@contextlib.contextmanager
def run_lock(dataset_prefix: str) -> Iterator[Path]:
    path = lock_path(dataset_prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise RunLockedError(f"{dataset_prefix}: another run is writing this output ({owner}; lock {path}); "
                                 f"wait for it to finish or stop it, then run again") from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
                raise RunLockedError(f"{path}: the file system cannot lock files ({err.strerror}); mount it "
                                     f"with flock support (Lustre: -o flock)") from err
            raise
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # the previous holder removed the file between our open and flock: take the new one
    try:
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: nobody else can be using it
        os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"
