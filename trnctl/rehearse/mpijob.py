"""How the runner (trnctl/rehearse/runner.py) runs an MPIJob (nemo-pretrain): workers running the image's sshd as
the pod user, then the launcher's real Open MPI `mpirun` over ssh, as the MPI operator sequences them. A mixin of
runner.Rehearsal, which dispatches every MPIJob of a step to `run_mpijob`.

- Per-pod await inside one MPIJob: with launcherCreationPolicy WaitForWorkersReady the launcher pod exists only once
  every worker is ready (trnctl.operators.mpi.launcher_waits_for_workers); the MPIJob is complete when the launcher
  Job completes; the workers (sshd, never exiting) are then deleted (runPolicy.cleanPodPolicy Running).
- A failed or deleted launcher (a rank killed: mpirun aborts and exits non-zero; a hung gang: the watchdog deletes
  the launcher): `retry_launcher` applies the launcher Job's rule (trnctl.operators.mpi.launcher_retry, i.e.
  trnctl.operators.kubernetes.job_retry): restartPolicy OnFailure restarts mpirun in the same pod, a deleted pod
  is replaced by a new one; the new mpirun starts every rank again over ssh on the same workers.
- The nemo image's build-time files the sandbox has no copy of (images/nemo/Dockerfile RUN step): the sshd config
  and host key under the user's home, and the ssh client config in /etc/ssh/ssh_config.d (port 2222, no host key
  checking). They are written here with the Dockerfile's values.
- Loopback only: each worker's sshd listens on its pod address (`-o ListenAddress`, as overlay.bind_substitutions
  does for `--host`), and Open MPI's out-of-band and TCP transports are kept on `lo`
  (OMPI_MCA_oob_tcp_if_include / btl_tcp_if_include, Open MPI 4.1 MCA parameters).
"""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trnctl import operators
from trnctl.operators import kubernetes, mpi
from trnctl.rehearse.results import PodResult

# images/nemo/Dockerfile: ARG SSH_PORT=2222; the sshd config and host key it writes under /home/trn; the client
# config it writes to /etc/ssh/ssh_config.d/mpi-workers.conf.
SSH_PORT = 2222
SSHD_CONFIG = (f"Port {SSH_PORT}\nHostKey /home/trn/.sshd/host_ed25519\nPidFile /home/trn/.sshd/sshd.pid\n"
               "StrictModes no\nPasswordAuthentication no\nPermitUserEnvironment no\n"
               "AuthorizedKeysFile /home/trn/.ssh/authorized_keys\n")
SSH_CLIENT_CONFIG = f"Host *\n    Port {SSH_PORT}\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n"
LOOPBACK_ONLY_ENV = {"OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_tcp_if_include": "lo"}


@dataclass
class MPIJobRun:
    """One MPIJob in a rehearsal: its workers, its current launcher pod, and what the launcher Job has counted."""
    job: dict
    index: int
    results: dict[str, PodResult]
    workers: list[dict]
    launcher: dict
    deadline: float
    failed: int = 0  # launcher pods failed (the Job's status.failed)
    restarts: int = 0  # launcher container restarts (restartPolicy OnFailure)
    retries: list[kubernetes.JobRetry] = field(default_factory=list)

    @property
    def launcher_name(self) -> str:
        return self.launcher["metadata"]["name"]


class MPIJobSteps:
    """Mixin of runner.Rehearsal: an MPIJob's workers, then its launcher, then the workers cleaned up."""

    def _image_files(self, pod: dict, container: str) -> None:
        """The nemo image's build-time sshd files in the container's home (the sandbox's writable home)."""
        cdir = self.work / "pods" / pod["metadata"]["name"] / "containers" / container
        home = cdir / "home"
        (home / ".sshd").mkdir(parents=True, exist_ok=True)
        key = home / ".sshd" / "host_ed25519"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                           capture_output=True, timeout=30)
        (home / ".sshd_config").write_text(SSHD_CONFIG)
        client = cdir / "ssh_config.d"
        client.mkdir(parents=True, exist_ok=True)
        (client / "mpi-workers.conf").write_text(SSH_CLIENT_CONFIG)
        # Owned by this process's user, which the sandbox's user namespace maps to the pod's uid (the image's
        # `chown -R 1000:1000 /home/trn`).

    def mpi_pod_overlay(self, pod: dict, container: dict, dirs) -> tuple[dict, list[tuple[str, str]]]:
        """An MPIJob pod's container: the image's sshd files, loopback-only Open MPI, the ssh client config."""
        self._image_files(pod, container["name"])
        pod = _with_overlay(pod, container["name"], self.addresses.pod(pod["metadata"]["name"]))
        client = self.work / "pods" / pod["metadata"]["name"] / "containers" / container["name"] / "ssh_config.d"
        return pod, [(str(client), "/etc/ssh/ssh_config.d")]

    def mpi_volumes_written(self, dirs) -> None:
        """Once the sandbox has written the pod's volume files: the ssh Secret's as the kubelet owns them."""
        _kubelet_owned(dirs.root / "files" / mpi.SSH_VOLUME)

    def run_mpijob(self, job: dict, index: int) -> list[PodResult]:
        run = self.start_mpijob(job, index)
        self.await_mpijob(run)
        return self.finish_mpijob(run)

    def start_mpijob(self, job: dict, index: int) -> "MPIJobRun":
        """The workers (in parallel, as the kubelet starts them), awaited ready; then (WaitForWorkersReady) the
        launcher Job's pod. A worker that is not ready within the step bound is recorded and no launcher starts."""
        deadline = time.monotonic() + self.step_timeout
        workers = mpi.worker_pods(job, self.stack.ctx)
        [launcher] = mpi.launcher_pods(job, self.stack.ctx)
        owner = operators.describe(job)
        results = {p["metadata"]["name"]: PodResult(p["metadata"]["name"], index, owner) for p in [*workers, launcher]}
        run = MPIJobRun(job, index, results, workers, launcher, deadline)
        self._start_pods(workers, results, deadline)
        self._refresh_hosts()
        pending = [w for w in workers if not results[w["metadata"]["name"]].problem]
        while pending and time.monotonic() < deadline:
            pending = [w for w in pending if not self._worker_ready(w, results[w["metadata"]["name"]])]
            if pending:
                time.sleep(0.3)
        for w in pending:
            res = results[w["metadata"]["name"]]
            res.problem = res.problem or f"not ready within the step bound of {self.step_timeout:.0f}s"
            res.log_tail = self._log_tail(res.name)
        if not any(r.problem for r in results.values()):
            self._start_launcher(run, launcher)
        return run

    def _start_launcher(self, run: "MPIJobRun", launcher: dict) -> None:
        res = run.results.setdefault(launcher["metadata"]["name"], PodResult(launcher["metadata"]["name"], run.index,
                                                                            operators.describe(run.job)))
        run.launcher = launcher
        try:
            self._start_pod(launcher, res, run.deadline)
        except Exception as exc:  # noqa: BLE001 - recorded on the pod
            res.problem = str(exc)

    def await_mpijob(self, run: "MPIJobRun", *, until: Callable[[], bool] | None = None) -> PodResult:
        """The launcher pod to completion (exit 0), to failure (named), to the step bound, or until `until()` is
        true while it runs (then left running). Returns the launcher's result."""
        res = run.results[run.launcher_name]
        if res.problem:
            return res
        while not self._poll(res, run.launcher, "complete"):
            if time.monotonic() > run.deadline:
                res.problem = f"not complete within the step bound of {self.step_timeout:.0f}s"
                res.log_tail = self._log_tail(res.name)
                break
            if until is not None and until():
                break
            time.sleep(0.3)
        return res

    def retry_launcher(self, run: "MPIJobRun", *, deleted: bool = False) -> kubernetes.JobRetry:
        """The launcher Job's own rule after its pod failed (mpirun exited non-zero: a rank died) or was deleted
        (`deleted=True`: the hang watchdog deletes the launcher, workloads/progress.py), applied here as the
        cluster would (trnctl.operators.mpi.launcher_retry -> kubernetes.job_retry): the container restarted in
        the same pod, a replacement pod with its new name, or the MPIJob failed. Either way the workers stay and the
        new mpirun starts every rank again over ssh. A deleted launcher's processes are stopped first."""
        old = run.launcher_name
        if deleted and any(p["metadata"]["name"] == old for p in self.live_pods()):
            self.delete_launcher(run)
        decision = mpi.launcher_retry(run.job, self.stack.ctx, old, failed=run.failed, restarts=run.restarts,
                                      deleted=deleted)
        run.failed, run.restarts = decision.failed, decision.restarts
        run.retries.append(decision)
        print(decision.reason, flush=True)
        run.deadline = time.monotonic() + self.step_timeout
        if decision.action == "restart-container":
            res = run.results[old]
            res.problem, res.exit_code = "", None
            for container in run.launcher["spec"]["containers"]:
                self._restart_container(run.launcher, container)
        elif decision.action == "new-pod":
            self.stop_pods(lambda pod: pod["metadata"]["name"] == old, grace=5)
            # gone from the API server (a watchdog listing pods by label sees only the replacement)
            self.all_pods = [p for p in self.all_pods if p["metadata"]["name"] != old]
            self.ready.discard(old)
            [launcher] = mpi.launcher_pods(run.job, self.stack.ctx, attempt=decision.failed)
            self._start_launcher(run, launcher)
        return decision

    def delete_launcher(self, run: "MPIJobRun", grace: float = 5.0) -> None:
        """The launcher pod deleted (`kubectl delete pod`, the hang watchdog): its containers SIGTERMed, SIGKILLed
        after `grace` seconds (terminationGracePeriodSeconds, compressed). mpirun, terminated, has every worker's
        orted end the ranks it started. Then call retry_launcher(run, deleted=True)."""
        self.stop_pods(lambda pod: pod["metadata"]["name"] == run.launcher_name, grace=grace)

    def finish_mpijob(self, run: "MPIJobRun") -> list[PodResult]:
        """cleanPodPolicy Running: the operator deletes the workers once the launcher is done."""
        for r in run.results.values():
            self._check_bindings(r)
        names = {w["metadata"]["name"] for w in run.workers}
        self.stop_pods(lambda pod: pod["metadata"]["name"] in names, grace=5)
        return list(run.results.values())

    def _worker_ready(self, worker: dict, res: PodResult) -> bool:
        """A worker without a readiness probe is ready once running (its sshd listening here)."""
        name = worker["metadata"]["name"]
        mains = [c for c in self.containers if c.pod == name and c.name in {x["name"] for x in worker["spec"]["containers"]}]
        if any(c.proc.poll() is not None for c in mains):
            res.exit_code = next(c.proc.poll() for c in mains if c.proc.poll() is not None)
            res.problem = f"container exited with {res.exit_code}"
            res.log_tail = self._log_tail(name)
            return True
        try:
            socket.create_connection((self.addresses.pod(name), SSH_PORT), timeout=1).close()
        except OSError:
            return False
        res.ready = True
        self.ready.add(name)
        self._refresh_hosts()
        return True


# A uid outside the sandbox's one-uid user namespace: files it owns show as the overflow uid inside, i.e. not
# the pod user, as the kubelet's root-owned Secret files are not in the cluster.
NOT_THE_POD_USER = 65534


def _kubelet_owned(volume: Path) -> None:
    """The ssh Secret's files as the kubelet leaves them: owned by root (group fsGroup), not by the pod user.
    The sandbox maps this machine's user to the pod's uid, so files it writes would look owned by the pod user,
    and ssh refuses a private key its user owns with mode 0644 (OpenSSH authfile.c sshkey_perm_ok); the real
    key file (root-owned, 0644: the Secret volume default) passes that check."""
    if volume.exists():
        for path in [volume, *volume.rglob("*")]:
            os.lchown(path, NOT_THE_POD_USER, NOT_THE_POD_USER)


def _with_overlay(pod: dict, container: str, address: str) -> dict:
    """Loopback-only Open MPI env on every MPIJob container, and the worker's sshd on its own address."""
    pod = copy.deepcopy(pod)
    for c in pod["spec"]["containers"]:
        if c["name"] != container:
            continue
        c["env"] = [e for e in c.get("env") or [] if e["name"] not in LOOPBACK_ONLY_ENV] + [
            {"name": k, "value": v} for k, v in LOOPBACK_ONLY_ENV.items()]
        command = c.get("command") or []
        if command[:1] == ["/usr/sbin/sshd"]:
            c["command"] = [*command, "-o", f"ListenAddress={address}"]
    return pod

