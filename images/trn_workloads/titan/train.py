"""python -m trn_workloads.titan.train --config run.json [--max-steps-this-run N]

One process per NeuronCore (CPU process in tests) under torchrun. TorchTitan's Llama 3
model and its parallelize_llama (tensor parallel + FSDP2 on a DeviceMesh) trained by this
loop: AdamW with warmup + cosine decay, gradient clipping, torch.distributed.checkpoint
saves of model + optimizer + step to <run_dir>/checkpoints/step_<n> and resume from the
newest complete one, TensorBoard scalars (loss, tokens/s, MFU estimate) and a
metrics.jsonl on rank 0.

Every TorchTitan name comes through titan_api (the image build checks them against the pinned
fork). The Neuron/CPU difference is confined to `Runtime` below: device and process-group backend
and bf16 on Neuron; on CPU gloo, fp32 and plain-sum FSDP reductions (gloo has no PREMUL_SUM).
Attention is SDPA on both (see build_model), and the run is eager unless the config asks for
torch.compile, so the CPU test runs the code the Neuron pods run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from trn_workloads import accel
from trn_workloads.titan import titan_api
from trn_workloads.titan.config import ConfigError, RunConfig, load

log = logging.getLogger("trn_workloads.titan")
CHECKPOINT_DIR = "checkpoints"
NEFF_CACHE_ENV = "TORCH_NEURONX_NEFF_CACHE_DIR"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class Runtime:
    device_type: str  # "neuron" (TorchNeuron's PrivateUse1 device) or "cpu"
    pg_backend: str
    dtype: str
    compile: bool

    @classmethod
    def detect(cls, cfg: RunConfig) -> "Runtime":
        # The same TRN_BACKEND switch as every image (accel.py); the native track has no
        # torch_xla, so "neuron" here means TorchNeuron, which registers the `neuron`
        # device and process-group backend when torch_neuronx is imported.
        wanted = os.environ.get(accel.ENV_VAR, "cpu").strip().lower()
        if wanted == accel.Backend.NEURON.value:
            import torch_neuronx  # noqa: F401

            return cls("neuron", "neuron", "bfloat16", cfg.compile)
        if wanted != accel.Backend.CPU.value:
            raise ValueError(f"{accel.ENV_VAR}={wanted!r}: the TorchTitan image runs with neuron or cpu")
        return cls("cpu", "gloo", "float32", False)


def newest_checkpoint(run_dir: str) -> tuple[int, Path] | None:
    """The newest step_<n> whose save completed (DCP writes .metadata last)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := _STEP_DIR.match(p.name))
             and (p / ".metadata").exists()] if root.exists() else []
    return max(found) if found else None


class OptimizerState:
    """torch.distributed.checkpoint Stateful for one optimizer through torchtitan's flat
    optimizer state helpers (state is materialized before the first save or load)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        api = titan_api.load()
        api.init_optim_state(self.optimizer)
        return api.get_flat_optim_state_dict(self.optimizer)

    def load_state_dict(self, state_dict: dict) -> None:
        api = titan_api.load()
        api.init_optim_state(self.optimizer)
        api.load_flat_optim_state_dict(self.optimizer, state_dict)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """Linear warmup, then cosine decay to 10 % of the peak over the remaining steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def model_spec(cfg: RunConfig):
    """TorchTitan's Llama 3 spec of cfg.model_flavor with SDPA attention. It takes no Runtime: the
    Neuron pods build the model the CPU test builds."""
    api = titan_api.load()
    spec = api.model_registry(cfg.model_flavor)
    # SDPA on every path, never the stock FlexAttention: TorchNeuron runs FlexAttention only inside
    # torch.compile(backend="neuron") and recommends compiling with SimpleFSDP, which this trainer
    # (FSDP2 fully_shard) does not use (Neuron docs: torch/compile/about-torch-compile.html,
    # torch/reference/best-practices-pytorch-neuron.html "With TorchTitan, use SimpleFSDP for
    # torch.compile workloads"). Stock flex_attention refuses other device types in eager (torch 2.13
    # torch/nn/attention/flex_attention.py _validate_device: cuda, cpu, xpu, hpu, mps). SDPA is one ATen op
    # that eager mode dispatches; it is plain causal attention over the packed stream (no per-document
    # mask, so get_attention_masks is not called). torch-neuronx v2.34.0's release notes say its
    # TorchTitan Neuron MoE recipes moved from sdpa to the models' own attention: worth measuring on trn2.
    for layer in spec.model.layers:
        layer.attention.inner_attention = api.ScaledDotProductAttention.Config()
    return spec


def build_model(cfg: RunConfig, rt: Runtime, parallel_dims):
    import torch

    api = titan_api.load()
    spec = model_spec(cfg)
    with torch.device("meta"):
        model = spec.model.build()
    _, flops_per_token = spec.model.get_nparams_and_flops(model, cfg.seq_len)  # on the unsharded meta model
    model = api.parallelize_llama(model, **titan_api.parallelize_kwargs(
        parallel_dims=parallel_dims,
        training=api.TrainingConfig(**titan_api.training_kwargs(seq_len=cfg.seq_len, local_batch_size=cfg.local_batch_size,
                                                                dtype=rt.dtype)),
        parallelism=api.ParallelismConfig(**titan_api.parallelism_kwargs(fsdp=cfg.fsdp, tp=cfg.tensor_parallel_size)),
        compile_config=api.CompileConfig(**titan_api.compile_kwargs(enable=rt.compile)), dump_folder=cfg.run_dir))
    if rt.pg_backend == "gloo":
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
    model.to_empty(device=rt.device_type)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    return model, flops_per_token


def train(cfg: RunConfig, *, max_steps_this_run: int | None = None) -> int:
    """Train to cfg.steps (or for max_steps_this_run steps); returns the step reached."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from trn_workloads.titan.data import TokenSamples

    api = titan_api.load()
    if cfg.compile_cache:
        # TorchNeuron's persistent NEFF cache (eager and torch.compile alike), set before Runtime.detect
        # imports torch_neuronx: https://awsdocs-neuron.readthedocs-hosted.com/en/latest/torch/reference/env-vars.html.
        # The pod env already names it (workloads/common.py compile_cache_env); this covers a run
        # started by hand from the same run config. CPU runs never read it.
        os.environ.setdefault(NEFF_CACHE_ENV, cfg.compile_cache)
    rt = Runtime.detect(cfg)
    dist.init_process_group(rt.pg_backend)
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != cfg.world_size:
        raise RuntimeError(f"torchrun started {world} processes; the run config expects {cfg.nodes} nodes x "
                           f"{cfg.processes_per_node} = {cfg.world_size}")
    # torchtitan resolves the mesh device from CUDA-like modules at import; name ours.
    importlib.import_module(titan_api.DEVICE_TYPE_MODULE).device_type = rt.device_type
    dims = api.ParallelDims(**titan_api.parallel_dims_kwargs(dp_shard=cfg.fsdp, tp=cfg.tensor_parallel_size, world_size=world))
    dims.build_mesh()
    batch_mesh = dims.get_mesh("batch")
    dp_rank, dp_size = batch_mesh.get_local_rank(), batch_mesh.size()

    model, flops_per_token = build_model(cfg, rt, dims)
    samples = TokenSamples.open(cfg.dataset_prefix, seq_len=cfg.seq_len, seed=cfg.seed, vocab_size=cfg.vocab_size)
    # (name, param) pairs: torchtitan keys the optimizer state by parameter name.
    optimizer = torch.optim.AdamW(list(model.named_parameters()), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                                  foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    # torchtitan's Stateful views: canonical model keys (fused QKV split back into wq/wk/wv)
    # and a flat, FQN-keyed optimizer state; DCP saves and reshards them.
    state = {"model": api.ModelWrapper(model), "optimizer": OptimizerState(optimizer), "step": torch.tensor(0)}
    start = 0
    newest = newest_checkpoint(cfg.run_dir)
    if newest is not None:
        start, path = newest
        dcp.load(state, checkpoint_id=str(path))
        if int(state["step"]) != start:
            raise RuntimeError(f"{path}: holds step {int(state['step'])}, its name says {start}")
        scheduler.last_epoch = start - 1
        scheduler.step()  # the LR of step `start`
        if rank == 0:
            log.info("resumed from %s (step %d)", path, start)

    from trn_workloads.training_metrics import TrainingMetrics

    metrics = (TrainingMetrics.serve(cfg.metrics_port, addr=cfg.metrics_addr) if rank == 0 and cfg.metrics_port
               else TrainingMetrics.disabled())
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(cfg.run_dir) / "tensorboard"))
    metrics_file = Path(cfg.run_dir) / "metrics.jsonl"
    stop = cfg.steps if max_steps_this_run is None else min(cfg.steps, start + max_steps_this_run)
    global_tokens = cfg.local_batch_size * cfg.seq_len * dp_size
    step = logged = start
    tick = time.perf_counter()
    while step < stop:
        batch = torch.from_numpy(samples.batch(step, dp_rank=dp_rank, dp_size=dp_size,
                                               batch_size=cfg.local_batch_size)).to(rt.device_type)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        positions = torch.arange(cfg.seq_len, device=rt.device_type).expand(inputs.shape[0], -1)
        logits = model(inputs, positions, None)  # SDPA: causal, no mask object
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        grad_norm = api.clip_grad_norm_(list(model.parameters()), **titan_api.clip_kwargs(max_norm=cfg.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1

        if step % cfg.log_every_n_steps == 0 or step == stop:
            reported = loss.detach().clone()
            dist.all_reduce(reported, op=dist.ReduceOp.SUM, group=batch_mesh.get_group())
            elapsed = time.perf_counter() - tick
            tokens_per_s = global_tokens * (step - logged) / max(elapsed, 1e-9)
            for _ in range(step - logged):  # the loss is read at log steps only (a device sync)
                metrics.record_step(tokens=global_tokens, loss=float(reported) / dp_size, seconds=elapsed / (step - logged))
            tick, logged = time.perf_counter(), step
            row = {"step": step, "loss": float(reported) / dp_size, "grad_norm": float(grad_norm.full_tensor()
                   if hasattr(grad_norm, "full_tensor") else grad_norm),
                   "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s}
            if cfg.peak_tflops_per_process:
                # MFU: model FLOPs (torchtitan's 6N + attention estimate per token) over the peak of every process.
                row["mfu"] = flops_per_token * tokens_per_s / (cfg.peak_tflops_per_process * 1e12 * world)
            if writer is not None:
                for name, value in row.items():
                    if name != "step":
                        writer.add_scalar(f"train/{name}", value, step)
                with metrics_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                log.info("step %(step)d loss %(loss).4f tokens/s %(tokens_per_s).0f", row)

        if step % cfg.checkpoint_every_n_steps == 0 or step == stop:
            state["step"] = torch.tensor(step)
            dcp.save(state, checkpoint_id=str(Path(cfg.run_dir) / CHECKPOINT_DIR / f"step_{step}"))
    if writer is not None:
        writer.close()
    dist.barrier()
    dist.destroy_process_group()
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trn_workloads.titan.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="run config JSON (trn_workloads/titan/config.py RunConfig)")
    parser.add_argument("--max-steps-this-run", type=int, default=None,
                        help="stop (after a checkpoint) this many steps after the resume point: time-boxed runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load(args.config)
    except (ConfigError, OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    train(cfg, max_steps_this_run=args.max_steps_this_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
