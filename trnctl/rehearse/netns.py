"""A rehearsal's own network namespace: only `lo`, so nothing a pod binds (Ray's GCS and raylet, torch's TCPStore
bind 0.0.0.0 whatever they are told) is reachable from outside this machine's loopback, and two rehearsals on one
machine never meet on a port.

- The namespace is held by an `unshare --net` process (util-linux unshare(1)) that lives as long as a pipe
  from this process is open (so it never outlives us, even on SIGKILL); `ip link set lo up` in it
  (iproute2) makes 127.0.0.0/8 local there (the kernel gives a new namespace's lo 127.0.0.1/8, down).
- `entered()` moves the calling thread into it with setns(2) (CLONE_NEWNET) and back on exit. A network namespace
  belongs to a thread: every process the thread starts from then on (bwrap, so every pod's processes) and every
  thread it starts (the S3 stand-in, the Service forwarders, probes run from it) live in the namespace; the rest of
  this process stays outside. setns(2) with CLONE_NEWNET needs CAP_SYS_ADMIN: root here and in CI.
- `nsenter_argv(argv)` is the same for one command started from outside (`nsenter --net=<path> -- argv`).
- `outside_argv(argv)` runs a command back in this machine's namespace (tests: what is reachable from outside).
The runner (runner.Rehearsal) does `self._isolation, self.namespace = netns.isolation()` first in its __init__
(before the S3 stand-in and the forwarders start: their threads must be created inside), `self._isolation.close()`
last in close(). Then the per-pod 127.0.x.y addresses, hosts files, forwarders and probes work unchanged,
`exec_in`'s nsenter (no -n) inherits the namespace, and the "listens outside 127.0.0.0/8" check accepts 0.0.0.0/::
while `interfaces()` is only lo. Prepending `nsenter_argv` to each bwrap command instead
would leave the runner's own probes, forwarders and S3 stand-in outside, unable to reach the pods.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import time
from typing import Iterator

CLONE_NEWNET = 0x40000000  # linux/sched.h


class NamespaceError(RuntimeError):
    pass


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"setns(CLONE_NEWNET): {os.strerror(err)} (needs root / CAP_SYS_ADMIN)")


class NetworkNamespace:
    """A new network namespace with only lo (up), alive until close()."""

    def __init__(self, timeout: float = 10.0) -> None:
        for tool in ("unshare", "nsenter", "ip"):
            if not shutil.which(tool):
                raise NamespaceError(f"{tool} not found (Debian packages util-linux, iproute2)")
        # The holder waits for EOF on its stdin, a pipe from this process: it ends when we close it or die.
        self._outside: int | None = None
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "read _"], start_new_session=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.path = f"/proc/{self.holder.pid}/ns/net"
        # the namespace the creating thread was in ("this machine's"), for commands run from outside
        self._outside = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        outside = os.readlink(f"/proc/self/fd/{self._outside}")
        end = time.monotonic() + timeout
        while True:  # unshare(1) has made the namespace once the holder's link differs from ours
            with contextlib.suppress(OSError):
                if os.readlink(self.path) != outside:
                    break
            if self.holder.poll() is not None or time.monotonic() > end:
                err = self.holder.stderr.read().decode(errors="replace").strip() if self.holder.stderr else ""
                self.close()
                raise NamespaceError(f"unshare --net failed: {err or 'no new namespace within the bound'}")
            time.sleep(0.02)
        up = subprocess.run(self.nsenter_argv(["ip", "link", "set", "lo", "up"]), capture_output=True, text=True)
        if up.returncode != 0:
            self.close()
            raise NamespaceError(f"ip link set lo up in the rehearsal's namespace: {up.stderr.strip()}")

    def interfaces(self) -> list[str]:
        """The namespace's network interfaces, as its holder sees them (/proc/<pid>/net/dev: one line per interface
        after the two header lines)."""
        with open(f"/proc/{self.holder.pid}/net/dev") as f:
            return [line.split(":", 1)[0].strip() for line in f.read().splitlines()[2:]]

    def nsenter_argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def outside_argv(self, argv: list[str]) -> list[str]:
        """argv run in the namespace this one was made from (this machine's), from wherever it is started."""
        return ["nsenter", f"--net=/proc/{os.getpid()}/fd/{self._outside}", "--", *argv]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread (and what it starts from now on) inside the namespace, then back where it was."""
        back = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        into = os.open(self.path, os.O_RDONLY)
        try:
            _setns(into)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(into)
            os.close(back)

    def close(self) -> None:
        if self._outside is not None:
            os.close(self._outside)
            self._outside = None
        if self.holder.stdin:
            with contextlib.suppress(OSError):
                self.holder.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.holder.wait(timeout=5)
        if self.holder.poll() is None:
            self.holder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout=5)
            if self.holder.poll() is None:
                self.holder.kill()
                self.holder.wait(timeout=5)
        if self.holder.stderr:
            self.holder.stderr.close()

    def __enter__(self) -> "NetworkNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def isolation(enabled: bool = True) -> tuple[contextlib.ExitStack, NetworkNamespace | None]:
    """(an ExitStack holding a new namespace entered by the calling thread, the namespace); (empty, None) when not
    enabled: what a rehearsal opens before it starts anything and closes last."""
    stack = contextlib.ExitStack()
    namespace = None
    if enabled:
        try:
            namespace = stack.enter_context(NetworkNamespace())
            stack.enter_context(namespace.entered())
        except BaseException:
            stack.close()
            raise
    return stack, namespace
