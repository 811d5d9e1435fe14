"""Rehearsal of a RayJob's cluster (ray-pretrain): the head, then the workers, each running the `ray start` command
KubeRay builds (trnctl.operators.kuberay) through the pod's `/bin/bash -c`, with the real `ray` CLI.

An addition to the runner (trnctl/rehearse/runner.py) for what it does not model yet, kept here so the runner's
owner can fold it in:
- Per-pod await inside one RayJob: the head first (ready once its GCS port answers; KubeRay's readiness probes
  need the Ray dashboard, which this machine's Ray lacks: `ray[default]`'s extras are not installed), then the
  workers (their wait-gcs-ready init container runs `ray health-check` against the head Service's name; a worker is
  ready once its `ray start --block` has kept running for `WORKER_SETTLE` seconds).
- Addresses: `--node-ip-address` and the dashboard host set to the pod's own loopback address.
Not rehearsed here: the submitter's `ray job submit` (it needs the dashboard), and Ray 2.51.1's GCS and raylet bind
every interface whatever `--node-ip-address` says, so the runner's loopback check flags the Ray pods; the tests read
the Ray pods' own outcome.
"""
from __future__ import annotations

import copy
import socket
import time

from trnctl import operators
from trnctl.operators import kuberay
from trnctl.rehearse.runner import PodResult, Rehearsal
from trnctl.rehearse.sandbox_patch import bwrap_argv_through

WORKER_SETTLE = 15.0  # seconds a worker's `ray start --block` must keep running to count as joined


class RayRehearsal(Rehearsal):
    def _start_container(self, pod: dict, container: dict, dirs, hosts):
        with bwrap_argv_through(lambda argv: argv):  # volume mount points under /etc (our run config)
            return super()._start_container(pod, container, dirs, hosts)

    def run_step(self, index: int) -> list[PodResult]:
        jobs = [o for o in self.stack.steps[index] if operators.key_of(o) == ("ray.io/v1", "RayJob")]
        if not jobs:
            return super().run_step(index)
        return [r for job in jobs for r in self._run_cluster(job, index)]

    def _run_cluster(self, job: dict, index: int) -> list[PodResult]:
        ctx = self.stack.ctx
        cluster = kuberay.rayjob_cluster(job, ctx)
        deadline = time.monotonic() + self.step_timeout
        pods = [p for p in kuberay.cluster_pods(cluster, ctx)]
        head = [p for p in pods if p["metadata"]["labels"][kuberay.NODE_TYPE_LABEL] == "head"]
        workers = [p for p in pods if p["metadata"]["labels"][kuberay.NODE_TYPE_LABEL] == "worker"]
        owner = operators.describe(job)
        results = {p["metadata"]["name"]: PodResult(p["metadata"]["name"], index, owner) for p in pods}
        gcs = (self.addresses.pod(head[0]["metadata"]["name"]), int(kuberay.head_port(cluster)))
        for pod in head:
            self._start(pod, results, deadline)
        self._await(head, results, deadline, lambda pod: _answers(*gcs))
        if not any(r.problem for r in results.values()):
            for pod in workers:
                self._start(pod, results, deadline)
            started = time.monotonic()
            self._await(workers, results, deadline, lambda pod: time.monotonic() - started > WORKER_SETTLE)
        return list(results.values())

    def _start(self, pod: dict, results: dict[str, PodResult], deadline: float) -> None:
        name = pod["metadata"]["name"]
        self.all_pods = [p for p in self.all_pods if p["metadata"]["name"] != name] + [pod]
        try:
            self._start_pod(_on_loopback(pod, self.addresses.pod(name)), results[name], deadline)
        except Exception as exc:  # kubelet refusals, init containers that fail: recorded on the pod
            results[name].problem = str(exc)
            results[name].log_tail = self._log_tail(name)

    def _await(self, pods: list[dict], results: dict[str, PodResult], deadline: float, ready) -> None:
        pending = [p for p in pods if not results[p["metadata"]["name"]].problem]
        while pending:
            for pod in list(pending):
                name = pod["metadata"]["name"]
                names = {c["name"] for c in pod["spec"]["containers"]}  # not the init containers, done by now
                mains = [c for c in self.containers if c.pod == name and c.name in names]
                code = next((c.proc.poll() for c in mains if c.proc.poll() is not None), None)
                if code is not None:
                    results[name].exit_code = code
                    results[name].problem = f"container exited with {code} (restartPolicy would restart it: CrashLoopBackOff)"
                    results[name].log_tail = self._log_tail(name)
                    pending.remove(pod)
                elif ready(pod):
                    results[name].ready = True
                    self.ready.add(name)
                    pending.remove(pod)
            if pending and time.monotonic() > deadline:
                for pod in pending:
                    name = pod["metadata"]["name"]
                    results[name].problem = f"not ready within the step bound of {self.step_timeout:.0f}s"
                    results[name].log_tail = self._log_tail(name)
                return
            if pending:
                time.sleep(0.5)
        self._refresh_hosts()


def _answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def _on_loopback(pod: dict, address: str) -> dict:
    """The Ray container's `ray start` on the pod's own address (`--node-ip-address`, dashboard host)."""
    pod = copy.deepcopy(pod)
    ray = pod["spec"]["containers"][0]
    ray["args"] = [ray["args"][0].replace("--dashboard-host=0.0.0.0", f"--dashboard-host={address}")
                   .replace("ray start ", f"ray start --node-ip-address={address} ", 1)]
    return pod
