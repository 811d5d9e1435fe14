"""The loop every Ray Train worker runs; `runtime` holds what differs between Neuron and CPU.

    resume from ray.train.get_checkpoint() (weights, optimizer, LR schedule, step = data position)
    -> every step: this rank's micro-batches -> forward/backward -> optimizer step
    -> every log_interval: metrics to Ray and to <run_dir>/<run_name>/metrics.jsonl (appended by
       every job of the run: steps after the last checkpoint of a failed job appear again)
    -> every checkpoint_interval and at the last step: a checkpoint through ray.train.report

Every batch that reaches the model is [micro_batch_size, seq_len] (fixed-length blocks, full
batches only), so the Neuron compiler sees one graph. The shapes actually seen are reported
as the `input_shapes` metric, and a different shape stops the run.

A checkpoint directory holds `meta.json` (written by world rank 0: step, data position, the
settings a resume must match) and one `shard-tpNN.pt` per tensor-parallel rank (written by
data parallel replica 0): {"model", "optimizer", "scheduler"} state dicts.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trn_workloads.ray_train.batches import BatchPlan
from trn_workloads.ray_train.blocks import BlockFormatError, open_blocks
from trn_workloads.ray_train.config import ConfigError, PretrainConfig, config_from_dict
from trn_workloads.ray_train.model import padded_vocab_size
from trn_workloads.ray_train.runtime import worker_runtime

log = logging.getLogger(__name__)

META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
# A resumed run must agree with its checkpoint on these, or the data position / shards mean something else.
RESUME_MUST_MATCH = ("model", "seq_len", "global_batch_size", "seed", "tensor_parallel_size", "steps")


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup_steps` (never 0 at step 0), then cosine down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def shard_name(tp_rank: int) -> str:
    return f"shard-tp{tp_rank:02d}.pt"


def checkpoint_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def metrics_path(cfg: PretrainConfig) -> Path:
    return Path(cfg.run_dir) / cfg.run_name / METRICS_FILE


def shape_label(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms (the only 1-D parameters of a bias-free Llama).
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8)


def restore_checkpoint(directory: Path, *, rt, model, optimizer, scheduler, cfg: PretrainConfig,
                       index: dict) -> int:
    """Load this rank's shard; returns the step to continue from (the data position)."""
    meta = json.loads((directory / META_FILE).read_text())
    for key in RESUME_MUST_MATCH:
        if meta["config"][key] != getattr(cfg, key):
            raise ConfigError(f"{key}: the checkpoint at step {meta['step']} in {directory} was made with "
                              f"{key}={meta['config'][key]!r}, the config now has {getattr(cfg, key)!r}; use a new "
                              f"run_name to start over")
    if meta["data_fingerprint"] != index["fingerprint"]:
        raise BlockFormatError(f"{cfg.data_dir}: the blocks changed since the checkpoint at step {meta['step']} "
                               f"(fingerprint {index['fingerprint'][:12]}, checkpoint {meta['data_fingerprint'][:12]});"
                               f" use a new run_name to start over on the new data")
    state = rt.load(directory / shard_name(rt.tp_rank))
    rt.unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(meta["step"])


def _report(metrics: dict[str, Any], *, save: bool, state: dict[str, Any] | None, rt, world_rank: int,
            cfg: PretrainConfig, step: int, plan: BatchPlan, index: dict) -> None:
    """Report metrics; with `save`, also a checkpoint (`state` is this worker's shard, None if it writes none)."""
    import ray.train

    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
        wrote = False
        if state is not None:
            rt.save(state, Path(tmp) / shard_name(rt.tp_rank))
            wrote = True
        if world_rank == 0:
            meta = {"step": step, "config": cfg.to_dict(), "data_fingerprint": index["fingerprint"],
                    "data_position": {"next_step": step, "epoch": plan.epoch_of(step),
                                      "blocks_consumed": step * cfg.global_batch_size},
                    "metrics": metrics}
            (Path(tmp) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            wrote = True
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if wrote else None
        # Every worker reports (it is a barrier); Ray merges the workers' files into one directory.
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(step))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point.

    loop_config: {"config": PretrainConfig as a dict, "stop_at_step": int, "checkpoints": bool,
    "backend": the driver's accel backend}.
    """
    import ray.train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_dict(loop_config["config"])
    stop_at = int(loop_config["stop_at_step"])
    use_checkpoints = bool(loop_config["checkpoints"])
    world_rank = ray.train.get_context().get_world_rank()

    rt = worker_runtime(cfg, driver_backend=loop_config["backend"])
    blocks, index = open_blocks(cfg.data_dir, seq_len=cfg.seq_len)
    plan = BatchPlan(n_blocks=index["n_blocks"], global_batch_size=cfg.global_batch_size,
                     micro_batch_size=cfg.micro_batch_size, data_parallel_size=rt.dp_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = rt.build_model(cfg.preset, padded_vocab_size(index["vocab_size"], cfg.tensor_parallel_size))
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_multiplier, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
        min_ratio=cfg.min_learning_rate / cfg.learning_rate))

    start = 0
    checkpoint = ray.train.get_checkpoint() if use_checkpoints else None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = restore_checkpoint(Path(directory), rt=rt, model=model, optimizer=optimizer,
                                       scheduler=scheduler, cfg=cfg, index=index)
    if world_rank == 0:
        log.info("%s backend, %d data parallel x %d tensor parallel, %d micro-batches of %d per step; "
                 "%s at step %d, running to step %d", rt.name, rt.dp_size, cfg.tensor_parallel_size,
                 plan.accumulation_steps, cfg.micro_batch_size, "resuming" if start else "starting", start, stop_at)
        metrics_path(cfg).parent.mkdir(parents=True, exist_ok=True)

    expected_shape = (cfg.micro_batch_size, cfg.seq_len)
    shapes_seen: set[tuple[int, ...]] = set()
    tokens_per_step = cfg.global_batch_size * cfg.seq_len
    window_start, window_steps = time.perf_counter(), 0
    model.train()
    for step in range(start, stop_at):
        micro_batches = plan.micro_batches(step, rt.dp_rank)
        step_loss = torch.zeros((), device=rt.device)
        for m, rows in enumerate(micro_batches):
            tokens = torch.from_numpy(np.asarray(blocks[rows], dtype=np.int64))
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            shapes_seen.add(tuple(inputs.shape))
            if tuple(inputs.shape) != expected_shape:  # would make the Neuron compiler build another graph
                raise RuntimeError(f"step {step}: input shape {list(inputs.shape)}, expected {list(expected_shape)}")
            inputs, targets = inputs.to(rt.device), targets.to(rt.device)
            with rt.no_sync(model, last_micro_batch=m == len(micro_batches) - 1):
                loss = rt.loss(model(input_ids=inputs).logits, targets) / len(micro_batches)
                loss.backward()
            step_loss += loss.detach()
        learning_rate = optimizer.param_groups[0]["lr"]
        grad_norm = rt.optimizer_step(model, optimizer, cfg.grad_clip)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        rt.mark_step()

        done = step + 1
        window_steps += 1
        save_now = use_checkpoints and (done % cfg.checkpoint_interval == 0 or done == stop_at)
        if not (save_now or done % cfg.log_interval == 0 or done == stop_at):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {"step": done, "loss": rt.mean_over_data_parallel(step_loss), "learning_rate": learning_rate,
                   "grad_norm": float(grad_norm), "tokens_per_s": window_steps * tokens_per_step / elapsed,
                   "epoch": plan.epoch_of(step), "input_shapes": sorted(shape_label(s) for s in shapes_seen),
                   "backend": rt.name}
        if world_rank == 0:
            log.info("step %d loss %.4f lr %.3g grad_norm %.3f tokens/s %.0f", done, metrics["loss"],
                     learning_rate, metrics["grad_norm"], metrics["tokens_per_s"])
            with open(metrics_path(cfg), "a") as f:
                f.write(json.dumps(metrics) + "\n")
        state = None
        if save_now and rt.dp_rank == 0:  # one copy of each tensor-parallel shard
            state = {"model": rt.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict()}
        _report(metrics, save=save_now, state=state, rt=rt, world_rank=world_rank, cfg=cfg, step=done, plan=plan,
                index=index)
        window_start, window_steps = time.perf_counter(), 0
