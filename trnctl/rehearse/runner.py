"""Run a workload stack's pods on this machine, step by step, as the cluster would start them.

API (for tools and other operators' rehearsals; nothing here is specific to a workload):

    stack = overlay.load("compile-usw2")             # rendered with the tiny-scale overlay, scaled to this machine
    with Rehearsal(stack, step_timeout=300) as r:      # cleanup of processes and directories on exit
        result = r.run()                              # every step; r.run(only="2") one step
        r.service_address("ml-shared", "compile-usw2-serve")  # the Service's 127.0.200.x (kube-proxy stand-in)
        r.exec_in(pod_name, container, ["sh", "-c", "..."])   # as `kubectl exec`: the pod's namespaces, user, env
        r.stop_pods(lambda pod: ...); r.run_step(i)   # e.g. stop a step and run it again (resume tests)
        r.start_prometheus(); r.url_in_cluster("http://kps-prometheus.monitoring.svc:9090")  # platform services
    result.ok, result.pods -> [PodResult(name, step, started, ready, exit_code, log_tail, problem)],
    result.notes (e.g. each ScaledObject's reading), result.problems; result.report() is what the CLI prints

Per controller kind: `run_step(i)` runs each object of the step whose controller sequences its own pods through
that controller's runner (`controller_runs(obj)`: MPIJob -> mpijob.py `run_mpijob`, RayJob -> rayjob.py
`run_rayjob`, Volcano Job -> volcanojob.py `run_job`; mixins of Rehearsal), then every other object's pods together.
Tests drive the runners directly for stop/resume: `r.run_rayjob(job, i, until=...)`, `r.stop_rayjob(job)`,
`r.start_job`/`await_job`/`kill_pod`/`stop_job`/`pod_lost` (Volcano), `r.start_mpijob`/`await_mpijob`/`retry_launcher`/
`finish_mpijob` (MPIJob), `r.recreate_worker_pods(job, i)` + `r.follow_rayjob(job, pods)` (KubeRay replacing a lost
worker pod). An operator module may define
`await_kind(obj) -> "complete" | "ready"`. The operators' own rules (Volcano's policy_action, KubeRay's job status
read from the dashboard and cluster deletion) live in trnctl/operators/.
- Everything runs in the rehearsal's own network namespace (netns.py, only `lo`), entered first and left last.
- A step is the set of pods `operators.all_pods` makes of the objects `stack.steps[i]` applies (apply order =
  the render's dependsOn order, trnctl/rehearse/stack.py), with the Services, ConfigMaps and Secrets of every
  step known from the start (a pod waits for them in the cluster; here they exist).
- Per pod: init containers in order, each to exit 0 (a native sidecar, `restartPolicy: Always`, only started; the
  step's pods side by side); then the containers, each in its own sandbox
  (trnctl/rehearse/sandbox.py) with the env and files `operators.kubernetes.container_process` gives, plus
  the overlay (trnctl/rehearse/overlay.py).
- A step is done when what `pulumi up` awaits is there: a Job's pods exited 0 (pulumi-kubernetes awaits Job
  completion), a Deployment's/StatefulSet's/bare Pod's pods ready (readinessProbe httpGet/tcpSocket/exec run
  for real after the startupProbe passes; no probe = ready once running); a CR's pods (RayCluster, MPIJob,
  Volcano Job) are awaited as their operator module says (`await_kind(obj)`: "complete" or "ready"; the
  default for a kind with a completion notion is "complete"). Probes are polled every
  min(periodSeconds, 1) s (time compressed); the per-step time bound replaces failureThreshold.
- A pod fails on: a container exiting non-zero (Jobs) or at all (long-running pods), the step time bound,
  a listening socket outside 127.0.0.0/8, or what the kubelet refuses (missing Secret key, ...). The result
  names the pod, the step and the log tail.
- After the last step, each ScaledObject's Prometheus trigger is read as KEDA would (trnctl/operators/keda.py)
  from the platform's Prometheus (trnctl/rehearse/prometheus.py); a query that never answers is a problem.
- Not modelled: Job retries (backoffLimit: the first failed pod fails the rehearsal), container restarts,
  liveness probes, resource limits, scheduling (every pod runs on this one "node"). Exception: an MPIJob's launcher
  Job, retried on request (`r.retry_launcher(run)`, mpijob.py) by the Job rule in trnctl/operators/kubernetes.py.
- Cleanup: every process group is SIGTERMed then SIGKILLed, every directory removed (also on Ctrl-C, a
  failing step, and at interpreter exit through `atexit`), unless keep=True keeps the directories.
"""
from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from trnctl import operators
from trnctl.operators import OWNER_ANNOTATION, kubernetes, mpi, volcano
from trnctl.rehearse import netns, network, overlay, sandbox
from trnctl.rehearse.mpijob import MPIJobSteps
from trnctl.rehearse.rayjob import RayJobSteps
from trnctl.rehearse.results import PodResult, RehearsalError, RehearsalResult  # noqa: F401 (the runner's API)
from trnctl.rehearse.stack import RehearsalStack
from trnctl.rehearse.volcanojob import VolcanoJobSteps

LOG_TAIL_LINES = 40
PROBE_PERIOD_CAP = 1.0
COMPLETE_KINDS = {"Job", "MPIJob", "RayJob"}  # awaited to completion; the rest to readiness


@dataclass
class _Container:
    pod: str
    name: str
    proc: subprocess.Popen
    log: Path
    child_pid: int | None
    spec: dict
    process: kubernetes.ContainerProcess


_LIVE: set["Rehearsal"] = set()


def _cleanup_all() -> None:
    for r in list(_LIVE):
        r.close()


atexit.register(_cleanup_all)


class Rehearsal(MPIJobSteps, RayJobSteps, VolcanoJobSteps):
    """One rehearsal of a stack. Steps run object by object: an object whose controller the rehearsal sequences
    itself (`controller_runs`: MPIJob, RayJob, Volcano Job; trnctl/rehearse/mpijob.py, rayjob.py, volcanojob.py)
    through that controller's runner, every other object's pods started together and awaited as its kind says.
    Everything runs inside the rehearsal's own network namespace (netns.py; isolated=False only for tests of the
    runner's own checks), entered before anything starts and left last."""

    def __init__(self, stack: RehearsalStack, *, work_dir: Path | None = None, shared_dir: Path | None = None,
                 keep: bool = False, step_timeout: float = 300.0, s3: bool = True, isolated: bool = True) -> None:
        # first: the S3 stand-in's and the forwarders' threads, and every pod's processes, start inside it
        self._isolation, self.namespace = netns.isolation(isolated)
        try:
            self._init(stack, work_dir=work_dir, shared_dir=shared_dir, keep=keep, step_timeout=step_timeout, s3=s3)
        except BaseException:
            self._isolation.close()
            raise

    def _init(self, stack: RehearsalStack, *, work_dir: Path | None, shared_dir: Path | None, keep: bool,
              step_timeout: float, s3: bool) -> None:
        self.stack = stack
        self.keep = keep
        self.step_timeout = step_timeout
        self.id = f"trn-rehearse-{uuid.uuid4().hex[:8]}"
        self.work = Path(work_dir or tempfile.mkdtemp(prefix=f"{self.id}-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.shared = Path(shared_dir) if shared_dir else self.work / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.memory = Path("/dev/shm") / self.id
        self.addresses = network.AddressBook()
        self.containers: list[_Container] = []
        self._volcano_retries: dict[str, int] = {}
        self.ready: set[str] = set()
        self.forwarders: list = []
        self.s3_server = None
        self.s3_endpoint: str | None = None
        self.prometheus = None
        self.all_pods: list[dict] = []
        self._closed = False
        _LIVE.add(self)
        objects = stack.all_objects()
        self.objects = objects
        try:
            self.pods_by_step = [operators.all_pods(step, stack.ctx) for step in stack.steps]
        except ModuleNotFoundError as exc:
            self.close()
            kinds = sorted({operators.describe(o) for step in stack.steps for o in step
                            if operators.CONTROLLERS.get(operators.key_of(o)) == exc.name})
            raise RehearsalError(f"{', '.join(kinds)}: no operator module {exc.name} to run its pods") from None
        self.all_pods = [p for step in self.pods_by_step for p in step]
        self.services = operators.all_services(objects, stack.ctx)
        self.config_objects = operators.all_config_objects(objects, stack.ctx)
        self.kube_objects = objects + [o for o in self.config_objects if o not in objects]
        for pod in self.all_pods:
            self.addresses.pod(pod["metadata"]["name"])
        for svc in self.services:
            if (svc.get("spec") or {}).get("clusterIP") != "None":
                self.addresses.service(svc["metadata"].get("namespace", "default"), svc["metadata"]["name"])
        if s3:
            self._start_s3()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Rehearsal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop_pods(lambda pod: True)
        for f in self.forwarders:
            with contextlib.suppress(Exception):
                f.shutdown()
                f.server_close()
        if self.s3_server is not None:
            with contextlib.suppress(Exception):
                self.s3_server.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        shutil.rmtree(self.memory, ignore_errors=True)
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        _LIVE.discard(self)
        self._isolation.close()  # last: nothing of the rehearsal is left in the namespace

    def _start_s3(self) -> None:
        """The S3 stand-in (moto) on its own loopback address, with the platform's artifacts bucket."""
        import logging

        import boto3
        from moto.server import ThreadedMotoServer
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
        address = self.addresses.service("aws", "s3")
        port = _free_port(address)
        self.s3_server = ThreadedMotoServer(ip_address=address, port=port, verbose=False)
        self.s3_server.start()
        self.s3_endpoint = f"http://{address}:{port}"
        bucket = self.stack.platform.outputs.get("artifactsBucket")
        if bucket:
            s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-west-2",
                              aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")
            # moto keeps its state per process: a second rehearsal in one process finds the bucket there
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})

    # ------------------------------------------------------------------ names and addresses
    def cluster_names(self) -> dict[str, str]:
        """Cluster DNS name -> address: ClusterIP Services to their stand-in address, headless Services and
        pod hostnames to the pod (re-pointed to a ready pod when there is one)."""
        records = operators.dns_records(self.objects, self.stack.ctx)
        clusterip = {}
        for svc in self.services:
            if (svc.get("spec") or {}).get("clusterIP") == "None":
                continue
            ns, name = svc["metadata"].get("namespace", "default"), svc["metadata"]["name"]
            addr = self.addresses.service(ns, name)
            for n in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{self.stack.ctx.cluster_domain}"):
                clusterip[n] = addr
        endpoints = operators.service_endpoints(self.all_pods, self.services)
        out = {}
        for name, pod in records.items():
            if name in clusterip:
                continue
            svc_pods = next((v for (ns, s), v in endpoints.items() if name.split(".")[0] == s and pod in v), None)
            if svc_pods and name.count(".") <= 3 and pod not in self.ready:
                pod = next((p for p in svc_pods if p in self.ready), pod)
            out[name] = self.addresses.pod(pod)
        return {**out, **clusterip}

    def service_address(self, namespace: str, name: str) -> str:
        return self.addresses.service(namespace, name)

    def url_in_cluster(self, url: str) -> str:
        """A cluster URL (http://<service>.<ns>.svc[.cluster.local]:<port>/...) with the host replaced by the
        rehearsal's address for that Service (how a controller such as KEDA reaches it)."""
        from urllib.parse import urlsplit, urlunsplit
        parts = urlsplit(url)
        labels = parts.hostname.split(".")
        if len(labels) >= 2:
            host = self.addresses.service(labels[1], labels[0])
            return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
        return url

    def monitors(self) -> list[dict]:
        return [o for o in self.objects if o.get("apiVersion") == "monitoring.coreos.com/v1"]

    def start_prometheus(self, namespace: str = "monitoring", service: str = "kps-prometheus", *,
                         rule_groups: list[dict] | None = None, pods: list[dict] | None = None):
        """The platform's Prometheus (its Service address) scraping what its PodMonitors select here (among `pods`,
        by default every pod started), evaluating `rule_groups` if given."""
        from trnctl.rehearse.prometheus import Prometheus
        if self.prometheus is None or self.prometheus.proc is None or self.prometheus.proc.poll() is not None:
            address = self.addresses.service(namespace, service)
            self.prometheus = Prometheus(self.work / "prometheus", address, self.monitors(),
                                         self.all_pods if pods is None else pods, self.addresses.pod,
                                         rule_groups=rule_groups).start()
        return self.prometheus

    def _refresh_hosts(self) -> None:
        names = self.cluster_names()
        for pod in self.all_pods:
            path = self.work / "pods" / pod["metadata"]["name"] / "hosts"
            if path.exists():
                network.write_in_place(path, network.hosts_file(pod, self.addresses.pod(pod["metadata"]["name"]),
                                                                names, self.stack.ctx.cluster_domain))

    def _start_forwarders(self) -> None:
        if self.forwarders:
            return
        endpoints = operators.service_endpoints(self.all_pods, self.services)
        pods = {p["metadata"]["name"]: p for p in self.all_pods}
        for svc in self.services:
            spec = svc.get("spec") or {}
            if spec.get("clusterIP") == "None":
                continue
            ns, name = svc["metadata"].get("namespace", "default"), svc["metadata"]["name"]
            for port in spec.get("ports") or []:
                backends = endpoints.get((ns, name), [])

                def backend(backends=backends, port=port):
                    for b in backends:
                        if b in self.ready:
                            return self.addresses.pod(b), _target_port(pods[b], port)
                    return None

                self.forwarders.append(network.start_forwarder(self.addresses.service(ns, name), int(port["port"]),
                                                               backend))

    # ------------------------------------------------------------------ running
    def run(self, only: str | None = None) -> RehearsalResult:
        result = RehearsalResult(self.stack.name)
        problems = operators.admission_problems(self.objects, self.stack.ctx)
        if problems:
            result.problems += problems
            return result
        for claim in self._claims():
            for written in overlay.seed_shared(self.shared, claim, self.stack.workload, self.objects):
                print(f"seeded {written} (claim {claim})", flush=True)
        self._start_forwarders()
        steps = range(len(self.pods_by_step)) if only is None else [self._step_index(only)]
        for i in steps:
            step_result = self.run_step(i)
            result.pods += step_result
            if any(p.problem for p in step_result):
                result.problems.append(f"step {i} failed: " + "; ".join(f"pod {p.name}: {p.problem}" for p in step_result
                                                                        if p.problem))
                break
        else:
            if only is None:
                result.problems += self.check_autoscalers(result)
        return result

    def check_autoscalers(self, result: RehearsalResult, timeout: float = 60.0) -> list[str]:
        """Each ScaledObject's Prometheus trigger, read as KEDA reads it from the platform's Prometheus (started
        here, scraping what its PodMonitors select): it must answer (a query that selects nothing is an error
        with ignoreNullValues false, and KEDA would fall back). Adds one line per trigger to the report."""
        from trnctl.operators import keda
        problems = []
        for so in [o for o in self.stack.objects if operators.key_of(o) == ("keda.sh/v1alpha1", "ScaledObject")]:
            for trigger in keda.prometheus_triggers(so):
                self.start_prometheus()
                server = self.url_in_cluster(trigger["metadata"]["serverAddress"])
                deadline, error, value = time.monotonic() + timeout, "", None
                while time.monotonic() < deadline:
                    try:
                        value = keda.execute_prom_query(server, trigger)
                        break
                    except keda.MetricError as exc:
                        error = str(exc)
                        time.sleep(1)
                name = operators.describe(so)
                if value is None:
                    problems.append(f"{name}: its Prometheus query never answered within {timeout:.0f}s ({error}); "
                                    f"KEDA would count failures and fall back")
                else:
                    result.notes.append(f"{name}: query = {value:g} (threshold {trigger['metadata'].get('threshold')}, "
                                        f"active {keda.is_active(value, trigger)})")
        return problems

    def _step_index(self, only: str) -> int:
        if only.isdigit() and int(only) < len(self.pods_by_step):
            return int(only)
        for i, step in enumerate(self.stack.steps):
            if any(only in (o["metadata"]["name"], operators.describe(o)) for o in step):
                return i
        raise RehearsalError(f"--only {only}: no step {only!r}; steps: " + "; ".join(
            f"{i}: {', '.join(operators.describe(o) for o in s)}" for i, s in enumerate(self.stack.steps)))

    def _claims(self) -> set[str]:
        return {v["persistentVolumeClaim"]["claimName"] for p in self.all_pods
                for v in (p.get("spec") or {}).get("volumes") or [] if "persistentVolumeClaim" in v}

    def controller_runs(self, obj: dict) -> Callable[[dict, int], list[PodResult]] | None:
        """The runner of an object whose controller sequences its pods itself (per controller kind), or None."""
        key = operators.key_of(obj)
        if key in mpi.KINDS:
            return self.run_mpijob
        if key == ("ray.io/v1", "RayJob"):
            return self.run_rayjob
        if key in volcano.KINDS:
            return self.run_job
        return None

    def run_step(self, index: int) -> list[PodResult]:
        """Every object of the step: the ones of a sequencing controller through its runner (in apply order), then
        the rest's pods started together and awaited as their kind says."""
        results: list[PodResult] = []
        rest = []
        for obj in self.stack.steps[index]:
            runs = self.controller_runs(obj)
            if runs is None:
                rest.append(obj)
                continue
            results += runs(obj, index)
            if any(r.problem for r in results):
                return results
        results += self._run_objects(rest, index)
        for res in results:
            self._check_bindings(res)
        return results

    def _run_objects(self, objects: list[dict], index: int) -> list[PodResult]:
        results: list[PodResult] = []
        deadline = time.monotonic() + self.step_timeout
        awaited: list[tuple[PodResult, dict, str]] = []
        for obj in objects:
            module = operators.controller_for(obj)
            if module is None:
                continue
            await_kind = getattr(module, "await_kind", None)
            mode = await_kind(obj) if await_kind else ("complete" if obj["kind"] in COMPLETE_KINDS else "ready")
            pods = module.pods(obj, self.stack.ctx)
            by_name = {pod["metadata"]["name"]: PodResult(pod["metadata"]["name"], index, operators.describe(obj))
                       for pod in pods}
            results += by_name.values()
            self._start_pods(pods, by_name, deadline)
            awaited += [(by_name[p["metadata"]["name"]], p, mode) for p in pods]
        self._refresh_hosts()
        pending = [a for a in awaited if not a[0].problem]
        while pending:
            still = []
            for res, pod, mode in pending:
                if not self._poll(res, pod, mode):
                    still.append((res, pod, mode))
            pending = still
            if pending and time.monotonic() > deadline:
                for res, _pod, mode in pending:
                    res.problem = f"not {'complete' if mode == 'complete' else 'ready'} within the step bound of {self.step_timeout:.0f}s"
                    res.log_tail = self._log_tail(res.name)
                break
            if pending:
                time.sleep(0.5)
        return results

    def _start_pods(self, pods: list[dict], results: dict[str, PodResult], deadline: float,
                    prepare: Callable[[dict], dict] | None = None) -> None:
        """Start the pods at once, as the kubelet does: each pod's init containers one after another, the pods side
        by side (one loop here: bwrap's --die-with-parent ties each sandbox to the thread that started it, so every
        container starts from this thread). A pod the kubelet refuses, or whose init container fails or does not
        finish within the step bound, gets its problem recorded."""
        starting = []
        for pod in pods:
            pod = prepare(pod) if prepare else pod
            name = pod["metadata"]["name"]
            self.all_pods = [p for p in self.all_pods if p["metadata"]["name"] != name] + [pod]
            try:
                dirs, hosts = self._pod_dirs(pod)
            except Exception as exc:  # noqa: BLE001 - recorded on the pod
                self._pod_failed(results[name], str(exc))
                continue
            starting.append([pod, dirs, hosts, list((pod.get("spec") or {}).get("initContainers") or []), None])
        while starting:
            for entry in list(starting):
                pod, dirs, hosts, inits, running = entry
                res = results[pod["metadata"]["name"]]
                code = running.proc.poll() if running else 0
                try:
                    if code is None:
                        if time.monotonic() > deadline:
                            raise kubernetes.PodSpecError(f"init container {running.name} did not finish within "
                                                          f"the step bound")
                        continue
                    if code != 0:
                        res.exit_code = code
                        raise kubernetes.PodSpecError(f"init container {running.name} exited with {code}")
                    if inits:
                        init = inits.pop(0)
                        started = self._start_container(pod, init, dirs, hosts)
                        res.started = True
                        # A native sidecar (restartPolicy Always) starts in order and runs beside the containers: the
                        # next container starts once it has started, and it never holds up the pod (Kubernetes 1.29+,
                        # kubernetes.io/docs/concepts/workloads/pods/sidecar-containers/, KEP-753).
                        entry[4] = None if init.get("restartPolicy") == "Always" else started
                        continue
                    for container in pod["spec"].get("containers") or []:
                        self._start_container(pod, container, dirs, hosts)
                        res.started = True
                except Exception as exc:  # noqa: BLE001 - kubelet refusals, sandbox errors, failed init containers
                    self._pod_failed(res, str(exc))
                starting.remove(entry)
            if starting:
                time.sleep(0.1)

    def _pod_failed(self, res: PodResult, problem: str) -> None:
        res.problem = problem.strip("'")
        res.log_tail = res.log_tail or self._log_tail(res.name)

    def _pod_dirs(self, pod: dict) -> tuple[sandbox.PodDirs, Path]:
        name = pod["metadata"]["name"]
        pod_dir = self.work / "pods" / name
        pod_dir.mkdir(parents=True, exist_ok=True)
        hosts = pod_dir / "hosts"
        hosts.write_text(network.hosts_file(pod, self.addresses.pod(name), self.cluster_names(),
                                            self.stack.ctx.cluster_domain))
        return sandbox.PodDirs(root=pod_dir, memory_root=self.memory / name, shared_root=self.shared), hosts

    def _poll(self, res: PodResult, pod: dict, mode: str) -> bool:
        """True when the pod is done being awaited (success or failure recorded in res)."""
        name = pod["metadata"]["name"]
        mains = [c for c in self.containers if c.pod == name and c.name in {x["name"] for x in pod["spec"]["containers"]}]
        codes = [c.proc.poll() for c in mains]
        if mode == "complete":
            if any(code not in (None, 0) for code in codes):
                res.exit_code = next(code for code in codes if code not in (None, 0))
                res.problem = f"container exited with {res.exit_code}"
                res.log_tail = self._log_tail(name)
                return True
            if all(code == 0 for code in codes):
                res.exit_code = 0
                return True
            return False
        if any(code is not None for code in codes):
            res.exit_code = next(code for code in codes if code is not None)
            res.problem = f"container exited with {res.exit_code} (restartPolicy would restart it: CrashLoopBackOff)"
            res.log_tail = self._log_tail(name)
            return True
        if all(self._probe_ok(c) for c in mains):
            res.ready = True
            self.ready.add(name)
            self._refresh_hosts()
            return True
        res.ready = False
        return False

    def _probe_ok(self, c: _Container) -> bool:
        now = time.monotonic()
        last = getattr(c, "_last_probe", 0.0)
        probe = c.spec.get("readinessProbe")
        started_probe = c.spec.get("startupProbe")
        period = min(float((probe or started_probe or {}).get("periodSeconds", 10)), PROBE_PERIOD_CAP)
        if now - last < period:
            return getattr(c, "_last_ok", False)
        c._last_probe = now  # type: ignore[attr-defined]
        ok = True
        if started_probe and not getattr(c, "_started", False):
            ok = self._run_probe(c, started_probe)
            c._started = ok  # type: ignore[attr-defined]
        if ok and probe:
            ok = self._run_probe(c, probe)
        c._last_ok = ok  # type: ignore[attr-defined]
        return ok

    def _run_probe(self, c: _Container, probe: dict) -> bool:
        """A probe as the kubelet runs it. source: kubernetes/kubernetes@v1.34.0:pkg/kubelet/prober/prober.go
        (httpGet: success for 200 <= status < 400; host = pod IP; port by number or container port name;
        tcpSocket: connect; exec: exit 0 inside the container)."""
        pods = {p["metadata"]["name"]: p for p in self.all_pods}
        address = self.addresses.pod(c.pod)
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            h = probe["httpGet"]
            port = _resolve_port(pods[c.pod], c.spec, h["port"])
            conn = http.client.HTTPConnection(h.get("host") or address, port, timeout=max(timeout, 2.0))
            try:
                conn.request("GET", h.get("path", "/"), headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []})
                return 200 <= conn.getresponse().status < 400
            except OSError:
                return False
            finally:
                conn.close()
        if "tcpSocket" in probe:
            port = _resolve_port(pods[c.pod], c.spec, probe["tcpSocket"]["port"])
            try:
                socket.create_connection((address, port), timeout=max(timeout, 2.0)).close()
                return True
            except OSError:
                return False
        if "exec" in probe:
            return self.exec_in(c.pod, c.name, probe["exec"]["command"], timeout=max(timeout, 10.0)).returncode == 0
        return True

    def exec_in(self, pod: str, container: str, command: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command inside a running container (its namespaces, user, env and workdir), as `kubectl exec`."""
        c = next(x for x in self.containers if x.pod == pod and x.name == container)
        if not c.child_pid:
            raise RehearsalError(f"pod {pod} container {container}: no sandbox pid to enter")
        # bwrap reports the child before it has pivoted into the sandbox's root: wait until the child's root is
        # the sandbox's (its /etc/hosts is the pod's hosts file)
        hosts = os.stat(self.work / "pods" / pod / "hosts")
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                seen = os.stat(f"/proc/{c.child_pid}/root/etc/hosts")
                if (seen.st_dev, seen.st_ino) == (hosts.st_dev, hosts.st_ino):
                    break
            time.sleep(0.05)
        env = [f"{k}={v}" for k, v in c.process.env.items()]
        # -r/-w: the sandbox's root and working directory (bwrap pivoted the root in its mount namespace)
        argv = ["nsenter", "-t", str(c.child_pid), "-U", "-m", "-p", "-u", "-i", "-r", "-w", "--preserve-credentials",
                "env", "-i", *env, *command]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, exc.stdout or "", exc.stderr or "")

    def _start_pod(self, pod: dict, res: PodResult, deadline: float) -> None:
        """One pod (init containers, then the containers); raises what _start_pods records."""
        self._start_pods([pod], {res.name: res}, deadline)
        if res.problem:
            raise kubernetes.PodSpecError(res.problem)

    def _start_container(self, pod: dict, container: dict, dirs: sandbox.PodDirs, hosts: Path) -> _Container:
        name = pod["metadata"]["name"]
        pod, extra_binds = self._pod_overlay(pod, container, dirs)
        pod = _with_env(pod, container["name"], overlay.cpu_path_env(self.s3_endpoint))
        image_ref = container.get("image", "")
        image = overlay.image_config(image_ref)
        proc = kubernetes.container_process(pod, container["name"], self.kube_objects, image,
                                            pod_ip=self.addresses.pod(name), services=self.services,
                                            service_hosts=self.addresses.services)
        iname = sandbox.image_name(image_ref)
        proc.argv, bind_env = overlay.bind_substitutions(iname, proc.argv, self.addresses.pod(name))
        proc.argv = overlay.compressed_time_argv(proc.argv)
        proc.env.update(bind_env)
        argv = sandbox.bwrap_argv(proc, image=image_ref, dirs=dirs, container=container["name"], hosts=hosts,
                                  commands=overlay.IMAGE_COMMANDS.get(iname), extra_ro_binds=extra_binds)
        if mpi.JOB_ROLE_LABEL in pod["metadata"].get("labels", {}):
            self.mpi_volumes_written(dirs)
        info_r, info_w = os.pipe()
        argv = [argv[0], "--info-fd", str(info_w), *argv[1:]]
        log = dirs.root / f"{container['name']}.log"
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, pass_fds=(info_w,))
        os.close(info_w)
        child = None
        with contextlib.suppress(Exception), os.fdopen(info_r) as info:
            import json
            child = json.loads(info.read() or "{}").get("child-pid")
        c = _Container(name, container["name"], p, log, child, container, proc)
        self.containers.append(c)
        return c

    def _pod_overlay(self, pod: dict, container: dict, dirs: sandbox.PodDirs) -> tuple[dict, list[tuple[str, str]]]:
        """(the pod as the rehearsal runs it, extra read-only binds): what a controller's runner adds for the pods
        of its kind (the MPI operator's pods: mpijob.py); nothing for the rest."""
        if mpi.JOB_ROLE_LABEL in pod["metadata"].get("labels", {}):
            return self.mpi_pod_overlay(pod, container, dirs)
        return pod, []

    def stop_pods(self, which: Callable[[dict], bool], grace: float = 10.0) -> None:
        """SIGTERM the process groups of the matching pods' containers, SIGKILL after `grace` seconds."""
        pods = {p["metadata"]["name"]: p for p in self.all_pods}
        victims = [c for c in self.containers if c.pod not in pods or which(pods[c.pod])]
        for c in victims:
            if c.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        for c in victims:
            try:
                c.proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=10)
            self.ready.discard(c.pod)
            _reap_session(c.proc.pid)
        self.containers = [c for c in self.containers if c not in victims]

    def _restart_container(self, pod: dict, container: dict) -> None:
        """The kubelet restarting an exited container in its running pod (restartPolicy OnFailure): the same pod
        directories, volumes (emptyDir and memory contents kept), address and sidecars; only that process anew."""
        name = pod["metadata"]["name"]
        for c in [c for c in self.containers if c.pod == name and c.name == container["name"]]:
            if c.proc.poll() is None:
                raise RehearsalError(f"pod {name} container {c.name} is still running: nothing to restart")
            _reap_session(c.proc.pid)
            self.containers.remove(c)
        dirs, hosts = self._pod_dirs(pod)
        self._start_container(pod, container, dirs, hosts)

    def live_pods(self) -> list[dict]:
        """The pods with a container still running (what the API server would list as Running)."""
        running = {c.pod for c in self.containers if c.proc.poll() is None}
        return [p for p in self.all_pods if p["metadata"]["name"] in running]

    def kill_pod(self, name: str) -> None:
        """SIGKILL one pod's containers (its node or its processes lost mid-run); the pod stays known, as failed."""
        self.stop_pods(lambda pod: pod["metadata"]["name"] == name, grace=0.0)

    def pod_processes(self, name: str, match: str | None = None) -> list[psutil.Process]:
        """The processes running in a pod (every container's sandboxed tree, processes started through its sshd
        included), those whose command line contains `match` if given; deepest first."""
        procs = []
        for c in self.containers:
            if c.pod == name and c.proc.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    procs += psutil.Process(c.proc.pid).children(recursive=True)
        out = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if match is None or match in " ".join(p.cmdline()):
                    out.append(p)
        return out[::-1]

    def signal_processes(self, name: str, sig: int, match: str) -> list[int]:
        """Send `sig` to the processes of pod `name` whose command line contains `match` (SIGKILL: a rank crashed;
        SIGSTOP: a rank hung in a collective, alive but making no steps). Returns their pids; raises when none
        matches, so a test cannot pass by signalling nothing."""
        victims = self.pod_processes(name, match)
        if not victims:
            raise RehearsalError(f"pod {name}: no process whose command line contains {match!r}")
        for p in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        return [p.pid for p in victims]

    def _check_bindings(self, res: PodResult) -> None:
        """A pod listening outside 127.0.0.0/8 fails. Inside the rehearsal's namespace a wildcard bind (0.0.0.0, ::;
        Ray's GCS and raylet, torch's TCPStore) reaches only that namespace's interfaces: allowed while they are
        only `lo` (checked here, not assumed)."""
        only_lo = self.namespace is not None and self.namespace.interfaces() == ["lo"]
        for c in self.containers:
            if c.pod == res.name and c.proc.poll() is None:
                outside = [(a, p) for a, p in network.bound_outside_loopback(c.proc.pid)
                           if not (only_lo and a in ("0.0.0.0", "::"))]
                if outside and not res.problem:
                    res.problem = "listens outside 127.0.0.0/8: " + ", ".join(f"{a}:{p}" for a, p in outside)

    def _log_tail(self, pod: str) -> str:
        out = []
        for log in sorted((self.work / "pods" / pod).glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            out.append(f"[{log.stem}]\n" + "\n".join(lines))
        return "\n".join(out)

    def owner_of(self, pod: dict) -> str:
        return pod["metadata"].get("annotations", {}).get(OWNER_ANNOTATION, "")


def _with_env(pod: dict, container: str, env: dict[str, str]) -> dict:
    """The pod with the overlay's env appended to one container (later entries win in the kubelet's map)."""
    import copy
    pod = copy.deepcopy(pod)
    for c in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]:
        if c["name"] == container:
            c["env"] = [e for e in c.get("env") or [] if e["name"] not in env] + [
                {"name": k, "value": v} for k, v in env.items()]
    return pod


def _reap_session(leader: int, timeout: float = 10.0) -> None:
    """Wait until no process of the sandbox's session is left (the pid namespace's processes die with its
    init, asynchronously); SIGKILL stragglers."""
    end = time.monotonic() + timeout
    while (pids := network._session_pids(leader)) and time.monotonic() < end:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _wait(proc: subprocess.Popen, deadline: float) -> int | None:
    try:
        return proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _resolve_port(pod: dict, container: dict, port) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for c in [container] + pod["spec"]["containers"]:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise RehearsalError(f"pod {pod['metadata']['name']}: no container port named {port!r}")


def _target_port(pod: dict, service_port: dict) -> int:
    target = service_port.get("targetPort", service_port["port"])
    return _resolve_port(pod, pod["spec"]["containers"][0], target)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]
