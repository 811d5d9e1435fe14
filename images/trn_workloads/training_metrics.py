"""The training metrics every trainer exposes for the platform's Prometheus.

The platform's workload PodMonitor (infra/monitoring/scrape.py) scrapes pods labelled
`trn-platform/scrape: "true"` on their port named `metrics`; its training dashboard and
the `TrainingJobStalled` alert read these four series (tests/fixtures/metrics/trn-workloads.yaml).
Only the process that owns the job's progress (rank 0) serves them, so a job counts once:

    metrics = TrainingMetrics.serve(port=9400) if rank == 0 else TrainingMetrics.disabled()
    metrics.record_step(tokens=batch_tokens, loss=loss, seconds=step_seconds)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

METRICS_PORT = 9400  # container port named `metrics` in the pods that serve these


@dataclass
class TrainingMetrics:
    registry: CollectorRegistry | None
    steps: Counter | None = None
    tokens: Counter | None = None
    loss: Gauge | None = None
    step_seconds: Gauge | None = None

    @classmethod
    def create(cls) -> TrainingMetrics:
        """Series in a registry of their own (nothing else of the process leaks into a scrape)."""
        registry = CollectorRegistry()
        return cls(registry,
                   steps=Counter("trn_training_steps", "Optimizer steps done by this job", registry=registry),
                   tokens=Counter("trn_training_tokens", "Tokens trained on by this job (all ranks)", registry=registry),
                   loss=Gauge("trn_training_loss", "Training loss of the latest step", registry=registry),
                   step_seconds=Gauge("trn_training_step_duration_seconds", "Wall time of the latest step",
                                      registry=registry))

    @classmethod
    def serve(cls, port: int = METRICS_PORT, addr: str = "0.0.0.0") -> TrainingMetrics:
        metrics = cls.create()
        start_http_server(port, addr=addr, registry=metrics.registry)
        return metrics

    @classmethod
    def disabled(cls) -> TrainingMetrics:
        """For ranks other than 0 and for runs outside a cluster: records nothing."""
        return cls(None)

    def record_step(self, *, tokens: int, loss: float, seconds: float) -> None:
        if self.registry is None:
            return
        self.steps.inc()
        self.tokens.inc(tokens)
        if math.isfinite(loss):  # a diverged step keeps the last finite loss; the stall alert sees the steps
            self.loss.set(loss)
        self.step_seconds.set(seconds)
