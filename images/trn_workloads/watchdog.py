"""Restart hung training gangs: for every firing `TrainingGangHung` alert (infra/monitoring/hang.py),
delete the job's pod labelled `trn-platform/gang-restart`, so its operator restarts every rank from
the newest checkpoint (workloads/progress.py says how each one does). At most MAX_RESTARTS per job
in WINDOW_SECONDS, and none within COOLDOWN_SECONDS of the previous one (a restarted gang first
loads its checkpoint; the alert only fires again after it had the whole window).

    python3 -m trn_workloads.watchdog     # environment: see Settings.from_env

Standard library only (it runs in the neuron-monitor image, shipped in a ConfigMap); the
decisions are pure functions, the clients are passed in.
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

from .kube_api import ApiError, Kube
from .rate_bound import decide, history_from_configmap, history_to_configmap

ALERT = "TrainingGangHung"  # infra/monitoring/hang.py ALERT
GANG_RESTART_LABEL = "trn-platform/gang-restart"  # workloads/progress.py GANG_RESTART_LABEL
STACK_LABEL = "app.kubernetes.io/instance"  # workloads/common.py labels(): the stack
QUERY = f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}'


@dataclass(frozen=True, order=True)
class HungJob:
    namespace: str
    workload: str
    stack: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.stack}"


def hung_jobs(response: dict) -> list[HungJob]:
    """The jobs of a Prometheus /api/v1/query answer for QUERY (a vector of ALERTS samples)."""
    if response.get("status") != "success":
        raise ValueError(f"Prometheus query failed: {response.get('error', response)}")
    return sorted({HungJob(m["namespace"], m["workload"], m["stack"])
                   for m in (r["metric"] for r in response["data"]["result"])
                   if {"namespace", "workload", "stack"} <= m.keys()})


def restart_target(pods: list[dict]) -> dict | None:
    """The pod to delete: one that is not already going away, the oldest name first."""
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") in ("Running", "Pending")]
    return min(live, key=lambda p: p["metadata"]["name"], default=None)


def selector(job: HungJob) -> str:
    return f"{STACK_LABEL}={job.stack},{GANG_RESTART_LABEL}=true"


@dataclass(frozen=True)
class Settings:
    prometheus_url: str
    state_namespace: str
    state_configmap: str
    max_restarts: int
    window_seconds: float
    cooldown_seconds: float
    interval_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        return cls(prometheus_url=env["PROMETHEUS_URL"], state_namespace=env["POD_NAMESPACE"],
                   state_configmap=env["STATE_CONFIGMAP"], max_restarts=int(env["MAX_RESTARTS"]),
                   window_seconds=float(env["WINDOW_SECONDS"]), cooldown_seconds=float(env["COOLDOWN_SECONDS"]),
                   interval_seconds=float(env.get("INTERVAL_SECONDS", "60")))


def query_prometheus(url: str, expr: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}",
                                timeout=timeout) as resp:
        return json.loads(resp.read())


def run_once(kube: Kube, query: Callable[[str], dict], s: Settings, now: float) -> list[str]:
    """One pass: what it did or why not, one line per hung job."""
    out = []
    for job in hung_jobs(query(QUERY)):
        cm = kube.get_configmap(s.state_namespace, s.state_configmap)
        decision = decide(history_from_configmap(cm.get("data")), key=job.key, now=now, limit=s.max_restarts,
                          window_seconds=s.window_seconds, cooldown_seconds=s.cooldown_seconds,
                          what=f"gang restarts of {job.key}")
        if not decision.allowed:
            out.append(f"{job.key} ({job.workload}) hung, not restarted: {decision.reason}")
            continue
        target = restart_target(kube.list_pods(job.namespace, selector(job)))
        if target is None:
            out.append(f"{job.key} ({job.workload}) hung, but no live pod matches {selector(job)}")
            continue
        try:  # record first: a conflict means another pass acted, so this one does not
            kube.replace_configmap(s.state_namespace, s.state_configmap,
                                   {**cm, "data": history_to_configmap(decision.history)})
        except ApiError as e:
            if e.status == 409:
                out.append(f"{job.key}: the restart history changed meanwhile; next pass decides")
                continue
            raise
        kube.delete_pod(job.namespace, target["metadata"]["name"])
        out.append(f"{job.key} ({job.workload}) hung: deleted pod {target['metadata']['name']} to restart the gang "
                   f"from its newest checkpoint ({decision.reason})")
    return out


def main() -> int:
    s = Settings.from_env(dict(os.environ))
    kube = Kube.in_cluster()
    while True:  # a Deployment's process: runs until the pod is stopped
        try:
            for line in run_once(kube, lambda q: query_prometheus(s.prometheus_url, q), s, time.time()):
                print(line, flush=True)
        except (OSError, ValueError, ApiError) as e:  # Prometheus or the API briefly away: next pass
            print(f"watchdog: {e}", file=sys.stderr, flush=True)
        time.sleep(s.interval_seconds)


if __name__ == "__main__":
    sys.exit(main())
