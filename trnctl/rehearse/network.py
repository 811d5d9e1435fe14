"""The rehearsal's cluster network on loopback: a distinct 127.0.x.y per pod and per ClusterIP Service,
cluster DNS names in each pod's /etc/hosts, and a kube-proxy stand-in for ClusterIP Services.

- Pod addresses: 127.0.10.1, 127.0.10.2, ... (never 127.0.0.1, which this machine's own services use).
- A ClusterIP Service gets its own address (its "ClusterIP") from 127.0.200.x; a TCP forwarder listens on
  `<address>:<port>` for each Service port and connects to `<ready pod address>:<targetPort>` (targetPort by
  number, or by name through the container's ports): kube-proxy's rule (kubernetes/kubernetes@v1.34.0
  pkg/proxy/endpointslicecache.go: only ready endpoints; the port is the EndpointSlice's, resolved from
  targetPort by the endpointslice controller, pkg/controller/endpointslice/reconciler.go / podutil.FindPort).
  The brief asked for the Service name to resolve straight to a ready pod; our Services map port 80 to
  targetPort 8080 (compile) so a name -> pod-address record would send clients to a port nothing listens on:
  the forwarder keeps the port mapping. Headless Services resolve to the pod addresses themselves (DNS).
- /etc/hosts: the kubelet-managed header (pkg/kubelet/kubelet_pods.go managedHostsFileContent: localhost
  lines and the pod's own `<ip> <fqdn> <hostname>`), then the cluster names from `operators.dns_records`
  (what CoreDNS would answer), re-pointed to ready pods and rewritten in place as readiness changes.
- Everything binds inside 127.0.0.0/8 only; `bound_outside_loopback` checks the pods' listening sockets.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Callable

POD_NET = ipaddress.ip_network("127.0.10.0/24")
SERVICE_NET = ipaddress.ip_network("127.0.200.0/24")


class AddressBook:
    def __init__(self) -> None:
        self._pods: dict[str, str] = {}
        self._services: dict[tuple[str, str], str] = {}

    def pod(self, name: str) -> str:
        if name not in self._pods:
            self._pods[name] = str(POD_NET.network_address + 1 + len(self._pods))
        return self._pods[name]

    def service(self, namespace: str, name: str) -> str:
        key = (namespace, name)
        if key not in self._services:
            self._services[key] = str(SERVICE_NET.network_address + 1 + len(self._services))
        return self._services[key]

    @property
    def services(self) -> dict[tuple[str, str], str]:
        return dict(self._services)


def hosts_file(pod: dict, address: str, cluster_names: dict[str, str], domain: str) -> str:
    """The pod's /etc/hosts: the kubelet's managed content, then the cluster DNS names (name -> address)."""
    spec, meta = pod.get("spec") or {}, pod["metadata"]
    hostname = (spec.get("hostname") or meta["name"])[:63]
    lines = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix",
             "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
    if spec.get("subdomain"):
        fqdn = f"{hostname}.{spec['subdomain']}.{meta.get('namespace', 'default')}.svc.{domain}"
        lines.append(f"{address}\t{fqdn}\t{hostname}")
    else:
        lines.append(f"{address}\t{hostname}")
    lines.append("# Cluster DNS names (CoreDNS in the cluster), added by the rehearsal.")
    lines += [f"{ip}\t{name}" for name, ip in sorted(cluster_names.items()) if name != hostname]
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> None:
    """Rewrite a file that is bind-mounted into running sandboxes: same inode, so they see the change."""
    with open(path, "r+" if path.exists() else "w") as f:
        f.seek(0)
        f.write(text)
        f.truncate()


class _Forwarder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_forwarder(address: str, port: int, backend: Callable[[], tuple[str, int] | None]) -> _Forwarder:
    """Listen on address:port (127/8 only) and pipe each connection to `backend()` (a ready endpoint)."""
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"refusing to bind {address}: the rehearsal binds inside 127.0.0.0/8 only")

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            target = backend()
            if target is None:
                return  # no ready endpoint: the connection is refused/closed, as kube-proxy REJECTs
            try:
                upstream = socket.create_connection(target, timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            client = self.request

            def pipe(src: socket.socket, dst: socket.socket) -> None:
                with contextlib.suppress(OSError):
                    while chunk := src.recv(65536):
                        dst.sendall(chunk)
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

            t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
            t.start()
            pipe(client, upstream)
            t.join(timeout=600)
            upstream.close()

    server = _Forwarder((address, port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server


def _session_pids(session_leader: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == session_leader:  # field 6 of /proc/<pid>/stat: session id
                pids.add(int(entry))
    return pids


def listening_addresses(session_leader: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets listening in the processes of one pod (its session)."""
    inodes: set[str] = set()
    for pid in _session_pids(session_leader):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    out = []
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] != "0A" or parts[9] not in inodes:  # 0A = LISTEN
                    continue
                hex_addr, hex_port = parts[1].split(":")
                raw = bytes.fromhex(hex_addr)
                if family == 4:
                    addr = str(ipaddress.IPv4Address(raw[::-1]))
                else:
                    addr = str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
                out.append((addr, int(hex_port, 16)))
    return out


def bound_outside_loopback(session_leader: int) -> list[tuple[str, int]]:
    """Listening sockets of a pod that are not inside 127.0.0.0/8 (0.0.0.0 and :: included; an IPv4-mapped IPv6
    address ::ffff:127.x.y.z, as a dual-stack socket bound to a 127.x.y.z shows, is inside)."""
    return [(a, p) for a, p in listening_addresses(session_leader) if not _in_loopback_range(a)]


def _in_loopback_range(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.version == 4 and ip in ipaddress.ip_network("127.0.0.0/8")
