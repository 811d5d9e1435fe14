"""The burn-in's decisions as pure functions: the taint list after a pass, the node
condition and Event, and whether a failed node may be replaced now (the per-pool bound)."""
from __future__ import annotations

from ..rate_bound import Decision, decide

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


def decide_replacement(history: dict[str, list[float]], *, pool: str, now: float, max_per_hour: int) -> Decision:
    """May a failed node of `pool` be replaced now? At most `max_per_hour` replacements per pool in
    any hour, so a bad batch of instances (or a wrong floor) cannot churn the fleet."""
    if max_per_hour <= 0:
        return Decision(False, {p: t for p, t in history.items()}, f"replacement is off for pool {pool} "
                        "(maxReplacementsPerHour 0); the node stays tainted")
    return decide(history, key=pool, now=now, limit=max_per_hour, window_seconds=WINDOW_SECONDS,
                  what=f"replacements of pool {pool}")


def nodeclaim_of(nodeclaims: list[dict], *, node_name: str, provider_id: str | None) -> dict | None:
    """The NodeClaim behind a node: `status.nodeName`, or the provider id both carry."""
    for claim in nodeclaims:
        status = claim.get("status") or {}
        if status.get("nodeName") == node_name or (provider_id and status.get("providerID") == provider_id):
            return claim
    return None


EFA_RESOURCE = "vpc.amazonaws.com/efa"


def efa_devices_expected(full: int, nodeclaim: dict | None) -> int:
    """EFA devices this node must show: Karpenter attaches the type's full EFA count only when the
    NodeClaim requests vpc.amazonaws.com/efa, none otherwise (aws/karpenter-provider-aws@v1.14.1
    pkg/providers/instance/instance.go getEFACountForInstance; our EC2NodeClasses set no
    networkInterfaces). A pod without EFA (a LoRA job on an EFA pool) gets a node without it."""
    requests = ((nodeclaim or {}).get("spec") or {}).get("resources", {}).get("requests") or {}
    return full if EFA_RESOURCE in requests else 0


def event(*, node_name: str, node_uid: str, reason: str, message: str, kind: str, now: str, namespace: str,
          component: str = "trn-platform-burn-in") -> dict:
    """A core/v1 Event about the node (kind Normal or Warning)."""
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{node_name}.burn-in.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid},
            "reason": reason, "message": message[:1024], "type": kind, "source": {"component": component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}
