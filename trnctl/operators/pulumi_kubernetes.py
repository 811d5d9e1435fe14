"""pulumi-kubernetes' await rules: which Kubernetes resources `pulumi up` waits for after creating
them, on what condition and for how long, and how the program changes that (annotations, customTimeouts).
Workload programs (workloads/common.py) set their waits from here and the cluster model
(trnctl/cluster/waits.py) checks them with the same rules: written once.

Source: pulumi/pulumi-kubernetes provider/pkg/ at the newest snapshot available here (commit 94977969d,
2026-07-01, after v4.32.0; the pinned provider is 4.34.2, requirements.txt, not tagged in that snapshot):
- await/await.go Creation/Update: `timeout := 10 * time.Minute` unless metadata.TimeoutDuration gives
  one: `customTimeouts.create` if set, else the `pulumi.com/timeoutSeconds` annotation
  (metadata/overrides.go TimeoutDuration);
- `pulumi.com/skipAwait: "true"` makes the resource ready at once (overrides.go SkipAwaitLogic);
- `pulumi.com/waitFor` replaces the built-in await with the given condition/jsonpath (overrides.go
  ReadyCondition);
- otherwise the built-in awaiters (await/awaiters.go): Deployment until the rollout is available
  (deployment.go: new ReplicaSet's pods ready), StatefulSet/DaemonSet the same, Job until `Complete`
  (job.go: fails on `Failed`), Pod until Ready, Service until it has endpoints, PVC until Bound, and
  nothing for kinds not listed (custom resources).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TIMEOUT_SECONDS = 600  # await.go: `timeout := 10 * time.Minute`; deployment.go/job.go DefaultXTimeoutMins = 10
SKIP_AWAIT = "pulumi.com/skipAwait"
TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"
WAIT_FOR = "pulumi.com/waitFor"
# Before a Deployment's first pod can start its probes: Karpenter launches an accelerator node
# and the kubelet pulls a 10-20 GB Neuron image. An allowance, not a measurement (no AWS here):
# 15 minutes covers an EC2 launch + join (minutes) and a pull at ~50 MB/s.
PROVISIONING_ALLOWANCE_SECONDS = 900
# Built-in kinds the provider awaits (awaiters.go); every other kind is ready at once.
AWAITED_KINDS = {("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"), ("batch/v1", "Job"),
                 ("v1", "Pod"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"), ("v1", "PersistentVolume")}


@dataclass(frozen=True)
class Await:
    what: str            # "rollout", "Job Complete", "condition=Succeeded", "none"
    timeout_seconds: int | None
    source: str          # where the timeout comes from


def await_of(obj: dict, options: dict | None = None) -> Await:
    """What `pulumi up` waits for after creating `obj`, per the provider's await code."""
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    if str(ann.get(SKIP_AWAIT, "")).lower() == "true":
        return Await("none", None, SKIP_AWAIT)
    timeouts = (options or {}).get("customTimeouts") or {}
    if timeouts.get("create"):
        timeout, source = parse_duration(timeouts["create"]), "customTimeouts.create"
    elif ann.get(TIMEOUT_ANNOTATION):
        timeout, source = int(ann[TIMEOUT_ANNOTATION]), TIMEOUT_ANNOTATION
    else:
        timeout, source = DEFAULT_TIMEOUT_SECONDS, "the provider's 10-minute default"
    if ann.get(WAIT_FOR):
        return Await(ann[WAIT_FOR], timeout, source)
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in AWAITED_KINDS:
        return Await("none", None, "no await for this kind")
    what = {"Deployment": "rollout", "StatefulSet": "rollout", "DaemonSet": "rollout", "Job": "Job Complete"}.get(key[1], "ready")
    return Await(what, timeout, source)


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration subset Pulumi's customTimeouts use ("90m", "1h30m", "45s")."""
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(h|m|s)", text):
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1}[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r}")
    return int(total)


def startup_budget_seconds(pod_spec: dict) -> int:
    """The longest a container may take to become ready before the kubelet gives up on it."""
    budget = 0
    for c in pod_spec.get("containers") or []:
        for probe_name in ("startupProbe", "readinessProbe"):
            probe = c.get(probe_name)
            if probe:
                budget = max(budget, int(probe.get("initialDelaySeconds", 0))
                             + int(probe.get("failureThreshold", 3)) * int(probe.get("periodSeconds", 10)))
                break  # readiness only counts after startup has passed
    return budget


def rollout_budget_seconds(template_spec: dict) -> int:
    """How long a Deployment's rollout may legitimately take: the provisioning allowance plus the
    containers' startup probe budget (what `pulumi.com/timeoutSeconds` should be at least)."""
    return PROVISIONING_ALLOWANCE_SECONDS + startup_budget_seconds(template_spec)
