"""Pulumi's waits: which Kubernetes resources pulumi-kubernetes awaits on create, on what
condition and for how long, against how long each step needs.

The provider's await rules (what is awaited, on what, for how long) are trnctl/operators/pulumi_kubernetes.py,
the module the workload programs set their waits from.
How long a step needs: a Deployment's pods need node launch + image pull + the startup probe's budget
(initialDelaySeconds + failureThreshold x periodSeconds, the kubelet's bound before it kills the
container); a Job or a custom resource awaited to completion needs up to its activeDeadlineSeconds
(counted from the Job's start, pending time included: kubernetes/kubernetes@v1.34.0
pkg/controller/job/job_controller.go pastActiveDeadline).
"""
from __future__ import annotations

from trnctl.cluster import MANDATORY, Finding, Model, obj_id
from trnctl.operators.pulumi_kubernetes import (  # noqa: F401  (re-exported: the rule family's vocabulary)
    AWAITED_KINDS, DEFAULT_TIMEOUT_SECONDS, PROVISIONING_ALLOWANCE_SECONDS, SKIP_AWAIT, TIMEOUT_ANNOTATION, WAIT_FOR, Await,
    await_of, parse_duration, rollout_budget_seconds, startup_budget_seconds)

RULE = "waits"
TERMINAL_WORDS = ("Succeeded", "Complete", "Completed", "Failed")


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
