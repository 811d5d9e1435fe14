"""Rehearsal of nemo-pretrain's MPIJobs (issue 20 defect 3): two workers run the image's sshd as the pod user, the
launcher's real Open MPI `mpirun` starts one launch process per worker over ssh, and every rank meets rank 0 at
MASTER_ADDR (the CPU stand-in of the NxD step). With the defect put back (mpirun without `-x MASTER_ADDR`, the
launch code looking for a hostfile only the launcher has), the rehearsal fails, naming the launcher pod and step."""
from __future__ import annotations

import pytest

from trn_workloads.nemo.command import FORWARDED_ENV
from trnctl.operators import mpi
from trnctl.rehearse import overlay
from trnctl.rehearse.runner import Rehearsal

pytestmark = pytest.mark.slow

STACK = "nemo-pretrain-usw2"
NODES = overlay.NEMO_OVERLAY["nemo-pretrain"]["nemo"]["run"]["nodes"]


@pytest.fixture(scope="module")
def stack():
    return overlay.load(STACK)


def seed_inputs(r: Rehearsal, stack) -> None:
    """What the data step leaves on FSx and the training step reads (the stand-in checks they exist)."""
    import json
    run = json.loads(next(o for o in stack.objects if o["kind"] == "ConfigMap")["data"]["run.json"])
    claim = r.shared / "fsx-shared"
    for suffix in (".bin", ".idx"):
        path = claim / (run["dataset_prefix"] + suffix).removeprefix("/shared/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"MMIDIDX")
    (claim / run["tokenizer"].removeprefix("/shared/")).mkdir(parents=True, exist_ok=True)


def mpijob_step(stack, suffix: str) -> int:
    return next(i for i, step in enumerate(stack.steps) if any(o["metadata"]["name"].endswith(suffix) for o in step))


@pytest.mark.parametrize("mode", ["precompile", "train"])
def test_every_rank_reaches_rank0_over_ssh_and_mpirun(stack, mode):
    with Rehearsal(stack, step_timeout=120, s3=False) as r:
        seed_inputs(r, stack)
        results = r.run_step(mpijob_step(stack, f"-{mode}"))
        report = "\n".join(p.line() + ("\n" + p.log_tail if p.problem else "") for p in results)
        assert all(not p.problem for p in results), report
        launcher = next(p for p in results if "-launcher-" in p.name)
        assert launcher.exit_code == 0
        log = (r.work / "pods" / launcher.name / "launcher.log").read_text()
    for rank in range(NODES):
        assert f"node {rank}/{NODES}: CPU stand-in for NxD Training {mode}" in log, log
    assert f"met ranks {list(range(NODES))}" in log


def test_without_master_addr_forwarded_the_rehearsal_fails_naming_pod_and_step(stack, monkeypatch):
    """The defect put back in the rendered objects: the launcher runs plain mpirun without `-x MASTER_ADDR`."""
    import copy
    broken = copy.copy(stack)
    index = mpijob_step(stack, "-precompile")
    broken.steps = copy.deepcopy(stack.steps)
    job = next(o for o in broken.steps[index] if o["kind"] == "MPIJob")
    container = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    launch = container["command"][container["command"].index("--") + 1:]
    from trn_workloads.nemo.command import mpirun_command
    container["command"] = mpirun_command(NODES, launch, forward_env=tuple(n for n in FORWARDED_ENV if n != "MASTER_ADDR"))
    with Rehearsal(broken, step_timeout=120, s3=False) as r:
        seed_inputs(r, broken)
        results = r.run_step(index)
    [failed] = [p for p in results if p.problem]
    assert failed.name.startswith(f"{job['metadata']['name']}-launcher-") and failed.step == index
    assert "MASTER_ADDR is not set" in failed.log_tail
    assert all(p.problem == "" for p in results if p.name.startswith(mpi.worker_name(job["metadata"]["name"], 0)[:-1]))
