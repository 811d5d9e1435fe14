"""KEDA (kedacore/keda@v2.20.2, the version infra/versions.py pins): what it makes of a ScaledObject with a
Prometheus trigger. KEDA creates no pods; it feeds an HPA an external metric:

- the trigger's value: the PromQL `query` run against `serverAddress` + `/api/v1/query`, read as a single
  element (`value_from_prometheus`; source: pkg/scalers/prometheus_scaler.go ExecutePromQuery);
- active when the value exceeds `activationThreshold` (GetMetricsAndActivity);
- when the query fails: each failure counts; once the count exceeds `fallback.failureThreshold`, the metric
  is the fallback's (`fallback_metric`; source: pkg/fallback/fallback.go GetMetricsWithFallback, doFallback);
  a success resets the count to 0.
The HPA's own arithmetic on that metric is not here (Kubernetes' HPA controller, not KEDA).
"""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass

from trnctl.operators import Context

KINDS = frozenset({("keda.sh/v1alpha1", "ScaledObject")})

# source: kedacore/keda@v2.20.2:pkg/scalers/prometheus_scaler.go (prometheusMetadata: ignoreNullValues default=true)
IGNORE_NULL_VALUES_DEFAULT = True
QUERY_PATH = "/api/v1/query"  # ExecutePromQuery: fmt.Sprintf("%s/api/v1/query?query=%s&time=%s", ...)


class MetricError(RuntimeError):
    """The scaler's query failed (an error KEDA counts towards the fallback)."""


def pods(obj: dict, ctx: Context) -> list[dict]:
    return []  # KEDA creates an HPA (keda-hpa-<name>), never pods


def services(obj: dict, ctx: Context) -> list[dict]:
    return []


def prometheus_triggers(scaled_object: dict) -> list[dict]:
    return [t for t in scaled_object["spec"].get("triggers") or [] if t.get("type") == "prometheus"]


def _bool(value, default: bool) -> bool:
    if value is None:
        return default
    return str(value).strip().lower() == "true"


def value_from_prometheus(body: dict, *, query: str, ignore_null_values: bool = IGNORE_NULL_VALUES_DEFAULT) -> float:
    """The scaler's reading of a /api/v1/query answer: empty result -> 0 with ignoreNullValues (else an
    error); more than one element -> error; NaN/Inf -> 0 with ignoreNullValues (else an error)."""
    import math
    result = (body.get("data") or {}).get("result") or []
    if not result:
        if ignore_null_values:
            return 0.0
        raise MetricError("prometheus metrics 'prometheus' target may be lost, the result is empty")
    if len(result) > 1:
        raise MetricError(f"prometheus query {query} returned multiple elements")
    value = result[0].get("value") or []
    if not value:
        if ignore_null_values:
            return 0.0
        raise MetricError("prometheus metrics 'prometheus' target may be lost, the value list is empty")
    if len(value) < 2:
        raise MetricError(f"prometheus query {query} didn't return enough values")
    v = float(value[1])
    if math.isinf(v) or math.isnan(v):
        if ignore_null_values:
            return 0.0
        raise MetricError(f"prometheus query returns {v}")
    return v


def execute_prom_query(server_address: str, trigger: dict, timeout: float = 5.0) -> float:
    """Run a trigger's query as the scaler does (HTTP GET; a status outside 2xx is an error)."""
    meta = trigger["metadata"]
    url = f"{server_address.rstrip('/')}{QUERY_PATH}?{urllib.parse.urlencode({'query': meta['query']})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if not 200 <= r.status <= 299:
                raise MetricError(f"prometheus query api returned error. status: {r.status}")
            body = json.loads(r.read())
    except (OSError, ValueError) as exc:
        raise MetricError(str(exc)) from None
    return value_from_prometheus(body, query=meta["query"],
                                 ignore_null_values=_bool(meta.get("ignoreNullValues"), IGNORE_NULL_VALUES_DEFAULT))


def is_active(value: float, trigger: dict) -> bool:
    return value > float(trigger["metadata"].get("activationThreshold", 0))


@dataclass
class FallbackTracker:
    """The ScaledObject's status.health[metric].numberOfFailures and what GetMetricsWithFallback returns."""
    scaled_object: dict
    failures: int = 0

    def _fallback(self) -> dict | None:
        fb = self.scaled_object["spec"].get("fallback")
        if fb is None or int(fb.get("failureThreshold", -1)) < 0 or int(fb.get("replicas", -1)) < 0:
            return None  # HasValidFallback
        return fb

    def observe(self, value: float | None, trigger: dict, current_replicas: int) -> tuple[float | None, bool]:
        """(metric for the HPA or None = error passed on, fallback applied) after one poll whose query gave
        `value` (None = the query failed)."""
        fb = self._fallback()
        if value is not None:
            self.failures = 0
            return value, False
        if fb is None:
            return None, False
        self.failures += 1
        if self.failures > int(fb["failureThreshold"]):
            return fallback_metric(self.scaled_object, trigger, current_replicas), True
        return None, False


def fallback_replicas(scaled_object: dict, current_replicas: int) -> int:
    """doFallback's replica count for the behaviors our stacks use."""
    fb = scaled_object["spec"]["fallback"]
    replicas, behavior = int(fb["replicas"]), fb.get("behavior", "static")
    if behavior == "currentReplicas":
        return current_replicas
    if behavior == "currentReplicasIfHigher":
        return max(current_replicas, replicas)
    if behavior == "currentReplicasIfLower":
        return min(current_replicas, replicas)
    return replicas


def fallback_metric(scaled_object: dict, trigger: dict, current_replicas: int) -> float:
    """normalisationValue (the trigger's AverageValue target = its `threshold`) x fallback replicas; a Value
    metric type divides by the ready replicas (not used by our stacks: refused here)."""
    if trigger.get("metricType", "AverageValue") != "AverageValue":
        raise MetricError("fallback for metricType Value needs the ready replica count (not modelled)")
    return float(trigger["metadata"]["threshold"]) * fallback_replicas(scaled_object, current_replicas)
