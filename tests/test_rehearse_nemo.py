"""Rehearsal of nemo-pretrain end to end (issue 20 defect 3), as `trnctl rehearse nemo-pretrain-usw2` runs it: the
data-prep Job tokenizes the seeded corpus onto the shared volume; in each MPIJob (precompile, train) two workers run
the image's sshd as the pod user, the launcher's real Open MPI `mpirun` starts one launch process per worker over
ssh, and every rank meets rank 0 at MASTER_ADDR (the CPU stand-in of the NxD step). With the defect put back
(mpirun without `-x MASTER_ADDR`, the launch code looking for a hostfile only the launcher has), the rehearsal
fails, naming the launcher pod and step."""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import pytest

from trn_workloads.nemo.command import FORWARDED_ENV, mpirun_command
from trnctl.operators import mpi
from trnctl.rehearse import overlay
from trnctl.rehearse.runner import Rehearsal

pytestmark = pytest.mark.slow

STACK = "nemo-pretrain-usw2"
NODES = overlay.NEMO_OVERLAY["nemo-pretrain"]["nemo"]["run"]["nodes"]


@pytest.fixture(scope="module")
def stack():
    return overlay.load(STACK)


def mpijob_step(stack, suffix: str) -> int:
    return next(i for i, step in enumerate(stack.steps) if any(o["metadata"]["name"].endswith(suffix) for o in step))


@pytest.fixture(scope="module")
def rehearsed(stack):
    """One rehearsal of every step (data-prep Job, precompile and train MPIJobs) on one shared volume; the launcher
    logs of both MPIJobs kept for the tests."""
    shared = Path(tempfile.mkdtemp(prefix="trn-rehearse-test-nemo-"))
    try:
        with Rehearsal(stack, shared_dir=shared, step_timeout=120, s3=False) as r:
            result = r.run()
            logs = {p.name: (r.work / "pods" / p.name / "launcher.log").read_text() for p in result.pods
                    if "-launcher-" in p.name}
        yield result, logs, shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("mode", ["precompile", "train"])
def test_every_rank_reaches_rank0_over_ssh_and_mpirun(stack, rehearsed, mode):
    result, logs, _ = rehearsed
    assert result.ok, result.report()
    index = mpijob_step(stack, f"-{mode}")
    results = [p for p in result.pods if p.step == index]
    assert len(results) == NODES + 1
    launcher = next(p for p in results if "-launcher-" in p.name)
    assert launcher.exit_code == 0
    log = logs[launcher.name]
    for rank in range(NODES):
        assert f"node {rank}/{NODES}: CPU stand-in for NxD Training {mode}" in log, log
    assert f"met ranks {list(range(NODES))}" in log


def test_without_master_addr_forwarded_the_rehearsal_fails_naming_pod_and_step(stack, rehearsed):
    """The defect put back in the rendered objects: the launcher runs plain mpirun without `-x MASTER_ADDR` (on the
    shared volume the data-prep Job of the full rehearsal filled)."""
    broken = copy.copy(stack)
    index = mpijob_step(stack, "-precompile")
    broken.steps = copy.deepcopy(stack.steps)
    job = next(o for o in broken.steps[index] if o["kind"] == "MPIJob")
    container = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    launch = container["command"][container["command"].index("--") + 1:]
    container["command"] = mpirun_command(NODES, launch, forward_env=tuple(n for n in FORWARDED_ENV if n != "MASTER_ADDR"))
    with Rehearsal(broken, shared_dir=rehearsed[2], step_timeout=120, s3=False) as r:
        results = r.run_step(index)
    [failed] = [p for p in results if p.problem]
    assert failed.name.startswith(f"{job['metadata']['name']}-launcher-") and failed.step == index
    assert "MASTER_ADDR is not set" in failed.log_tail
    assert all(p.problem == "" for p in results if p.name.startswith(mpi.worker_name(job["metadata"]["name"], 0)[:-1]))
