"""The training series the platform's dashboard and stall alert read, served over HTTP."""
from __future__ import annotations

from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from trn_workloads.training_metrics import TrainingMetrics
from tests.loopback import free_port

CONTRACT = Path(__file__).parent / "fixtures" / "metrics" / "trn-workloads.yaml"


def scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if not s.name.endswith("_created")}


def test_served_series_are_exactly_the_platform_contract():
    port = free_port()
    metrics = TrainingMetrics.serve(port=port, addr="127.0.0.1")
    metrics.record_step(tokens=4096, loss=2.5, seconds=0.8)
    metrics.record_step(tokens=4096, loss=float("nan"), seconds=0.9)
    samples = scrape(port)
    assert set(samples) == set(yaml.safe_load(CONTRACT.read_text())["metrics"])
    assert samples["trn_training_steps_total"] == 2
    assert samples["trn_training_tokens_total"] == 8192
    assert samples["trn_training_loss"] == 2.5  # the diverged step did not overwrite it
    assert samples["trn_training_step_duration_seconds"] == 0.9


def test_other_ranks_record_nothing():
    metrics = TrainingMetrics.disabled()
    metrics.record_step(tokens=1, loss=1.0, seconds=1.0)
    assert metrics.registry is None
