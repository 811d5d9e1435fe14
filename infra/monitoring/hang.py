"""Hang detection for training gangs: the `TrainingGangHung` alert (pure) and the watchdog
that acts on it (specs pure, code in images/trn_workloads/watchdog.py).

None of the three operators notices a job whose ranks stopped making steps but did not exit
(a hung collective, a dead EFA link): Volcano job policies react to pod events, the MPIJob
launcher and Ray Train to processes that end. So the platform watches the step counter
`trn_training_steps_total` (served by TorchTitan's rank 0, and for Ray Train and NxD Training
by the progress sidecar, workloads/progress.py) and, once the alert fires, deletes the one pod
of the gang labelled `trn-platform/gang-restart`; the operator then restarts the whole gang,
which resumes from its newest checkpoint (how each operator does it: workloads/progress.py).

The alert fires only for a counter that has made its first step (> 0) and whose series existed
`trainingHangAfter` ago: a freshly (re)started attempt, which loads its checkpoint and compiles
first, gets the whole window before it counts as hung. `TrainingJobStalled` (rules.py) is the
notice for people; this one drives the restart, with a shorter default window.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.agent_code import CODE_ROOT, code_configmap, resource_args
from infra.config import MonitoringConfig
from infra.monitoring.rules import Alert

ALERT = "TrainingGangHung"
STEPS = "trn_training_steps_total"
JOB_LABELS = ("namespace", "workload", "stack")
RESTART_WINDOW_SECONDS = 24 * 3600  # trainingHangRestarts counts restarts per job in this window


def hung_expression(after: str) -> str:
    by = ", ".join(JOB_LABELS)
    return (f"max by ({by}) (({STEPS} > 0) unless (increase({STEPS}[{after}]) > 0)"
            f" and ({STEPS} offset {after}))")


def alert(cfg: MonitoringConfig) -> Alert:
    restarts = cfg.training_hang_restarts
    action = (f"The trn-training-watchdog deletes the gang's `trn-platform/gang-restart` pod so its operator restarts "
              f"every rank from the newest checkpoint (at most {restarts} times a day per job; its log says which "
              "pod). If the alert comes back after that, look at rank 0's logs and the Neuron dashboard: a dead EFA "
              "link, a device error (the node's NeuronHealth / AcceleratedHardwareReady conditions), a full /shared."
              if restarts else
              "Restarts are off (monitoring.trainingHangRestarts 0): delete the gang's `trn-platform/gang-restart` "
              "pod to restart it from the newest checkpoint, after looking at rank 0's logs.")
    return Alert(
        ALERT, hung_expression(cfg.training_hang_after), "2m", "critical",
        "Training {{ $labels.workload }} ({{ $labels.stack }}) hung at step {{ $value }}",
        f"The job made steps and then none for {cfg.training_hang_after}; its pods still run and hold their "
        "accelerators.", action)


def rule_group(cfg: MonitoringConfig) -> dict:
    return {"name": "trn-platform.training-hang", "rules": [alert(cfg).rule()]}


# --------------------------------------------------------------------------- the watchdog

WATCHDOG = "trn-training-watchdog"
WATCHDOG_LABELS = {"app": WATCHDOG, "app.kubernetes.io/name": WATCHDOG, "app.kubernetes.io/part-of": "trn-platform"}
WATCHDOG_STATE = f"{WATCHDOG}-restarts"
WATCHDOG_CODE = f"{WATCHDOG}-code"


def duration_seconds(value: str) -> int:
    """A Prometheus duration of one unit (config.py checks the form): 20m -> 1200."""
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]


def watchdog_rbac(*, namespace: str, workload_namespace: str) -> list[dict]:
    """Exactly what images/trn_workloads/watchdog.py calls: pods list/delete where the workloads run,
    get/update of its one state ConfigMap (tests/test_burnin.py pins the calls against these)."""
    rbac_api, ref = "rbac.authorization.k8s.io/v1", {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role"}
    sa = {"kind": "ServiceAccount", "name": WATCHDOG, "namespace": namespace}

    def meta(ns: str) -> dict:
        return {"name": WATCHDOG, "namespace": ns, "labels": dict(WATCHDOG_LABELS)}

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(namespace)},
        {"apiVersion": rbac_api, "kind": "Role", "metadata": meta(workload_namespace),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}]},
        {"apiVersion": rbac_api, "kind": "RoleBinding", "metadata": meta(workload_namespace),
         "roleRef": {**ref, "name": WATCHDOG}, "subjects": [sa]},
        {"apiVersion": rbac_api, "kind": "Role", "metadata": meta(namespace),
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [WATCHDOG_STATE],
                    "verbs": ["get", "update"]}]},
        {"apiVersion": rbac_api, "kind": "RoleBinding", "metadata": meta(namespace),
         "roleRef": {**ref, "name": WATCHDOG}, "subjects": [sa]},
    ]


def watchdog_code(namespace: str) -> tuple[dict, list[dict]]:
    return code_configmap(WATCHDOG_CODE, namespace=namespace, labels=WATCHDOG_LABELS,
                          modules=["trn_workloads/watchdog.py"])


def watchdog_deployment(cfg: MonitoringConfig, *, image: str, prometheus_url: str, on_system_nodes: dict) -> dict:
    env = {"PROMETHEUS_URL": prometheus_url, "STATE_CONFIGMAP": WATCHDOG_STATE,
           "MAX_RESTARTS": str(cfg.training_hang_restarts), "WINDOW_SECONDS": str(RESTART_WINDOW_SECONDS),
           # a restarted gang gets a full window (plus the alert's `for`) before it can be restarted again
           "COOLDOWN_SECONDS": str(duration_seconds(cfg.training_hang_after) + 300),
           "PYTHONPATH": CODE_ROOT, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    container = {
        "name": "watchdog", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "trn_workloads.watchdog"],
        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                *({"name": k, "value": v} for k, v in env.items())],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                            "runAsUser": 65534, "runAsGroup": 65534, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "code", "mountPath": CODE_ROOT, "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": WATCHDOG, "namespace": cfg.namespace, "labels": dict(WATCHDOG_LABELS),
                     "annotations": {"checkov.io/skip1": "CKV_K8S_38=the watchdog lists and deletes pods through the "
                                                         "Kubernetes API with its service account token",
                                     # the rollout may wait for a system node and an image pull (trnctl/cluster/waits.py)
                                     "pulumi.com/timeoutSeconds": "900"}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two watchdogs deciding at once
            "selector": {"matchLabels": {"app": WATCHDOG}},
            "template": {"metadata": {"labels": dict(WATCHDOG_LABELS)}, "spec": {
                "serviceAccountName": WATCHDOG, **on_system_nodes,
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "code", "configMap": {"name": WATCHDOG_CODE,
                                                           "items": watchdog_code(cfg.namespace)[1]}}]}},
        },
    }


def watchdog_manifests(cfg: MonitoringConfig, *, image: str, prometheus_url: str, workload_namespace: str,
                       on_system_nodes: dict) -> list[dict]:
    """Nothing when restarts are off (monitoring.trainingHangRestarts 0): the alert alone remains."""
    if not cfg.training_hang_restarts:
        return []
    state = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": WATCHDOG_STATE, "namespace": cfg.namespace, "labels": dict(WATCHDOG_LABELS)},
             "data": {}}
    return [*watchdog_rbac(namespace=cfg.namespace, workload_namespace=workload_namespace),
            watchdog_code(cfg.namespace)[0], state,
            watchdog_deployment(cfg, image=image, prometheus_url=prometheus_url, on_system_nodes=on_system_nodes)]


@dataclass
class HangWatchdogArgs:
    config: MonitoringConfig
    image: str
    prometheus_url: str
    workload_namespace: str
    on_system_nodes: dict
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]  # the monitoring namespace and the workload namespace


_KINDS = {"ServiceAccount": k8s.core.v1.ServiceAccount, "ConfigMap": k8s.core.v1.ConfigMap,
          "Role": k8s.rbac.v1.Role, "RoleBinding": k8s.rbac.v1.RoleBinding, "Deployment": k8s.apps.v1.Deployment}


class HangWatchdog(pulumi.ComponentResource):
    def __init__(self, name: str, args: HangWatchdogArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:HangWatchdog", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        for m in watchdog_manifests(args.config, image=args.image, prometheus_url=args.prometheus_url,
                                    workload_namespace=args.workload_namespace, on_system_nodes=args.on_system_nodes):
            meta = m["metadata"]
            _KINDS[m["kind"]](f"{name}-{m['kind'].lower()}-{meta['namespace']}-{meta['name']}", **resource_args(m),
                              opts=k8s_opts)
        self.register_outputs({})
