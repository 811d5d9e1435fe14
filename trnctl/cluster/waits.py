"""Pulumi's waits: which Kubernetes resources pulumi-kubernetes awaits on create, on what
condition and for how long, against how long each step needs.

Provider behaviour (pulumi/pulumi-kubernetes provider/pkg/await/, read at the newest snapshot
available here, after v4.32.0; the pinned provider is 4.34.2 (requirements.txt), whose await code
could not be read offline, see the README table):
- await.go Creation: the timeout is `customTimeouts.create` if set, else the
  `pulumi.com/timeoutSeconds` annotation, else 10 minutes (metadata/overrides.go TimeoutDuration);
- `pulumi.com/skipAwait: "true"` makes the resource ready at once (overrides.go ReadyCondition);
- `pulumi.com/waitFor` replaces the built-in await with the given condition/jsonpath;
- otherwise the built-in awaiters (awaiters.go `awaiters`): Deployment until the rollout is
  available (deployment.go: new ReplicaSet's pods ready), StatefulSet/DaemonSet the same, Job until
  `Complete` (job.go: fails on `Failed`), Pod until Ready, Service until it has endpoints, PVC until
  Bound (unless WaitForFirstConsumer), and nothing for kinds not listed (custom resources).
How long a step needs: a Deployment's pods need node launch + image pull + the startup probe's budget
(initialDelaySeconds + failureThreshold x periodSeconds, the kubelet's bound before it kills the
container); a Job or a custom resource awaited to completion needs up to its activeDeadlineSeconds
(counted from the Job's start, pending time included: kubernetes/kubernetes@v1.34.0
pkg/controller/job/job_controller.go pastActiveDeadline).
"""
from __future__ import annotations

from dataclasses import dataclass

from trnctl.cluster import MANDATORY, Finding, Model, obj_id

RULE = "waits"
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
TERMINAL_WORDS = ("Succeeded", "Complete", "Completed", "Failed")


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
    import re
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


def deadline_seconds(obj: dict) -> int | None:
    spec = obj.get("spec") or {}
    for holder in (spec, spec.get("runPolicy") or {}):
        if holder.get("activeDeadlineSeconds") is not None:
            return int(holder["activeDeadlineSeconds"])
    return None


def needed_seconds(obj: dict) -> tuple[int | None, str]:
    """(seconds the awaited step may legitimately take, why), None when unbounded."""
    kind = obj.get("kind")
    aw = await_of(obj)
    if kind in ("Deployment", "StatefulSet"):
        template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        probe = startup_budget_seconds(template)
        return rollout_budget_seconds(template), (f"node launch and image pull ({PROVISIONING_ALLOWANCE_SECONDS}s allowance) "
                                                        f"+ the startup probe's budget ({probe}s)")
    if aw.what == "Job Complete" or any(w in aw.what for w in TERMINAL_WORDS):
        deadline = deadline_seconds(obj)
        return deadline, f"its activeDeadlineSeconds ({deadline}s)" if deadline else "no activeDeadlineSeconds (unbounded)"
    return None, ""


def check(model: Model) -> list[Finding]:
    findings = []
    options_by_object = _options_by_object(model)
    for obj in model.objects:
        aw = await_of(obj, options_by_object.get(obj_id(obj)))
        if aw.timeout_seconds is None:
            continue
        need, why = needed_seconds(obj)
        terminal = aw.what == "Job Complete" or any(w in aw.what for w in TERMINAL_WORDS)
        if need is None and terminal:
            # Whatever the timeout, a step that may run for ever under a bounded wait fails the update while it
            # still legitimately runs, and nothing stops it: every stack sets a deadline, so this is mandatory.
            findings.append(Finding(f"{RULE}/unbounded", MANDATORY, (obj_id(obj),),
                                    f"`pulumi up` waits for {aw.what} up to {aw.timeout_seconds}s ({aw.source}) but the step has "
                                    f"{why}; fix: set activeDeadlineSeconds, or annotate {SKIP_AWAIT}: 'true' when nothing "
                                    f"depends on its completion"))
        elif need is not None and need > aw.timeout_seconds:
            findings.append(Finding(f"{RULE}/too-short", MANDATORY, (obj_id(obj),),
                                    f"`pulumi up` waits for {aw.what} only {aw.timeout_seconds}s ({aw.source}) but the step may "
                                    f"need {need}s: {why}; the update fails and what depends on it is not created; fix: "
                                    f"annotate {TIMEOUT_ANNOTATION}: '{need}' (workloads/common.py await_timeout) or set "
                                    f"customTimeouts.create"))
    return findings


def _options_by_object(model: Model) -> dict[str, dict]:
    """Resource options from resources.json rows, keyed like obj_id of the object they registered."""
    out = {}
    for render in model.renders:
        for rec in render.records:
            inputs = rec.get("inputs") or {}
            if rec.get("options") and isinstance(inputs.get("metadata"), dict) and inputs.get("kind"):
                out[obj_id(inputs)] = rec["options"]
    return out
