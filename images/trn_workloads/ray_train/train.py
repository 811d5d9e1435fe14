"""`python -m trn_workloads.ray_train.train --config run.json [--precompile]`: Llama pretraining with Ray Train.

The job driver builds a `TorchTrainer` with `num_workers` workers and waits for it:

    Neuron  TorchXLAConfig (the "xla" process group), one NeuronCore per worker
            (resources_per_worker {"neuron_cores": 1}), neuronx-distributed tensor parallelism
    CPU     TorchConfig(backend="gloo"), one CPU per worker, data parallel only

Checkpoints go to `<run_dir>/<run_name>/step-NNNNNNNN/`. Starting again with the same
run_dir and run_name resumes from the latest one (Ray Train reloads its checkpoint list from
storage, and the loop restores weights, optimizer, LR schedule and data position); within a
run Ray restarts failed workers from it up to `max_failures` times.

--precompile  On Neuron: `precompile_steps` steps of the same training under Ray's
              neuron_parallel_compile mode: workers only extract the graphs, which are then
              compiled in parallel into the cache on FSx (`compile_cache`, NEURON_CC_FLAGS
              --cache_dir). Runs as `<run_name>-precompile` and writes no checkpoint, so the
              training run starts at step 0 with a warm cache. On CPU there is nothing to
              compile: it validates the config and the data, and exits.
--stop-at-step N  stop (with a checkpoint) after step N; the next start resumes there.

The driver's backend must be the workers' (TRN_BACKEND=neuron for the job on Trainium, since
the head node has no Neuron device); a worker that finds otherwise stops with that message.

Exit status: 0 done; 2 bad config or data (nothing was started); 1 training failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from trn_workloads import accel
from trn_workloads.ray_train.batches import BatchPlan
from trn_workloads.ray_train.blocks import BlockFormatError, open_blocks
from trn_workloads.ray_train.config import NEURON_CORES_RESOURCE, ConfigError, PretrainConfig, load_config
from trn_workloads.ray_train.loop import train_loop_per_worker

log = logging.getLogger(__name__)


CPU_RESOURCES_PER_WORKER = {"CPU": 1}  # what one gloo worker asks of a Ray node on the CPU path


def ray_backend(*, precompile: bool) -> tuple[Any, dict[str, float]]:
    """(backend config, resources per worker) for this backend. TorchXLAConfig only on Neuron:
    it kills processes by name on the workers and initialises torch-xla."""
    if accel.is_neuron():
        from ray.train.torch.xla import TorchXLAConfig

        return TorchXLAConfig(neuron_parallel_compile=precompile), {NEURON_CORES_RESOURCE: 1}
    from ray.train.torch import TorchConfig

    return TorchConfig(backend="gloo"), dict(CPU_RESOURCES_PER_WORKER)


def check_data(cfg: PretrainConfig) -> dict[str, Any]:
    """The data index, after checking it fits the config (seq_len, enough blocks for a global batch)."""
    _, index = open_blocks(cfg.data_dir, seq_len=cfg.seq_len)
    try:
        BatchPlan(n_blocks=index["n_blocks"], global_batch_size=cfg.global_batch_size,
                  micro_batch_size=cfg.micro_batch_size, data_parallel_size=cfg.data_parallel_size, seed=cfg.seed)
    except ValueError as err:
        raise ConfigError(f"global_batch_size: {err} (data_dir {cfg.data_dir})") from None
    return index


def build_trainer(cfg: PretrainConfig, *, stop_at_step: int | None = None, precompile: bool = False):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    backend_config, per_worker = ray_backend(precompile=precompile)
    run_name = f"{cfg.run_name}-precompile" if precompile else cfg.run_name
    stop = cfg.precompile_steps if precompile else (stop_at_step or cfg.steps)
    loop_config = {"config": dataclasses.replace(cfg, run_name=run_name).to_dict(),
                   "stop_at_step": min(stop, cfg.steps), "checkpoints": not precompile,
                   "backend": accel.backend().value}
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config, torch_config=backend_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, resources_per_worker=per_worker),
        run_config=RunConfig(name=run_name, storage_path=cfg.run_dir,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=0 if precompile else cfg.max_failures)))


def train(cfg: PretrainConfig, *, stop_at_step: int | None = None, precompile: bool = False):
    """Run (or resume) training; returns Ray's Result, or None for --precompile on CPU."""
    if stop_at_step is not None and stop_at_step < 1:
        raise ConfigError(f"--stop-at-step: must be >= 1, got {stop_at_step}")
    index = check_data(cfg)
    if precompile and not accel.is_neuron():
        log.info("precompile: nothing to compile on the %s backend; config and data (%d blocks of %d tokens) "
                 "are valid", accel.backend().value, index["n_blocks"], index["block_len"])
        return None
    return build_trainer(cfg, stop_at_step=stop_at_step, precompile=precompile).fit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trn_workloads.ray_train.train",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config (JSON)")
    parser.add_argument("--precompile", action="store_true",
                        help="fill the Neuron compile cache with a few steps (no-op check on CPU)")
    parser.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                        help="stop after step N with a checkpoint; starting again resumes")
    parser.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if args.check:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        result = train(cfg, stop_at_step=args.stop_at_step, precompile=args.precompile)
    except (ConfigError, BlockFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - Ray's TrainingFailedError and whatever a worker raised
        log.exception("training failed")
        print(f"error: training failed: {err}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps({"checkpoint": result.checkpoint.path if result.checkpoint else None,
                          "metrics": result.metrics}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
