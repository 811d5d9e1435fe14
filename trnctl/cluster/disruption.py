"""Disruption: what Karpenter may do to running pods, and what stops it forever.

- A PodDisruptionBudget that allows no disruption at the configured replicas blocks every
  eviction of its pods: Karpenter's drift, consolidation and node repair then never finish on
  their nodes (kubernetes-sigs/karpenter@v1.14.1 pkg/controllers/node/termination/terminator/
  eviction.go: evictions refused by a PDB are retried forever; docs concepts/disruption.md,
  "Pod-Level Controls": a PDB that blocks eviction blocks voluntary disruption). Allowed disruptions
  = replicas - minAvailable, or maxUnavailable (percentages round up for maxUnavailable, up for
  minAvailable: kubernetes/kubernetes@v1.34.0 pkg/controller/disruption/disruption.go getExpectedScale
  and intstr.GetScaledValueFromIntOrPercent). Under an autoscaler the low point is its minimum.
- Training pods of a running gang carry `karpenter.sh/do-not-disrupt: "true"` (docs
  concepts/disruption.md, "Pod-Level Controls": the node is not voluntarily disrupted while such a
  pod runs), so consolidation, drift and budgets cannot evict one rank and kill the whole job.
- `expireAfter` is forceful in Karpenter v1: an expired node is drained at once, without budgets
  (aws/karpenter-provider-aws@v1.14 website/content/en/v1.14/concepts/disruption.md, "Automated
  Forceful Methods: Expiration"). Pods with do-not-disrupt block that drain indefinitely unless the
  pool sets `terminationGracePeriod`, after which they are deleted (same page, the warning under
  Expiration, and "TerminationGracePeriod"). So a training pod on a pool that expires nodes survives
  only with do-not-disrupt and no terminationGracePeriod shorter than its job's deadline ("Never"
  needs neither).
"""
from __future__ import annotations

import math
import re

from trnctl.operators import OWNER_ANNOTATION as OWNER
from trnctl.cluster import MANDATORY, Finding, Model, labels_of, match_selector, obj_id

RULE = "disruption"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
TRAINING_KINDS = {"Job", "MPIJob", "RayJob", "RayCluster", "PyTorchJob"}  # a Volcano Job is kind Job too


def _scaled(value, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        x = int(value[:-1]) * total / 100
        return math.ceil(x) if round_up else math.floor(x)
    return int(value)


def allowed_disruptions(pdb: dict, replicas: int) -> int:
    spec = pdb.get("spec") or {}
    if spec.get("maxUnavailable") is not None:
        return max(0, _scaled(spec["maxUnavailable"], replicas, round_up=True))
    if spec.get("minAvailable") is not None:
        return max(0, replicas - _scaled(spec["minAvailable"], replicas, round_up=True))
    return replicas  # neither: no constraint


def _low_replicas(model: Model, workload: dict) -> int:
    """The fewest replicas the controller runs: the autoscaler's minimum when one targets it."""
    name, ns = workload["metadata"]["name"], workload["metadata"].get("namespace")
    replicas = int((workload.get("spec") or {}).get("replicas", 1))
    for scaler in model.of_kind("HorizontalPodAutoscaler", "ScaledObject"):
        spec = scaler.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        if scaler["metadata"].get("namespace") == ns and ref.get("name") == name:
            replicas = int(spec.get("minReplicas", spec.get("minReplicaCount", 1 if scaler["kind"] == "HorizontalPodAutoscaler" else 0)))
    return replicas


def pdb_findings(model: Model) -> list[Finding]:
    findings = []
    for pdb in model.of_kind("PodDisruptionBudget"):
        ns = pdb["metadata"].get("namespace")
        selector = (pdb.get("spec") or {}).get("selector")
        for wl in model.of_kind("Deployment", "StatefulSet"):
            tmpl_labels = labels_of((wl.get("spec") or {}).get("template") or {})
            if wl["metadata"].get("namespace") != ns or not match_selector(selector, tmpl_labels):
                continue
            replicas = _low_replicas(model, wl)
            if allowed_disruptions(pdb, replicas) == 0:
                findings.append(Finding(f"{RULE}/pdb-blocks", MANDATORY, (obj_id(pdb), obj_id(wl)),
                                        f"{obj_id(pdb)} allows no disruption at {replicas} replica(s) of {obj_id(wl)}: "
                                        f"Karpenter drift, consolidation and node repair wait on its node forever; fix: "
                                        f"maxUnavailable: 1 (or run at least minAvailable + 1 replicas)"))
    return findings


def _owner_object(model: Model, pod: dict) -> dict | None:
    owner = (pod["metadata"].get("annotations") or {}).get(OWNER, "")
    kind, _, name = owner.partition("/")
    ns = pod["metadata"].get("namespace")
    return next((o for o in model.objects if o.get("kind") == kind and o["metadata"].get("name") == name
                 and o["metadata"].get("namespace") == ns), None)


def _is_training(pod: dict, owner: dict | None) -> bool:
    """A pod of a batch gang that uses accelerators (launchers and CPU data jobs excluded)."""
    from trnctl.cluster.scheduling import pod_requests
    return bool(owner and owner.get("kind") in TRAINING_KINDS and pod_requests(pod).get("aws.amazon.com/neuron"))


def parse_go_duration(text: str) -> float | None:
    """Karpenter durations ("720h", "30m", "Never"); None for Never."""
    if text == "Never":
        return None
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(h|m|s)", text):
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1}[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


def training_findings(model: Model) -> list[Finding]:
    from trnctl.cluster.scheduling import candidate_pools
    from trnctl.cluster.waits import deadline_seconds
    findings = []
    seen: set[tuple[str, str]] = set()
    for pod in model.pods:
        owner = _owner_object(model, pod)
        if not _is_training(pod, owner):
            continue
        owner_id = obj_id(owner)
        ann = (pod["metadata"].get("annotations") or {})
        if str(ann.get(DO_NOT_DISRUPT)) != "true" and (owner_id, "dnd") not in seen:
            seen.add((owner_id, "dnd"))
            findings.append(Finding(f"{RULE}/do-not-disrupt", MANDATORY, (owner_id, obj_id(pod)),
                                    f"training pods of {owner_id} lack the {DO_NOT_DISRUPT}: 'true' annotation: "
                                    f"consolidation or drift may evict one rank and fail the whole gang; fix: annotate the "
                                    f"pod template (workloads/common.py TRAINING_POD_ANNOTATIONS)"))
        deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds") or deadline_seconds(owner)
        protected = str(ann.get(DO_NOT_DISRUPT)) == "true"
        for pool in candidate_pools(model, pod):
            template = ((pool.obj.get("spec") or {}).get("template") or {}).get("spec") or {}
            expire = str(template.get("expireAfter", "720h"))  # the CRD default
            seconds = parse_go_duration(expire)
            if seconds is None or (owner_id, pool.name) in seen:
                continue
            tgp = template.get("terminationGracePeriod")
            tgp_seconds = parse_go_duration(str(tgp)) if tgp else None
            if protected and (tgp_seconds is None or (deadline is not None and int(deadline) <= tgp_seconds)):
                continue  # the expired node's drain waits for the pod (the docs' warning: it blocks indefinitely)
            seen.add((owner_id, pool.name))
            longest = f"its deadline {deadline}s" if deadline else "no deadline"
            why = (f"its terminationGracePeriod {tgp} deletes do-not-disrupt pods before {owner_id} may end ({longest})"
                   if protected else f"the pods of {owner_id} lack {DO_NOT_DISRUPT}, so the drain evicts them")
            findings.append(Finding(f"{RULE}/expire-after", MANDATORY, (owner_id, obj_id(pool.obj)),
                                    f"NodePool {pool.name} expires nodes after {expire} and expiration drains them "
                                    f"forcefully; {why}; fix: expireAfter: Never on pools that run training, or "
                                    f"do-not-disrupt without a shorter terminationGracePeriod"))
    return findings


def check(model: Model) -> list[Finding]:
    return pdb_findings(model) + training_findings(model)
