"""How the runner (trnctl/rehearse/runner.py) runs a RayJob (ray-pretrain): per RayJob, the cluster KubeRay creates
(head, then the workers, each running the `ray start` command KubeRay builds through the pod's `/bin/bash -c`, with
the real `ray` CLI), then the submitter Job's pod running KubeRay's `ray job submit` against the head Service's
name, and the Ray job's outcome read from the dashboard as KubeRay reads it (trnctl.operators.kuberay.job_status).
A mixin of runner.Rehearsal, which dispatches every RayJob of a step to `run_rayjob`.

- Per-pod await inside one RayJob: the head first (ready once its GCS port answers), then the workers in parallel
  (their wait-gcs-ready init container runs `ray health-check` against the head Service's name; a worker is ready
  once the head's dashboard lists its address ALIVE, or its `ray start --block` kept running `WORKER_SETTLE`
  seconds), then the submitter pod (KubeRay creates the submitter Job once the cluster is ready:
  rayjob_controller.go JobDeploymentStatusInitializing -> createK8sJobIfNeed).
- Addresses: `--node-ip-address` and the dashboard host set to the pod's own loopback address.
- CPU path: overlay.cpu_path_job (the runtime env wins over the pod env in Ray, so the overlay must win there too).
- Stop and resubmit (`stop_rayjob`): the RayJob's cluster and submitter go away as KubeRay deletes them
  (shutdownAfterJobFinishes, the RayJob deleted, or a backoffLimit retry: kuberay.retries_failed_rayjob); a new
  run creates them again with the same names, and the training resumes from the checkpoints on the shared volume.
- A worker pod lost mid-run (`kill_pod`: its node gone; or deleted by the hang watchdog, it carries
  `trn-platform/gang-restart`): `recreate_worker_pods` is KubeRay's reconcile (kuberay.replacement_worker_pods: a
  new pod under a new generated name), then `follow_rayjob` keeps following the same Ray job, whose Ray Train
  controller restarts its worker group from the newest checkpoint once the group fits again.
Ray 2.51.1's GCS and raylet bind every interface whatever `--node-ip-address` says: every rehearsal runs inside
its own network namespace (trnctl/rehearse/netns.py), so nothing a pod binds is reachable from outside.
"""
from __future__ import annotations

import copy
import re
import socket
import time
import urllib.request


from trnctl import operators
from trnctl.operators import OWNER_ANNOTATION, kuberay
from trnctl.rehearse import overlay
from trnctl.rehearse.results import PodResult

WORKER_SETTLE = 15.0  # seconds a worker's `ray start --block` must keep running to count as joined

class RayJobSteps:
    """Mixin of runner.Rehearsal: a RayJob's cluster, then its submitter, then the Ray job's status."""

    def run_rayjob(self, job: dict, index: int, *, until=None) -> list[PodResult]:
        """The RayJob's cluster, then (a RayJob with an entrypoint) its submitter and the Ray job to a terminal
        state, or until `until()` is true while it runs (e.g. a checkpoint was written: then it is left running)."""
        results = self.run_cluster(job, index)
        if any(r.problem for r in results) or not job["spec"].get("entrypoint"):
            return results
        return results + self.submit_rayjob(job, index, results, until=until)

    def submit_rayjob(self, job: dict, index: int, cluster: list[PodResult], *, until=None) -> list[PodResult]:
        """Once its cluster is ready (`cluster`: run_cluster's results): the submitter and the Ray job to a terminal
        state (or until `until()`), then the cluster deleted when KubeRay deletes it
        (kuberay.deletes_cluster_when_finished), its pods' listeners checked before."""
        return self._finished(job, cluster, self._submit(job, index, until), until)

    def _finished(self, job: dict, cluster: list[PodResult], results: list[PodResult], until) -> list[PodResult]:
        """Once the Ray job ended (not left running by `until`): its pods' listeners checked, then the cluster
        deleted when KubeRay deletes it (kuberay.deletes_cluster_when_finished)."""
        finished = not (until is not None and until())
        if finished and kuberay.deletes_cluster_when_finished(job):
            for res in [*cluster, *results]:
                self._check_bindings(res)  # while they run, before KubeRay deletes them
            self.stop_rayjob(job)
        return results

    def run_cluster(self, job: dict, index: int) -> list[PodResult]:
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
            self._start(_owned(pod, job), results, deadline)
        self._await(head, results, deadline, lambda pod: _answers(*gcs) and self._raylet_healthy(pod))
        if not any(r.problem for r in results.values()):
            self._start_workers(job, cluster, workers, results, deadline)
        return list(results.values())

    def recreate_worker_pods(self, job: dict, index: int) -> list[PodResult]:
        """KubeRay's reconcile of the RayJob's cluster after worker pods went away (kill_pod: the node lost; the
        hang watchdog deleting the `trn-platform/gang-restart` worker): a new pod per missing worker, under a new
        generated name (kuberay.replacement_worker_pods), started and awaited until the head lists it ALIVE.
        The Ray job itself is left to Ray: Ray Train restarts its worker group once the resources are back."""
        ctx = self.stack.ctx
        cluster = kuberay.rayjob_cluster(job, ctx)
        present = [p for p in self.live_pods()
                   if p["metadata"].get("labels", {}).get(kuberay.CLUSTER_LABEL) == cluster["metadata"]["name"]]
        new = [_owned(p, job) for p in kuberay.replacement_worker_pods(cluster, present, ctx,
                                                                      taken={p["metadata"]["name"] for p in self.all_pods})]
        owner = operators.describe(job)
        results = {p["metadata"]["name"]: PodResult(p["metadata"]["name"], index, owner) for p in new}
        for pod in new:
            self.addresses.pod(pod["metadata"]["name"])
        self.all_pods += [p for p in new if p["metadata"]["name"] not in {q["metadata"]["name"] for q in self.all_pods}]
        if new:
            self._start_workers(job, cluster, new, results, time.monotonic() + self.step_timeout)
        return list(results.values())

    def _start_workers(self, job: dict, cluster: dict, workers: list[dict], results: dict[str, PodResult],
                       deadline: float) -> None:
        """The worker pods at once, each ready once the head's dashboard lists its address ALIVE."""
        self._start_pods([_owned(pod, job) for pod in workers], results, deadline, prepare=self._on_loopback)
        started = time.monotonic()
        dashboard = self._dashboard(cluster)

        def joined(pod: dict) -> bool:
            alive = kuberay.alive_node_addresses(*dashboard)
            if alive is None:  # no dashboard: the worker's `ray start --block` kept running long enough
                return time.monotonic() - started > WORKER_SETTLE
            return self.addresses.pod(pod["metadata"]["name"]) in alive

        self._await(workers, results, deadline, joined)

    def _dashboard(self, cluster: dict) -> tuple[str, int]:
        """The head pod's dashboard (address, port)."""
        head = next(p for p in kuberay.cluster_pods(cluster, self.stack.ctx)
                    if p["metadata"]["labels"][kuberay.NODE_TYPE_LABEL] == "head")
        return self.addresses.pod(head["metadata"]["name"]), kuberay._service_ports(cluster)[kuberay.DASHBOARD_PORT_NAME]

    def _submit(self, job: dict, index: int, until) -> list[PodResult]:
        """The submitter pod as kuberay.pods builds it (K8sJobMode), then the Ray job's status from the dashboard."""
        ctx = self.stack.ctx
        submitted = overlay.cpu_path_job(job)
        submitters = [p for p in kuberay.pods(submitted, ctx) if kuberay.NODE_TYPE_LABEL not in p["metadata"]["labels"]]
        deadline = time.monotonic() + self.step_timeout
        results = {p["metadata"]["name"]: PodResult(p["metadata"]["name"], index, operators.describe(job))
                   for p in submitters}
        for pod in submitters:
            self._start(pod, results, deadline, on_loopback=False)
        for res in results.values():
            if not res.problem:
                res.ready = True
                self.ready.add(res.name)
        return self._follow(job, submitters, results, deadline, until)

    def follow_rayjob(self, job: dict, pods: list[PodResult], *, until=None) -> list[PodResult]:
        """Keep following a Ray job left running (run_rayjob with `until`; e.g. across a worker pod lost and
        recreated) to a terminal state, or until `until()`, with a fresh step bound; then as submit_rayjob.
        `pods`: the RayJob's pod results so far (run_rayjob's and recreate_worker_pods'); returns the submitter's."""
        names = {r.name for r in pods}
        submitters = [p for p in kuberay.pods(overlay.cpu_path_job(job), self.stack.ctx)
                      if p["metadata"]["name"] in names and kuberay.NODE_TYPE_LABEL not in p["metadata"]["labels"]]
        results = {r.name: r for r in pods if r.name in {p["metadata"]["name"] for p in submitters}}
        followed = self._follow(job, submitters, results, time.monotonic() + self.step_timeout, until)
        return self._finished(job, [r for r in pods if r.name not in results], followed, until)

    def _follow(self, job: dict, submitters: list[dict], results: dict[str, PodResult], deadline: float,
                until) -> list[PodResult]:
        """The Ray job's status from the head's dashboard, as KubeRay reads it, per submitter pod."""
        dashboard = self._dashboard(kuberay.rayjob_cluster(job, self.stack.ctx))
        job_id = kuberay.submission_id(job)
        for pod in submitters:
            res = results[pod["metadata"]["name"]]
            if res.problem:
                continue
            status: dict = {}
            while time.monotonic() < deadline:
                status = kuberay.job_status(*dashboard, job_id)
                if status.get("status") in kuberay.JOB_TERMINAL or (until is not None and until()):
                    break
                if not status and any(c.proc.poll() is not None for c in self.containers if c.pod == res.name):
                    break  # the submitter gave up before the dashboard knew the job
                time.sleep(1.0)
            state = status.get("status")
            if until is not None and state not in kuberay.JOB_TERMINAL and until():
                continue  # left running, as asked
            if state != "SUCCEEDED":
                why = f"Ray job {job_id} {state or 'not found'}" if state in kuberay.JOB_TERMINAL or not status else \
                    f"Ray job {job_id} still {state} at the step bound of {self.step_timeout:.0f}s"
                res.problem = f"{why}: {status.get('message', '')}".strip(": ")
            else:
                # the submitter container, not a native sidecar started before it (it runs as long as the pod)
                mains = {c["name"] for c in pod["spec"]["containers"]}
                c = next((c for c in self.containers if c.pod == res.name and c.name in mains), None)
                res.exit_code = c.proc.wait(timeout=60) if c else None  # `ray job logs --follow` ends with the job
            res.log_tail = self._log_tail(res.name) if res.problem else ""
        return list(results.values())

    def stop_rayjob(self, job: dict) -> None:
        """Delete the RayJob's cluster and submitter (every pod it owns), as KubeRay does."""
        owner = operators.describe(job)
        self.stop_pods(lambda pod: pod["metadata"].get("annotations", {}).get(OWNER_ANNOTATION) == owner)

    def _start(self, pod: dict, results: dict[str, PodResult], deadline: float, on_loopback: bool = True) -> None:
        name = pod["metadata"]["name"]
        self.all_pods = [p for p in self.all_pods if p["metadata"]["name"] != name] + [pod]
        try:
            if on_loopback:
                pod = self._on_loopback(pod)
            self._start_pod(pod, results[name], deadline)
        except Exception as exc:  # kubelet refusals, init containers that fail: recorded on the pod
            results[name].problem = str(exc)
            results[name].log_tail = self._log_tail(name)

    def _raylet_healthy(self, pod: dict) -> bool:
        """The head's readiness as KubeRay's probe for Ray < 2.53 checks it: the dashboard agent's
        /api/local_raylet_healthz answers "success" (kuberay.py _probes; the agent's port is the pod's own here,
        _on_loopback). Until then `ray job submit` is refused ("No available agent to submit job")."""
        name = pod["metadata"]["name"]
        running = next((p for p in self.all_pods if p["metadata"]["name"] == name), pod)
        port = re.search(r"--dashboard-agent-listen-port=(\d+)", " ".join(running["spec"]["containers"][0].get("args") or []))
        if not port:
            return True
        try:
            with urllib.request.urlopen(f"http://{self.addresses.pod(name)}:{port.group(1)}/api/local_raylet_healthz",
                                        timeout=2) as r:
                return b"success" in r.read()
        except (OSError, ValueError):
            return False

    def _on_loopback(self, pod: dict) -> dict:
        return _on_loopback(pod, self.addresses.pod(pod["metadata"]["name"]))

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


def _owned(pod: dict, job: dict) -> dict:
    pod["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = operators.describe(job)
    return pod


def _answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


# `ray start` options whose port a Ray node binds on every interface or on 127.0.0.1 (the dashboard agent's HTTP
# server, the metrics exporter): in the cluster every pod has its own network namespace; here the pods of a
# rehearsal share one, so each pod gets its own free port for these.
PER_POD_PORT_OPTIONS = ("metrics-export-port", "dashboard-agent-listen-port")


def _on_loopback(pod: dict, address: str) -> dict:
    """The Ray container's `ray start` on the pod's own address (`--node-ip-address`, dashboard host) and, for the
    ports every pod would have to itself, free ports of the rehearsal's namespace."""
    pod = copy.deepcopy(pod)
    ray = pod["spec"]["containers"][0]
    command = (ray["args"][0].replace("--dashboard-host=0.0.0.0", f"--dashboard-host={address}")
               .replace("ray start ", f"ray start --node-ip-address={address} ", 1))
    for option in PER_POD_PORT_OPTIONS:
        command = re.sub(rf"--{option}=\d+", f"--{option}={_free_port()}", command)
    ray["args"] = [command]
    return pod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
