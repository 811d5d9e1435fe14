"""Disruption (trnctl/cluster/disruption.py): PDBs, do-not-disrupt on gang pods, expireAfter."""
from __future__ import annotations

import pytest

from tests.cluster_helpers import edit, mandatory, model, rules
from trnctl.cluster import disruption


@pytest.fixture(scope="module")
def today():
    return model("dev-usw2", "ray-pretrain-usw2", "nemo-pretrain-usw2", "llm-serve-usw2", "lora-finetune-usw2")


def test_allowed_disruptions_follow_the_disruption_controller():
    pdb = lambda **spec: {"spec": spec}  # noqa: E731
    assert disruption.allowed_disruptions(pdb(maxUnavailable=1), 1) == 1
    assert disruption.allowed_disruptions(pdb(minAvailable=1), 1) == 0
    assert disruption.allowed_disruptions(pdb(minAvailable="50%"), 3) == 1   # ceil(1.5) = 2 must stay
    assert disruption.allowed_disruptions(pdb(maxUnavailable="10%"), 3) == 1  # rounds up
    assert disruption.allowed_disruptions(pdb(maxUnavailable=0), 5) == 0


def test_todays_stacks_leave_karpenter_room_and_protect_running_gangs(today):
    assert mandatory(disruption.check(today)) == []
    workers = [p for p in today.pods if "nemo-pretrain-usw2-train-worker" in p["metadata"]["name"]]
    assert workers and all(p["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true" for p in workers)


def test_a_pdb_that_allows_no_disruption_at_the_configured_replicas_is_reported(today):
    def min_one(pdb):
        pdb["spec"].pop("maxUnavailable")
        pdb["spec"]["minAvailable"] = 1
    found = rules(disruption.check(edit(today, "PodDisruptionBudget ml-shared/llm-serve-usw2", min_one)),
                  "disruption/pdb-blocks")
    assert len(found) == 1 and "at 1 replica(s)" in found[0].message


def test_gang_pods_without_do_not_disrupt_are_reported(today):
    def drop(job):
        job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["metadata"].pop("annotations")
    found = rules(disruption.check(edit(today, "MPIJob ml-shared/nemo-pretrain-usw2-train", drop)), "disruption/do-not-disrupt")
    assert [f.objects[0] for f in found] == ["MPIJob ml-shared/nemo-pretrain-usw2-train"]


def test_expiring_nodes_with_a_grace_period_shorter_than_the_longest_job_is_reported(today):
    def expire(after, grace=None):
        def change(pool):
            pool["spec"]["template"]["spec"]["expireAfter"] = after
            if grace:
                pool["spec"]["template"]["spec"]["terminationGracePeriod"] = grace
        return edit(today, "NodePool trn1-efa", change)

    # do-not-disrupt pods hold an expired node's drain until they end (no terminationGracePeriod): no finding
    assert rules(disruption.check(expire("720h")), "disruption/expire-after") == []
    # a 48h grace period deletes them: the week-long NeMo runs and RayJobs (604800s deadlines) are cut short
    owners = sorted(f.objects[0] for f in rules(disruption.check(expire("720h", "48h")), "disruption/expire-after"))
    assert "MPIJob ml-shared/nemo-pretrain-usw2-train" in owners and "RayJob ml-shared/ray-pretrain-usw2-train" in owners
    # a grace period beyond the week-long deadlines lets both finish
    owners = sorted(f.objects[0] for f in rules(disruption.check(expire("720h", "200h")), "disruption/expire-after"))
    assert "MPIJob ml-shared/nemo-pretrain-usw2-train" not in owners and "RayJob ml-shared/ray-pretrain-usw2-train" not in owners
    # ... unless a RayJob has no activeDeadlineSeconds: no grace period is long enough
    no_deadline = edit(expire("720h", "200h"), "RayJob ml-shared/ray-pretrain-usw2-train",
                       lambda job: job["spec"].pop("activeDeadlineSeconds"))
    owners = sorted(f.objects[0] for f in rules(disruption.check(no_deadline), "disruption/expire-after"))
    assert "RayJob ml-shared/ray-pretrain-usw2-train" in owners


def test_expiring_nodes_evict_gang_pods_without_do_not_disrupt(today):
    def drop(job):
        job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["metadata"].pop("annotations")
    m = edit(edit(today, "NodePool trn1-efa", lambda p: p["spec"]["template"]["spec"].update(expireAfter="720h")),
             "MPIJob ml-shared/nemo-pretrain-usw2-train", drop)
    found = rules(disruption.check(m), "disruption/expire-after")
    assert [f.objects[0] for f in found] == ["MPIJob ml-shared/nemo-pretrain-usw2-train"]
    assert "lack karpenter.sh/do-not-disrupt" in found[0].message
