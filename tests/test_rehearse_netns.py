"""The rehearsal's own network namespace (trnctl/rehearse/netns.py): a server started inside it binding 0.0.0.0 is
reachable on loopback inside and not from this machine's namespace; 127.0.0.0/8 addresses other than 127.0.0.1
work inside (the pods' addresses)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.loopback import free_port
from trnctl.rehearse.netns import NetworkNamespace

SERVER = ("import socket,sys,time; s=socket.socket(); "
          "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); print('up', flush=True); time.sleep(60)")


def connects(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_a_pod_binding_every_interface_is_reachable_only_inside_the_namespace():
    port = free_port()
    with NetworkNamespace() as ns:
        with ns.entered():
            server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "up"
            with ns.entered():
                inside = [connects(a, port) for a in ("127.0.0.1", "127.0.10.7")]
            outside = [connects(a, port) for a in ("127.0.0.1", "127.0.10.7")]
            with ns.entered():  # this machine's namespace asked from inside the rehearsal's
                probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
                from_inside_out = subprocess.run(ns.outside_argv([sys.executable, "-c", probe]), capture_output=True)
            # the port is free in this machine's namespace: something here can bind it while the pod holds it there
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        finally:
            server.kill()
            server.wait(timeout=10)
    assert inside == [True, True]
    assert outside == [False, False]
    assert from_inside_out.returncode != 0 and b"ConnectionRefused" in from_inside_out.stderr


def test_the_namespace_has_only_lo_and_goes_away_with_its_holder():
    with NetworkNamespace() as ns:
        links = subprocess.run(ns.nsenter_argv(["ip", "-o", "link"]), capture_output=True, text=True, check=True).stdout
        holder = ns.holder
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    assert "UP" in links.split("<", 1)[1].split(">", 1)[0]
    time.sleep(0.1)
    assert holder.poll() is not None


def test_the_holder_ends_when_the_process_that_made_it_dies():
    code = ("from trnctl.rehearse.netns import NetworkNamespace; import os; ns = NetworkNamespace(); "
            "print(ns.holder.pid, flush=True); os._exit(0)")  # no close(): as if killed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    pid = int(out.stdout.split()[0])
    end = time.monotonic() + 5
    while time.monotonic() < end and alive(pid):
        time.sleep(0.05)
    assert not alive(pid)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_ipv4_mapped_loopback_listener_is_inside_and_wildcards_are_not():
    """Ray's gRPC servers listen dual-stack: their 127.0.x.y shows as ::ffff:127.0.x.y in /proc/net/tcp6."""
    from trnctl.rehearse.network import _in_loopback_range
    assert _in_loopback_range("::ffff:127.0.10.1") and _in_loopback_range("127.0.200.3")
    assert not any(_in_loopback_range(a) for a in ("0.0.0.0", "::", "::ffff:10.0.0.1", "10.1.2.3"))
