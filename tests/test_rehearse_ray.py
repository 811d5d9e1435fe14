"""Rehearsal of a ray-pretrain RayJob's cluster (issue 20 defect 1): with the worker group's resources put back as
unquoted JSON, bash splits KubeRay's `ray start` command and both workers' `ray start` exit, and the rehearsal names
each worker pod and the step. (That the workers join the head with today's quoting is asserted on the data RayJob's
cluster in tests/test_rehearse_ray_pretrain.py: one cluster, not two.)"""
from __future__ import annotations

import copy
import json

import pytest

from tests.loopback import free_port
from trnctl.operators import kuberay
from trnctl.rehearse.runner import Rehearsal
from trnctl.rehearse.stack import load

pytestmark = pytest.mark.slow

STACK = "ray-pretrain-usw2"


@pytest.fixture(scope="module")
def stack():
    return load(STACK)


def data_step(stack) -> int:
    return next(i for i, step in enumerate(stack.steps) if any(o["kind"] == "RayJob" and o["metadata"]["name"].endswith("-data")
                                                              for o in step))


def with_cluster_change(stack, change):
    """A copy of the stack whose data RayJob's rayClusterSpec went through `change` (the head's GCS port moved
    off 6379 so the rehearsal never meets another Ray on this machine)."""
    out = copy.copy(stack)
    out.steps = copy.deepcopy(stack.steps)
    job = next(o for o in out.steps[data_step(stack)] if o["kind"] == "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    spec["headGroupSpec"]["rayStartParams"]["port"] = str(free_port())
    change(spec)
    return out, job


def run_cluster(stack, job):
    with Rehearsal(stack, step_timeout=150, s3=False) as r:
        return r.run_cluster(job, data_step(stack))


def test_unquoted_resources_crash_every_worker(stack):
    def unquote(spec):
        spec["workerGroupSpecs"][0]["rayStartParams"]["resources"] = json.dumps({"neuron_cores": 32})

    broken, job = with_cluster_change(stack, unquote)
    results = run_cluster(broken, job)
    workers = [p for p in results if "-worker-" in p.name]
    assert len(workers) == 2
    for p in workers:
        assert p.step == data_step(stack) and p.problem.startswith("container exited with"), p.line()
        assert "unexpected extra argument" in p.log_tail, p.log_tail
    assert kuberay.start_param_problems(job)
