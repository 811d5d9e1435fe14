"""The CPU path of a NeMo node (TRN_BACKEND=cpu): what NxD Training's step does in its pod, without Neuron.

NxD Training's orchestrator and neuron_parallel_compile run only on Neuron. On the CPU path `launch` runs this
stand-in instead. It writes the NxD Training YAML the orchestrator would read, checks that the files the step
reads are there (the Megatron `.bin/.idx` dataset and the tokenizer directory on the shared volume), and then acts
on that YAML (the file, read back, not the RunConfig):

- precompile: every rank meets rank 0 at MASTER_ADDR:master_port (as torchrun's `--master_addr/--master_port`)
  with its node rank and the world size, and stops (no training: the precompile YAML only fills a compile cache).
  Rank 0 listens on the address MASTER_ADDR resolves to and returns once every rank has reported; every other
  rank connects there, says who it is and waits for rank 0's answer. All waits are bounded.
- train: a `torch.distributed` gloo process group at MASTER_ADDR:master_port (one process per node: rank and
  world size from Open MPI), a tiny Llama-shaped model (the YAML's `model.*` sizes) trained on the dataset the
  data step wrote (read with megatron-core's own reader: megatron-core==0.16.1, requirements.txt,
  megatron/core/datasets/indexed_dataset.py IndexedDataset, through trn_workloads.titan.data.TokenSamples), its
  gradients all-reduced every step (one stopped rank stops every rank, which wait in the all-reduce up to the
  process group's timeout, torch's default 30 min: the hang the platform's watchdog acts on),
  `trainer.max_steps` steps, TensorBoard events in exp_manager's explicit_log_dir every `log_every_n_steps`
  (tensorboard's SummaryWriter; the progress sidecar reads them: trn_workloads/progress.py), checkpoints as
  exp_manager's checkpoint_callback_params say, and a resume from the newest complete one (resume_if_exists).

What NxD Training does with the exp_manager checkpoint keys: trn_workloads/nemo/checkpoints.py.
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trn_workloads.nemo.checkpoints import (checkpoint_dir, checkpoint_name, checkpoints_to_remove, complete_checkpoints,
                                            resume_point, save_atomically, should_save)
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


# --- the training run the YAML describes --------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainPlan:
    """What the stand-in takes from the NxD Training YAML."""
    max_steps: int
    log_every_n_steps: int
    log_dir: Path
    tensorboard: bool
    checkpoints: bool
    every_n_train_steps: int | None
    save_top_k: int
    filename: str
    exp_manager: dict
    seq_length: int
    global_batch_size: int
    seed: int
    model: dict
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    gradient_clip_val: float

    @classmethod
    def from_yaml(cls, tree: dict[str, Any]) -> "TrainPlan":
        trainer, exp, data, model = tree["trainer"], tree["exp_manager"], tree["data"], tree["model"]
        params = exp.get("checkpoint_callback_params") or {}
        optim = model.get("optim") or {}
        return cls(max_steps=int(trainer["max_steps"]), log_every_n_steps=int(trainer.get("log_every_n_steps") or 1),
                   log_dir=Path(exp["explicit_log_dir"]), tensorboard=bool(exp.get("create_tensorboard_logger")),
                   checkpoints=bool(exp.get("create_checkpoint_callback")),
                   every_n_train_steps=params.get("every_n_train_steps"), save_top_k=int(params.get("save_top_k", 1)),
                   filename=params.get("filename") or f"{exp.get('name') or 'default'}--{{step}}", exp_manager=exp,
                   seq_length=int(data["seq_length"]), global_batch_size=int(data["global_batch_size"]),
                   seed=int(tree.get("seed", 1234)), model=model, lr=float(optim.get("lr", 1e-3)),
                   betas=tuple(optim.get("betas", (0.9, 0.999))), weight_decay=float(optim.get("weight_decay", 0.0)),
                   gradient_clip_val=float(trainer.get("gradient_clip_val") or 0.0))

    def samples_per_node(self, nodes: int) -> int:
        """Each node's share of the global batch (the stand-in is one process per node)."""
        return max(1, self.global_batch_size // nodes)


def _vocab_size(cfg: RunConfig) -> int:
    """The tokenizer's vocabulary, as data prep recorded it in the dataset manifest (else the tokenizer file)."""
    from trn_workloads.dataprep.pipeline import manifest_path
    manifest = manifest_path(cfg.dataset_prefix)
    if manifest.exists():
        return int(json.loads(manifest.read_text())["vocab_size"])
    tokenizer = json.loads((Path(cfg.tokenizer) / "tokenizer.json").read_text())
    return len(tokenizer["model"]["vocab"]) + len(tokenizer.get("added_tokens") or [])


def build_model(model: dict, vocab_size: int):
    """A Llama-shaped stand-in of the YAML's model: embedding, num_layers pre-norm SwiGLU blocks of hidden_size /
    ffn_hidden_size, RMSNorm, untied output layer (no attention: the stand-in needs steps, not quality)."""
    import torch
    from torch import nn

    hidden, ffn, eps = int(model["hidden_size"]), int(model["ffn_hidden_size"]), float(model.get("layernorm_epsilon", 1e-5))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.RMSNorm(hidden, eps=eps)
            self.gate_up = nn.Linear(hidden, 2 * ffn, bias=False)
            self.down = nn.Linear(ffn, hidden, bias=False)

        def forward(self, x):
            gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
            return x + self.down(nn.functional.silu(gate) * up)

    net = nn.Sequential(nn.Embedding(vocab_size, hidden), *[Block() for _ in range(int(model["num_layers"]))],
                        nn.RMSNorm(hidden, eps=eps), nn.Linear(hidden, vocab_size, bias=False))
    std = float(model.get("init_method_std", 0.02))
    for p in net.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=std)
    return net


def train(cfg: RunConfig, plan: TrainPlan, *, rank: int, world: int, master: str, yaml_path: Path) -> int:
    """Train as the YAML says; returns the last step. Every step all-reduces the gradients and the loss."""
    import torch
    import torch.distributed as dist

    from trn_workloads.titan.data import TokenSamples

    torch.manual_seed(plan.seed)
    dist.init_process_group("gloo", init_method=f"tcp://{master}:{cfg.master_port}", rank=rank, world_size=world)
    try:
        print(f"node {rank}/{world}: CPU stand-in for NxD Training train: read {yaml_path}, met ranks "
              f"{list(range(world))} at {master}:{cfg.master_port}", flush=True)
        vocab = _vocab_size(cfg)
        samples = TokenSamples.open(cfg.dataset_prefix, seq_len=plan.seq_length, seed=plan.seed, vocab_size=vocab)
        model = build_model(plan.model, vocab)
        optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=plan.betas, weight_decay=plan.weight_decay)
        # rank 0 picks the checkpoint and every rank loads that one: one decision for the gang
        chosen = [str(resume_point(plan.exp_manager, plan.log_dir) or "") if rank == 0 else None]
        dist.broadcast_object_list(chosen, src=0)
        step = 0
        if chosen[0]:
            state = torch.load(chosen[0], weights_only=True)
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer_states"][0])
            step = int(state["global_step"])
            print(f"node {rank}/{world}: resumed from {chosen[0]} (step {step})", flush=True)
        writer = None
        if rank == 0 and plan.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: a viewer drops the events an earlier attempt wrote from the step resumed from on
            writer = SummaryWriter(log_dir=str(plan.log_dir), purge_step=step or None)
        per_node = plan.samples_per_node(world)
        params = [p for p in model.parameters()]
        last_log = time.monotonic()
        while step < plan.max_steps:
            batch = torch.from_numpy(samples.batch(step, dp_rank=rank, dp_size=world, batch_size=per_node))
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            # one all-reduce of every gradient and the loss: data parallel over the nodes
            flat = torch.cat([p.grad.reshape(-1) for p in params] + [loss.detach().reshape(1)])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            if plan.gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(params, plan.gradient_clip_val)
            optimizer.step()
            step += 1
            if rank == 0 and step % plan.log_every_n_steps == 0:
                now = time.monotonic()
                print(f"step {step}/{plan.max_steps} reduced_train_loss {float(flat[-1]):.4f} "
                      f"step_time {now - last_log:.3f}s", flush=True)
                last_log = now
                if writer is not None:
                    writer.add_scalar("reduced_train_loss", float(flat[-1]), step)
                    writer.flush()
            if rank == 0 and plan.checkpoints and should_save(step, plan.every_n_train_steps):
                _save(plan, step, model, optimizer, resumed_from=Path(chosen[0]) if chosen[0] else None)
        if writer is not None:
            writer.close()
        dist.barrier()
        print(f"node {rank}/{world}: trained to step {step} of {plan.max_steps}", flush=True)
        return step
    finally:
        dist.destroy_process_group()


def _save(plan: TrainPlan, step: int, model, optimizer, *, resumed_from: Path | None) -> None:
    directory = checkpoint_dir(plan.exp_manager, plan.log_dir)
    path = directory / checkpoint_name(plan.filename, step=step, consumed_samples=step * plan.global_batch_size)
    save_atomically({"global_step": step, "state_dict": model.state_dict(),
                     "optimizer_states": [optimizer.state_dict()]}, path)
    for old in checkpoints_to_remove(complete_checkpoints(directory), plan.save_top_k, resumed_from):
        old.unlink(missing_ok=True)
    print(f"saved {path} (step {step})", flush=True)


def run(cfg: RunConfig, mode: str, *, rank: int, master: str, timeout: float = RENDEZVOUS_TIMEOUT) -> None:
    """The stand-in step: write the YAML, check the inputs, then act on the YAML read back: train trains as it says;
    precompile (which only fills the Neuron compile cache on Neuron) meets every rank at rank 0."""
    check_inputs(cfg)
    path = write_nxdt_config(cfg, mode)
    tree = yaml.safe_load(path.read_text())
    if mode == "train":
        train(cfg, TrainPlan.from_yaml(tree), rank=rank, world=cfg.num_nodes, master=master, yaml_path=path)
        return
    ranks = rendezvous(master, cfg.master_port, rank, cfg.num_nodes, timeout)
    print(f"node {rank}/{cfg.num_nodes}: CPU stand-in for NxD Training {mode}: read {path}, met ranks {ranks} "
          f"at {master}:{cfg.master_port}", flush=True)
