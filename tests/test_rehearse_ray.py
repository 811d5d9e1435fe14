"""Rehearsal of a ray-pretrain RayJob's cluster (issue 20 defect 1): the head and two workers run the `ray start`
commands KubeRay builds through their pods' `/bin/bash -c` with the real `ray` CLI; the workers join the head.
With the worker group's resources put back as unquoted JSON, bash splits it and both workers' `ray start` exit,
and the rehearsal names each worker pod and the step."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

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


def test_workers_join_the_head_with_kuberay_commands(stack):
    broken, job = with_cluster_change(stack, lambda spec: None)
    with Rehearsal(broken, step_timeout=150, s3=False) as r:
        results = r.run_cluster(job, data_step(stack))
        head = next(p for p in results if "-head-" in p.name)
        port = job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["port"]
        # asked inside the head pod, through the address workers use (the head Service's cluster DNS name)
        cluster = kuberay.rayjob_cluster(job, broken.ctx)
        status = r.exec_in(head.name, "ray-head", ["ray", "status", "--address",
                                                   f"{kuberay.head_fqdn(cluster, broken.ctx)}:{port}"], timeout=60)
        # Ray's GCS binds every interface: reachable inside the rehearsal's network namespace, not from this machine's
        probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)"
        reach = {where: subprocess.run(argv([sys.executable, "-c", probe, address, port]), capture_output=True).returncode
                 for address in (r.addresses.pod(head.name), "127.0.0.1")
                 for where, argv in ((f"inside {address}", list), (f"outside {address}", r.namespace.outside_argv))}
    assert status.returncode == 0, status.stderr
    assert reach == {k: (0 if k.startswith("inside") else 1) for k in reach}, reach
    nodes = status.stdout.split("Node status", 1)[1].split("Pending:", 1)[0]
    assert " 2 trn1-efa" in nodes and " 1 headgroup" in nodes, status.stdout  # RAY_NODE_TYPE_NAME = ray.io/group
    # each worker's --resources reached Ray whole: 2 x 32 NeuronCores; --num-cpus from each worker's CPU limit (head 0)
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    cpus = workers["replicas"] * int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert "/64.0 neuron_cores" in status.stdout and f"/{cpus}.0 CPU" in status.stdout, status.stdout
    by_type = {kind: [p for p in results if f"-{kind}-" in p.name] for kind in ("head", "worker")}
    assert len(by_type["head"]) == 1 and len(by_type["worker"]) == 2
    for p in by_type["head"] + by_type["worker"]:
        assert not p.problem and p.ready, p.line() + "\n" + p.log_tail
    assert all(p.step == data_step(stack) and p.owner == f"RayJob/{job['metadata']['name']}" for p in results)


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
