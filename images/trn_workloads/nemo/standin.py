"""The CPU path of a NeMo node (TRN_BACKEND=cpu): what NxD Training's step needs from its pod, without Neuron.

NxD Training's orchestrator and neuron_parallel_compile run only on Neuron. On the CPU path `launch` runs this
stand-in instead, which still does what the real step needs from the pod it runs in: it writes the NxD Training
YAML the orchestrator would read, checks that the files the step reads are there (the Megatron `.bin/.idx`
dataset and the tokenizer directory on the shared volume), and joins a rendezvous at rank 0's address
(MASTER_ADDR:master_port, as torchrun's `--master_addr/--master_port`) with its node rank and the world size:
rank 0 listens on the address MASTER_ADDR resolves to and returns once every rank has reported; every other rank
connects there, says who it is and waits for rank 0's answer. All waits are bounded.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from trn_workloads.nemo.config import ConfigError, RunConfig
from trn_workloads.nemo.nxdt import write_nxdt_config

RENDEZVOUS_TIMEOUT = 180.0  # seconds: ranks start within the launcher's ssh ConnectionAttempts window


class RendezvousError(Exception):
    pass


def required_files(cfg: RunConfig) -> list[Path]:
    prefix = Path(cfg.dataset_prefix)
    return [prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx"), Path(cfg.tokenizer)]


def check_inputs(cfg: RunConfig) -> None:
    missing = [str(p) for p in required_files(cfg) if not p.exists()]
    if missing:
        raise ConfigError(f"the step reads {', '.join(missing)}, which do not exist (run the data step first)")


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


def _receive(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise RendezvousError("connection closed before a full message")
        data += chunk
    return json.loads(data)


def rendezvous(master: str, port: int, rank: int, world: int, timeout: float = RENDEZVOUS_TIMEOUT) -> list[int]:
    """Every rank meets rank 0 at (master, port). Returns the ranks that reported (on every rank)."""
    deadline = time.monotonic() + timeout
    if rank == 0:
        address = socket.gethostbyname(master)
        with socket.create_server((address, port), reuse_port=False) as server:
            server.settimeout(timeout)
            peers: dict[int, socket.socket] = {}
            try:
                while len(peers) < world - 1:
                    server.settimeout(max(deadline - time.monotonic(), 0.01))
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        raise RendezvousError(f"rank 0 at {master}:{port}: {len(peers) + 1} of {world} ranks "
                                              f"arrived within {timeout:.0f}s") from None
                    conn.settimeout(max(deadline - time.monotonic(), 0.01))
                    hello = _receive(conn)
                    if hello.get("world") != world:
                        raise RendezvousError(f"rank {hello.get('rank')} has world size {hello.get('world')}, "
                                              f"rank 0 has {world}")
                    peers[int(hello["rank"])] = conn
                ranks = sorted([0, *peers])
                for conn in peers.values():
                    _send(conn, {"ranks": ranks})
                return ranks
            finally:
                for conn in peers.values():
                    conn.close()
    while True:  # rank 0 may not listen yet: retry until the deadline
        try:
            with socket.create_connection((master, port), timeout=max(deadline - time.monotonic(), 0.01)) as conn:
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                _send(conn, {"rank": rank, "world": world})
                return list(_receive(conn)["ranks"])
        except (ConnectionRefusedError, socket.gaierror, TimeoutError, OSError) as err:
            if time.monotonic() >= deadline:
                raise RendezvousError(f"rank {rank} could not reach rank 0 at {master}:{port} within "
                                      f"{timeout:.0f}s: {err}") from None
            time.sleep(0.2)


def run(cfg: RunConfig, mode: str, *, rank: int, master: str, timeout: float = RENDEZVOUS_TIMEOUT) -> None:
    """The stand-in step: write the YAML, check the inputs, meet every rank at rank 0."""
    check_inputs(cfg)
    path = write_nxdt_config(cfg, mode)
    ranks = rendezvous(master, cfg.master_port, rank, cfg.num_nodes, timeout)
    print(f"node {rank}/{cfg.num_nodes}: CPU stand-in for NxD Training {mode}: read {path}, met ranks {ranks} "
          f"at {master}:{cfg.master_port}", flush=True)
