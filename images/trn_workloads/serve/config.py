"""Server settings: environment variables (what the Deployment sets), overridden by CLI flags."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Callable, TypeVar

T = TypeVar("T")

# Kubernetes injects <SERVICE>_PORT=tcp://... for every Service in the namespace, so a Service
# named "trn-serve" would clobber TRN_SERVE_PORT: name it otherwise or set enableServiceLinks: false.
ENV_PREFIX = "TRN_SERVE_"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_uri: str  # s3://bucket/prefix/ or a local/FSx directory holding model.pt + manifest.json
    host: str = "0.0.0.0"
    port: int = 8080
    max_batch_size: int | None = None  # rows per model call; None: the compiled batch size
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_body_bytes: int = 1024 * 1024
    # Requests waiting for a model call; one more is answered 503 with Retry-After at once, so a
    # burst sheds load (and a load balancer retries elsewhere) instead of queueing into seconds of latency.
    max_queued_requests: int = 64
    cache_dir: str = "/tmp/model-cache"  # where an s3:// artifact is downloaded

    def __post_init__(self):
        if not self.model_uri:
            raise ValueError(f"model_uri is required (--model-uri or ${ENV_PREFIX}MODEL_URI)")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be 0..10000, got {self.max_wait_ms}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.max_queued_requests < 1:
            raise ValueError(f"max_queued_requests must be >= 1, got {self.max_queued_requests}")


def _env(field: str, convert: Callable[[str], T], environ) -> T | None:
    name = ENV_PREFIX + field.upper()
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return convert(raw.strip())
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not a valid {convert.__name__}") from None


def load_config(argv: list[str] | None = None, environ=None) -> ServeConfig:
    """ServeConfig from TRN_SERVE_* environment variables, then CLI flags on top."""
    environ = os.environ if environ is None else environ
    converters = {"model_uri": str, "host": str, "port": int, "max_batch_size": int,
                  "max_wait_ms": float, "max_body_bytes": int, "max_queued_requests": int, "cache_dir": str}
    values = {f: v for f, c in converters.items() if (v := _env(f, c, environ)) is not None}

    parser = argparse.ArgumentParser(prog="python -m trn_workloads.serve",
                                     description="HTTP inference server for a compiled model.pt + manifest.json")
    for field, convert in converters.items():
        parser.add_argument("--" + field.replace("_", "-"), type=convert, default=None,
                            help=f"env {ENV_PREFIX}{field.upper()}")
    args = parser.parse_args(argv)
    values.update({f: v for f in converters if (v := getattr(args, f)) is not None})
    values.setdefault("model_uri", "")
    return ServeConfig(**values)
