"""The burn-in's decisions as pure functions: the taint list after a pass, the node
condition and Event, and whether a failed node may be replaced now (the per-pool bound)."""
from __future__ import annotations

import json
from dataclasses import dataclass

TAINT_KEY = "trn-platform/burn-in"  # infra/nodepools.py BURN_IN_TAINT (tests assert they agree)
CONDITION_TYPE = "BurnInPassed"
WINDOW_SECONDS = 3600


def taints_without_burn_in(taints: list[dict] | None) -> list[dict]:
    """The node's taints once burn-in passed: every other taint kept as it is."""
    return [t for t in taints or [] if t.get("key") != TAINT_KEY]


def has_burn_in_taint(taints: list[dict] | None) -> bool:
    return any(t.get("key") == TAINT_KEY for t in taints or [])


def condition(*, passed: bool, problems: list[str], now: str) -> dict:
    """The node condition (`kubectl describe node`); Karpenter's repair does not act on this type
    (karpenter-provider-aws v1.14.1 pkg/cloudprovider/cloudprovider.go RepairPolicies): replacing a
    failed node is the burn-in's own, rate-bounded decision."""
    return {"type": CONDITION_TYPE, "status": "True" if passed else "False",
            "reason": "BurnInPassed" if passed else "BurnInFailed",
            "message": "Neuron devices, EFA and a local all-reduce match the instance type" if passed
            else "; ".join(problems)[:1024],
            "lastHeartbeatTime": now, "lastTransitionTime": now}


@dataclass(frozen=True)
class Replacement:
    allowed: bool
    history: dict[str, list[float]]  # pool -> replacement times (epoch seconds) in the last hour
    reason: str


def decide_replacement(history: dict[str, list[float]], *, pool: str, now: float, max_per_hour: int) -> Replacement:
    """May a failed node of `pool` be replaced now? At most `max_per_hour` replacements per pool in
    any hour, so a bad batch of instances (or a wrong floor) cannot churn the fleet. The history
    returned keeps only the last hour and records this replacement when it is allowed."""
    recent = {p: [t for t in times if now - t < WINDOW_SECONDS] for p, times in history.items()}
    recent = {p: times for p, times in recent.items() if times}
    done = recent.get(pool, [])
    if max_per_hour <= 0:
        return Replacement(False, recent, f"replacement is off for pool {pool} (maxReplacementsPerHour 0); "
                                          "the node stays tainted")
    if len(done) >= max_per_hour:
        wait = WINDOW_SECONDS - (now - min(done))
        return Replacement(False, recent, f"pool {pool} replaced {len(done)} nodes in the last hour "
                                          f"(limit {max_per_hour}); next replacement possible in {wait:.0f}s")
    return Replacement(True, {**recent, pool: [*done, now]}, f"replacement {len(done) + 1} of {max_per_hour} "
                                                              f"this hour for pool {pool}")


def history_from_configmap(data: dict[str, str] | None) -> dict[str, list[float]]:
    """The ConfigMap's `data` ({pool: JSON list of epoch seconds}); unreadable entries count as none."""
    out: dict[str, list[float]] = {}
    for pool, raw in (data or {}).items():
        try:
            times = json.loads(raw)
            out[pool] = [float(t) for t in times]
        except (ValueError, TypeError):
            out[pool] = []
    return out


def history_to_configmap(history: dict[str, list[float]]) -> dict[str, str]:
    return {pool: json.dumps(times) for pool, times in sorted(history.items())}


def nodeclaim_of(nodeclaims: list[dict], *, node_name: str, provider_id: str | None) -> dict | None:
    """The NodeClaim behind a node: `status.nodeName`, or the provider id both carry."""
    for claim in nodeclaims:
        status = claim.get("status") or {}
        if status.get("nodeName") == node_name or (provider_id and status.get("providerID") == provider_id):
            return claim
    return None


def event(*, node_name: str, node_uid: str, reason: str, message: str, kind: str, now: str, namespace: str,
          component: str = "trn-platform-burn-in") -> dict:
    """A core/v1 Event about the node (kind Normal or Warning)."""
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{node_name}.burn-in.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid},
            "reason": reason, "message": message[:1024], "type": kind, "source": {"component": component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}
