"""Checkpoints as NxD Training's exp_manager names, keeps and finds them (pure functions, and the one atomic write),
for the CPU stand-in (trn_workloads/nemo/standin.py).

What NxD Training does with the exp_manager checkpoint keys, at the commit images/nemo/Dockerfile pins
(aws-neuron/neuronx-distributed-training@9169aa03f39efd4eb02da63891a7ed98defb1714):
- src/neuronx_distributed_training/utils/exp_manager.py check_resume: checkpoints are `<log_dir>/checkpoints`
  (unless checkpoint_callback_params.dirpath), every `*.ckpt` under it (rglob), the newest by modification time
  is resumed from; none found: an error unless resume_ignore_no_checkpoint (then training starts fresh).
- same file, NeMoModelCheckpoint.on_train_batch_end: a save when `global_step % every_n_train_steps == 0`;
  save_top_k checkpoints are kept by `monitor` (step, mode max: the newest steps) and the rest deleted
  (docs/general/config_overview.rst "checkpoint_callback_params.save_top_k": "The framework would automatically
  keep deleting checkpoints"); the `filename` template's `{step}` / `{consumed_samples}` become `step=<n>` /
  `consumed_samples=<x>` (Lightning ModelCheckpoint._format_checkpoint_name with auto_insert_metric_name),
  `.ckpt` appended, and the kept set never loses the save the run resumed from (_should_remove_checkpoint); read
  in src/lightning/pytorch/callbacks/model_checkpoint.py (Lightning-AI/pytorch-lightning@003fe240, the code index's
  copy; NxD Training's requirements.txt pins lightning==2.5.0, whose tag was not read here).
  NxD Training's check_resume takes any `*.ckpt` it finds, so here a save is written under a temporary name that
  does not match `*.ckpt` and renamed into place when complete: a partial save is never the newest.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

CHECKPOINT_SUFFIX = ".ckpt"
_METRIC = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def checkpoint_name(template: str, *, step: int, consumed_samples: float) -> str:
    """`megatron_llama--{step}-{consumed_samples}` -> `megatron_llama--step=10-consumed_samples=640.0.ckpt`
    (Lightning ModelCheckpoint: each `{metric}` becomes `metric=<value>`; NeMo logs consumed_samples as a float)."""
    values = {"step": step, "consumed_samples": float(consumed_samples)}
    return _METRIC.sub(lambda m: f"{m.group(1)}={values[m.group(1)]}", template) + CHECKPOINT_SUFFIX


def checkpoint_step(path: Path) -> int | None:
    found = re.search(r"(?:^|[-_])step=(\d+)", path.name)
    return int(found.group(1)) if found else None


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Every complete save (what NxD Training's check_resume looks at: `*.ckpt` under the directory); oldest first
    by modification time as check_resume orders them, then by step."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.rglob(f"*{CHECKPOINT_SUFFIX}") if checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: (p.stat().st_mtime, checkpoint_step(p)))


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    saves = complete_checkpoints(checkpoint_dir)
    return saves[-1] if saves else None


def checkpoints_to_remove(saves: list[Path], save_top_k: int, resumed_from: Path | None = None) -> list[Path]:
    """The saves past the top k by step (monitor step, mode max); save_top_k -1 keeps every one, 0 none. The save
    the run resumed from is never removed (Lightning ModelCheckpoint._should_remove_checkpoint)."""
    if save_top_k < 0:
        return []
    ranked = sorted(saves, key=lambda p: checkpoint_step(p) or 0, reverse=True)
    return [p for p in ranked[save_top_k:] if resumed_from is None or p.resolve() != resumed_from.resolve()]


def should_save(step: int, every_n_train_steps: int | None) -> bool:
    """NeMoModelCheckpoint.on_train_batch_end: a save when global_step is a multiple of every_n_train_steps."""
    return bool(every_n_train_steps) and every_n_train_steps > 0 and step % every_n_train_steps == 0


class ResumeError(Exception):
    pass


def resume_point(exp_manager: dict, log_dir: Path) -> Path | None:
    """The checkpoint a run starts from: none unless resume_if_exists; then the newest complete save under
    `<log_dir>/checkpoints` (or checkpoint_callback_params.dirpath); none there is an error unless
    resume_ignore_no_checkpoint. resume_from_checkpoint, when set, wins ("This will override any checkpoint found
    when resume_if_exists is True": exp_manager.py's exp_manager docstring at the pinned commit)."""
    if exp_manager.get("resume_from_checkpoint"):
        return Path(exp_manager["resume_from_checkpoint"])
    if not exp_manager.get("resume_if_exists"):
        return None
    found = newest_checkpoint(checkpoint_dir(exp_manager, log_dir))
    if found is None and not exp_manager.get("resume_ignore_no_checkpoint"):
        raise ResumeError(f"resume_if_exists is set but there are no checkpoints in "
                          f"{checkpoint_dir(exp_manager, log_dir)} (set resume_ignore_no_checkpoint to start fresh)")
    return found


def checkpoint_dir(exp_manager: dict, log_dir: Path) -> Path:
    return Path((exp_manager.get("checkpoint_callback_params") or {}).get("dirpath") or log_dir / "checkpoints")


def save_atomically(state: dict, path: Path) -> None:
    """torch.save under a name check_resume does not match (no `.ckpt` suffix), then a rename into place."""
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
