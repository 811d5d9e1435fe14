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
