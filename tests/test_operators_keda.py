"""KEDA's Prometheus scaler and fallback (trnctl/operators/keda.py, kedacore/keda@v2.20.2) and the Prometheus
Operator's PodMonitor scrape config (trnctl/operators/prometheus_operator.py), on the rendered llm-serve stack
and the platform's PodMonitor; the relabelings are run by promtool-free checks of their own semantics."""
from __future__ import annotations

import functools
import re

import pytest

from trnctl import operators
from trnctl.operators import keda, prometheus_operator
from trnctl.rehearse.stack import load


@functools.lru_cache(maxsize=None)
def llm_serve():
    return load("llm-serve-usw2")


def scaled_object():
    return next(o for o in llm_serve().objects if o["kind"] == "ScaledObject")


def answer(*values):
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": {}, "value": [0, v]} for v in values]}}


def test_prometheus_answers_as_the_scaler_reads_them():
    assert keda.value_from_prometheus(answer("7"), query="q") == 7.0
    assert keda.value_from_prometheus(answer(), query="q", ignore_null_values=True) == 0.0
    with pytest.raises(keda.MetricError, match="the result is empty"):
        keda.value_from_prometheus(answer(), query="q", ignore_null_values=False)
    with pytest.raises(keda.MetricError, match="multiple elements"):
        keda.value_from_prometheus(answer("1", "2"), query="q")
    assert keda.value_from_prometheus(answer("NaN"), query="q", ignore_null_values=True) == 0.0
    with pytest.raises(keda.MetricError):
        keda.value_from_prometheus(answer("+Inf"), query="q", ignore_null_values=False)


def test_fallback_applies_only_after_more_failures_than_the_threshold_and_resets_on_success():
    so = scaled_object()
    [trigger] = keda.prometheus_triggers(so)
    threshold = int(so["spec"]["fallback"]["failureThreshold"])
    tracker = keda.FallbackTracker(so)
    for _ in range(threshold):
        assert tracker.observe(None, trigger, current_replicas=2) == (None, False)
    metric, applied = tracker.observe(None, trigger, current_replicas=2)
    assert applied and metric == float(trigger["metadata"]["threshold"]) * keda.fallback_replicas(so, 2)
    assert tracker.observe(3.0, trigger, current_replicas=2) == (3.0, False) and tracker.failures == 0


def test_fallback_behaviors():
    so = {"spec": {"fallback": {"failureThreshold": 3, "replicas": 2}}}
    cases = {"static": (5, 2), "currentReplicas": (5, 5), "currentReplicasIfHigher": (5, 5),
             "currentReplicasIfLower": (5, 2)}
    for behavior, (current, expected) in cases.items():
        so["spec"]["fallback"]["behavior"] = behavior
        assert keda.fallback_replicas(so, current) == expected, behavior
    so["spec"]["fallback"]["behavior"] = "currentReplicasIfHigher"
    assert keda.fallback_replicas(so, 1) == 2


def _relabel(cfg: dict, labels: dict) -> dict | None:
    """Prometheus' relabel semantics for the actions the operator emits (replace, keep, drop)."""
    labels = dict(labels)
    for r in cfg["relabel_configs"]:
        value = r.get("separator", ";").join(labels.get(s, "") for s in r.get("source_labels", []))
        regex = re.compile(f"^(?:{r.get('regex', '(.*)')})$")
        action = r.get("action", "replace")
        if action == "keep" and not regex.match(value):
            return None
        if action == "drop" and regex.match(value):
            return None
        if action == "replace":
            m = regex.match(value)
            if m:
                labels[r["target_label"]] = m.expand(r.get("replacement", "$1").replace("${1}", r"\1").replace("$1", r"\1"))
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def test_workload_podmonitor_scrapes_the_vllm_pod_with_the_labels_the_query_needs():
    s = llm_serve()
    [pod] = operators.all_pods([o for o in s.objects if o["kind"] == "Deployment"], s.ctx)
    monitor = next(o for o in s.platform_objects if o["kind"] == "PodMonitor"
                   and (o["spec"].get("selector") or {}).get("matchLabels", {}).get("trn-platform/scrape"))
    [cfg] = prometheus_operator.pod_monitor_scrape_configs(monitor, [pod], lambda name: "127.0.10.1")
    [target] = cfg["static_configs"]
    labels = _relabel(cfg, {**target["labels"], "__address__": target["targets"][0]})
    assert labels is not None
    assert labels["namespace"] == "ml-shared" and labels["pod"] == pod["metadata"]["name"]
    assert labels["job"] == f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
    query = keda.prometheus_triggers(scaled_object())[0]["metadata"]["query"]
    pattern = re.search(r'pod=~"([^"]+)"', query).group(1)
    assert re.fullmatch(pattern, labels["pod"])
    # the Ray PodMonitor's selector does not take it
    ray = next(o for o in s.platform_objects if o["kind"] == "PodMonitor" and o["metadata"]["name"] == "ray")
    for cfg in prometheus_operator.pod_monitor_scrape_configs(ray, [pod], lambda name: "127.0.10.1"):
        assert all(_relabel(cfg, {**t["labels"], "__address__": t["targets"][0]}) is None for t in cfg["static_configs"])
