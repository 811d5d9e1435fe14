"""The HorizontalPodAutoscaler controller's replica rule for an External metric with an
AverageValue target, the HPA that KEDA creates for a ScaledObject's trigger.

source: kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator.go
(GetExternalPerPodMetricReplicas, read at commit 00067268967ec95a40035bd666374a1caf48dd1a): the
metric's values are summed, `usageRatio = total / (target * currentReplicas)`; when
`|1 - usageRatio| > tolerance` the desired count is `ceil(total / target)`, else the current
count. The controller then clamps to min/max replicas (horizontal.go, normalizeDesiredReplicas*)
and applies the behavior's stabilization window and policies over time, which this rule does
not model: it is the count the HPA moves towards for a steady load.
"""
from __future__ import annotations

import math

# kube-controller-manager --horizontal-pod-autoscaler-tolerance default (0.1): kubernetes
# pkg/controller/podautoscaler/config/v1alpha1/defaults.go.
DEFAULT_TOLERANCE = 0.1


def external_average_value_replicas(total: float, target_per_replica: float, current_replicas: int, *,
                                    min_replicas: int, max_replicas: int,
                                    tolerance: float = DEFAULT_TOLERANCE) -> int:
    """Replicas the HPA chooses for an External AverageValue metric whose (summed) value is `total`."""
    if target_per_replica <= 0 or current_replicas < 1:
        raise ValueError("target_per_replica must be > 0 and current_replicas >= 1")
    desired = current_replicas
    if abs(1.0 - total / (target_per_replica * current_replicas)) > tolerance:
        desired = math.ceil(total / target_per_replica)
    return min(max(desired, min_replicas), max_replicas)
