"""Rehearsals of lora-finetune and llm-serve on one shared volume, as `trnctl rehearse llm-serve-usw2` runs
them: the finetune Job trains, merges and evaluates; vLLM (CPU) starts from the merged model at the path the
llm-serve render gives `vllm serve`; a burst through the Service name raises the ScaledObject's own PromQL, in
Debian's Prometheus scraping what the platform's PodMonitor selects, above its threshold; with Prometheus
stopped, KEDA's fallback (kedacore/keda@v2.20.2 rules in trnctl/operators/keda.py) applies."""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from trnctl.operators import hpa, keda
from trnctl.rehearse import overlay
from trnctl.rehearse.runner import Rehearsal
from trnctl.rehearse.stack import load

pytestmark = pytest.mark.slow

BURST = 48  # 12x maxNumSeqs: long enough a queue for 1 s scrapes to see it on a fast machine


@pytest.fixture(scope="module")
def shared():
    path = Path(tempfile.mkdtemp(prefix="trn-rehearse-test-shared-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def lora(shared):
    with Rehearsal(load("lora-finetune-usw2", overlay.stack_overlays()), shared_dir=shared, step_timeout=300) as r:
        yield r, r.run()


@pytest.fixture(scope="module")
def serve(lora, shared):
    assert lora[1].ok, lora[1].report()
    with Rehearsal(load("llm-serve-usw2", overlay.stack_overlays()), shared_dir=shared, step_timeout=400) as r:
        yield r, r.run()


def test_finetune_job_trains_merges_and_evaluates(lora, shared):
    r, result = lora
    assert result.ok, result.report()
    run_dir = shared / "fsx-shared" / r.stack.result.outputs["runDir"].removeprefix("/shared/")
    assert (run_dir / "merged" / "config.json").exists() and (run_dir / "merged" / "model.safetensors").exists()
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["finetuned"]["records"] == report["base"]["records"] == 8  # the overlay's eval_records, evaluated
    assert len(json.loads((run_dir / "train_losses.json").read_text())) >= 1


def test_merged_model_is_where_llm_serve_reads_it(lora, serve):
    r, result = serve
    assert result.ok, result.report()
    deployment = next(o for o in r.stack.objects if o["kind"] == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["vllm", "serve"]
    assert command[2] == lora[0].stack.result.outputs["mergedModelDir"]


def _burst_script(service: str, port: int, model: str) -> str:
    return f"""
import json, os, threading, urllib.request
def one():
    body = json.dumps({{"model": "{model}", "prompt": "SELECT name FROM", "max_tokens": 200, "ignore_eos": True}}).encode()
    req = urllib.request.Request("http://{service}:{port}/v1/completions", data=body, headers={{
        "Content-Type": "application/json", "Authorization": "Bearer " + os.environ["VLLM_API_KEY"]}})
    urllib.request.urlopen(req, timeout=300).read()
threads = [threading.Thread(target=one) for _ in range({BURST})]
[t.start() for t in threads]; [t.join() for t in threads]
print("done")
"""


def test_burst_through_the_service_raises_the_scaledobject_query_then_fallback_applies(serve):
    r, result = serve
    assert result.ok, result.report()
    scaled = next(o for o in r.stack.objects if o["kind"] == "ScaledObject")
    [trigger] = keda.prometheus_triggers(scaled)
    threshold = float(trigger["metadata"]["threshold"])
    server = r.url_in_cluster(trigger["metadata"]["serverAddress"])
    prometheus = r.start_prometheus()
    assert server.startswith(prometheus.url)

    service = next(o for o in r.stack.objects if o["kind"] == "Service")
    pod = r.all_pods[0]["metadata"]["name"]
    container = r.all_pods[0]["spec"]["containers"][0]["name"]
    cmd = r.all_pods[0]["spec"]["containers"][0]["command"]
    served = cmd[cmd.index("--served-model-name") + 1]
    script = _burst_script(service["metadata"]["name"], service["spec"]["ports"][0]["port"], served)
    outcome = {}
    burst = threading.Thread(target=lambda: outcome.update(done=r.exec_in(pod, container, ["python", "-c", script],
                                                                          timeout=300)))
    burst.start()
    peak, deadline = 0.0, time.monotonic() + 300
    while burst.is_alive() and time.monotonic() < deadline:
        try:
            peak = max(peak, keda.execute_prom_query(server, trigger))
        except keda.MetricError:
            pass
        time.sleep(0.2)
    burst.join(timeout=60)
    assert outcome["done"].returncode == 0 and "done" in outcome["done"].stdout, outcome["done"].stderr
    assert peak > threshold, f"query peaked at {peak}, threshold {threshold}"
    assert keda.is_active(peak, trigger)
    # the HPA KEDA feeds (trnctl/operators/hpa.py) would scale out on that reading
    desired = hpa.external_average_value_replicas(peak, threshold, 1, min_replicas=scaled["spec"]["minReplicaCount"],
                                                  max_replicas=scaled["spec"]["maxReplicaCount"])
    print(f"burst of {BURST}: query peaked at {peak:g} (threshold {threshold:g}) -> HPA wants {desired} replicas")
    assert desired > 1

    prometheus.stop()
    tracker = keda.FallbackTracker(scaled)
    failure_threshold = int(scaled["spec"]["fallback"]["failureThreshold"])
    observed = []
    for _ in range(failure_threshold + 1):
        try:
            value = keda.execute_prom_query(server, trigger, timeout=2)
        except keda.MetricError:
            value = None
        observed.append(tracker.observe(value, trigger, current_replicas=1))
    assert all(not applied for _, applied in observed[:-1])
    metric, applied = observed[-1]
    assert applied and metric == threshold * keda.fallback_replicas(scaled, 1)


def test_autoscaler_check_reports_the_query_and_fails_one_that_selects_no_pod(serve):
    r, result = serve
    assert any(n.startswith("ScaledObject/llm-serve-usw2: query = ") for n in result.notes), result.report()
    scaled = next(o for o in r.stack.objects if o["kind"] == "ScaledObject")
    trigger = keda.prometheus_triggers(scaled)[0]
    original = trigger["metadata"]["query"]
    # the defect: a pod pattern that no Deployment pod name matches (a Deployment pod is <rs>-<hash>-<suffix>)
    trigger["metadata"]["query"] = original.replace("-[a-z0-9]+-[a-z0-9]+", "-[0-9]+")
    try:
        problems = r.check_autoscalers(type(result)(r.stack.name), timeout=8)
    finally:
        trigger["metadata"]["query"] = original
    # the stack turns ignoreNullValues off, so KEDA counts an empty result as a failure (not as 0)
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert problems and "never answered" in problems[0] and "ScaledObject/llm-serve-usw2" in problems[0]
