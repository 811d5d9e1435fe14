"""What Karpenter (karpenter-provider-aws v1.14.1, infra/versions.py KARPENTER_VERSION) and EC2 do to
nodes launched into a Capacity Block for ML as the block's end approaches. Preflight prints these
times; nothing else restates them.
"""
from __future__ import annotations

from datetime import datetime, timedelta

# Karpenter marks a Capacity Block "expiring" 40 minutes before its end, whatever the instance type,
# stops launching into it and deletes the NodeClaims launched into it (drain, then terminate).
# source: aws/karpenter-provider-aws@v1.14.1:pkg/apis/v1/ec2nodeclass_status.go
#   (CapacityReservationFromEC2: capacityReservationExpirationPeriod = time.Minute * 40)
# source: aws/karpenter-provider-aws@v1.14.1:pkg/controllers/capacityreservation/expiration/controller.go
#   ("terminated 40 minutes before the capacity-block's end time, 10 minutes before EC2 begins reclaiming")
KARPENTER_BLOCK_DRAIN_BEFORE_END = timedelta(minutes=40)

# EC2 terminates the instances of a Capacity Block from 30 minutes before its end, 60 for UltraServer
# types (the EC2 user guide as quoted in aws/karpenter-provider-aws@v1.14.1:
# website/content/en/docs/tasks/odcrs.md, "Capacity Blocks").
EC2_BLOCK_RECLAIM_BEFORE_END = timedelta(minutes=30)
EC2_ULTRASERVER_BLOCK_RECLAIM_BEFORE_END = timedelta(minutes=60)

# The time Karpenter's drain leaves a pod before EC2 reclaims an ordinary instance (40 - 30 min). On
# UltraServer types EC2 reclaims 20 minutes *before* Karpenter drains, so a run there must stop itself
# with the same margin before EC2's reclaim: end - 60 - 10 = end - 70 minutes.
DRAIN_MARGIN = KARPENTER_BLOCK_DRAIN_BEFORE_END - EC2_BLOCK_RECLAIM_BEFORE_END


def ec2_reclaim_time(end: datetime, ultraserver: bool) -> datetime:
    """When EC2 starts terminating the block's instances."""
    return end - (EC2_ULTRASERVER_BLOCK_RECLAIM_BEFORE_END if ultraserver else EC2_BLOCK_RECLAIM_BEFORE_END)


def drain_time(end: datetime) -> datetime:
    """When Karpenter starts deleting the block's nodes (every instance type alike)."""
    return end - KARPENTER_BLOCK_DRAIN_BEFORE_END


def stop_by_time(end: datetime, ultraserver: bool) -> datetime:
    """When runs on the block must have checkpointed and stopped: Karpenter's drain for ordinary
    types (it precedes EC2's reclaim by DRAIN_MARGIN); DRAIN_MARGIN before EC2's reclaim for
    UltraServer types, which EC2 reclaims before Karpenter drains them."""
    if ultraserver:
        return ec2_reclaim_time(end, True) - DRAIN_MARGIN
    return drain_time(end)


def drain_precedes_reclaim(ultraserver: bool) -> bool:
    """Whether Karpenter's drain comes before EC2's reclaim (False on UltraServer types)."""
    return KARPENTER_BLOCK_DRAIN_BEFORE_END > (EC2_ULTRASERVER_BLOCK_RECLAIM_BEFORE_END if ultraserver
                                               else EC2_BLOCK_RECLAIM_BEFORE_END)
