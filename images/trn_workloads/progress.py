"""`trn_training_steps_total` for trainers that do not serve it themselves (Ray Train, NxD
Training), read from what they write to the shared file system.

    python -m trn_workloads.progress --jsonl <run_dir>/<run_name>/metrics.jsonl --host 0.0.0.0 --port 9400
    python -m trn_workloads.progress --tensorboard <run_dir> --host 0.0.0.0 --port 9400

It runs as a native sidecar (an init container with `restartPolicy: Always`) of the pod that
lives exactly as long as the training attempt: the RayJob's submitter, the MPIJob's launcher
(workloads/progress.py). The counter starts at 0 and counts every step done after the position
the files showed when it started (redone steps after a restart from a checkpoint included), so
it moves while the job works and passes 0 with the attempt's first step:

- Ray Train (images/trn_workloads/ray_train/loop.py): world rank 0 appends one JSON object per
  log interval to metrics.jsonl, with `step` = optimizer steps done;
- NxD Training writes TensorBoard event files in exp_manager's explicit_log_dir
  (images/trn_workloads/nemo/nxdt.py, log_every_n_steps 1); every event carries the global
  step. Event files are TFRecord files (TensorFlow's "TFRecord format details",
  https://www.tensorflow.org/tutorials/load_data/tfrecord: uint64 length, uint32 masked CRC of
  the length, the data, uint32 masked CRC of the data) of `Event` protos (tensorflow
  tensorflow/core/util/event.proto: `double wall_time = 1; int64 step = 2; ... Summary summary = 5`);
  only the step is read, with the standard library.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, start_http_server

from trn_workloads.training_metrics import METRICS_PORT

EVENT_FILE_GLOB = "events.out.tfevents.*"
POLL_SECONDS = 15.0  # the Prometheus scrape interval of the workload PodMonitor: a read per scrape


def last_step_jsonl(path: Path) -> int | None:
    """The `step` of the last complete line (a line being appended is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def event_step(record: bytes) -> int | None:
    """Field 2 (`step`, int64 varint) of a serialized Event; None when absent."""
    pos = 0
    while pos < len(record):
        key, pos = _varint(record, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(record, pos)
            if field == 2:
                return value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(record, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return None


def tfrecords(data: bytes):
    """The records of a TFRecord file; a partly written last record is left out."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield data[pos + 12:pos + 12 + length]
        pos = end


def latest_step_tensorboard(logdir: Path) -> int | None:
    """Where training is now: the newest step of the most recently written event file in `logdir`
    or one directory below (Lightning's version_N/; not deeper, so a poll never walks the
    checkpoint trees next to them). Every trainer process writes its own file, so after a
    restart from a checkpoint the newest file shows the rewound step, not the old maximum; a new
    file without a step yet tells nothing (None)."""
    files = [*logdir.glob(EVENT_FILE_GLOB), *logdir.glob(f"*/{EVENT_FILE_GLOB}")]
    if not files:
        return None
    newest = max(files, key=lambda f: (f.stat().st_mtime, f.name))
    steps = [s for s in (event_step(r) for r in tfrecords(newest.read_bytes())) if s is not None]
    return max(steps, default=None)


class Progress:
    """The counter of steps done while this sidecar watches (redone steps after a restart from a
    checkpoint count again), and the position it last saw. Like a trainer's own counter it starts
    at 0 with the attempt: what the files showed at start (an earlier attempt's, the precompile
    run's lines) only sets the position, so the counter passes 0 with this attempt's first step."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.steps = Counter("trn_training_steps", "Optimizer steps done by this job", registry=self.registry)
        self.position: int | None = None

    def observe(self, step: int | None) -> None:
        """Training is at `step` now: count the steps since the last position; a smaller step is a
        restart from an earlier checkpoint (the position rewinds, the counter never goes back)."""
        if step is None:
            return
        if self.position is not None and step > self.position:
            self.steps.inc(step - self.position)
        self.position = step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trn_workloads.progress", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--jsonl", type=Path, help="Ray Train's metrics.jsonl")
    src.add_argument("--tensorboard", type=Path, help="directory with TensorBoard event files (in it or one level below)")
    ap.add_argument("--port", type=int, default=METRICS_PORT)
    ap.add_argument("--host", default="0.0.0.0", help="address to serve on (the pod's, for Prometheus)")
    ap.add_argument("--interval", type=float, default=POLL_SECONDS, help="seconds between reads")
    args = ap.parse_args(argv)
    progress = Progress()
    start_http_server(args.port, addr=args.host, registry=progress.registry)
    read = (lambda: last_step_jsonl(args.jsonl)) if args.jsonl else (lambda: latest_step_tensorboard(args.tensorboard))
    while True:  # ends with the pod: the sidecar is stopped when the training container exits
        try:
            progress.observe(read())
        except (OSError, ValueError) as e:  # a file being rotated or written: try again next time
            print(f"progress: {e}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
