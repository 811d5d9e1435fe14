"""The platform's hang path in a rehearsal (issue 24 items 3-4): a training gang whose ranks stop making steps
without exiting is noticed by the platform's own `TrainingGangHung` rule and restarted by the platform's own
watchdog, as on the cluster:

- Prometheus (Debian's server, trnctl/rehearse/prometheus.py) scrapes the step counters the platform's PodMonitors
  select among the rehearsal's live pods, and evaluates the alert rule taken from the rendered PrometheusRule
  (infra/monitoring/hang.py builds it). Only its time windows change: every duration in the rule (`trainingHangAfter`
  in the expression, the alert's `for`) and in the watchdog's settings is divided by TIME_SCALE, as scrapes are
  compressed to 1 s; the expression is otherwise the deployed one.
- The watchdog is images/trn_workloads/watchdog.py's `run_once`, with the settings its rendered Deployment's
  container gets (env resolved by trnctl.operators.kubernetes as the kubelet would), and a Kubernetes API
  (`RehearsalApi`, the `Kube` client with its HTTP transport replaced) that answers its calls from the rehearsal:
  pods listed by label selector among the live pods, a pod deleted as the kubelet deletes one (SIGTERM, SIGKILL after
  the pod's grace period), its state ConfigMap from the render with resourceVersion conflicts, and every call
  authorized against the rendered Roles and RoleBindings of the Deployment's ServiceAccount (a call its RBAC does not
  grant is a 403, as on the cluster).

What the operator then does with the deleted pod (Volcano's RestartJob, the launcher Job's new pod, KubeRay's new
worker) is the runner mixin's business (volcanojob.py, mpijob.py, rayjob.py), each from its operator module.
"""
from __future__ import annotations

import copy
import json
import re
import sys
import time
import urllib.parse
from dataclasses import dataclass, field, replace

from infra.agent_code import IMAGES
from infra.monitoring import hang
from trnctl.operators import kubernetes
from trnctl.rehearse.overlay import TIME_SCALE

if str(IMAGES) not in sys.path:  # the watchdog's own code (images/trn_workloads), as its ConfigMap ships it
    sys.path.insert(0, str(IMAGES))
from trn_workloads import watchdog  # noqa: E402
from trn_workloads.kube_api import ApiError, Kube  # noqa: E402
from trnctl.rehearse.results import RehearsalError

DEFAULT_GRACE_SECONDS = 30  # terminationGracePeriodSeconds when a pod does not set it (core/v1 PodSpec default)
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000}


def compressed(duration: str, scale: int = TIME_SCALE) -> str:
    """A Prometheus duration divided by `scale`, in milliseconds (Prometheus accepts `ms`): 20m -> 12000ms."""
    total = sum(int(n) * _UNIT_MS[u] for n, u in _DURATION.findall(duration))
    return f"{max(total // scale, 1)}ms"


def compressed_expression(expr: str, scale: int = TIME_SCALE) -> str:
    """Every range (`[20m]`) and offset (`offset 20m`) of a PromQL expression compressed."""
    expr = re.sub(r"\[((?:\d+(?:ms|s|m|h|d|w|y))+)\]", lambda m: f"[{compressed(m.group(1), scale)}]", expr)
    return re.sub(r"offset\s+((?:\d+(?:ms|s|m|h|d|w|y))+)", lambda m: f"offset {compressed(m.group(1), scale)}", expr)


def hang_rule_group(objects: list[dict], scale: int = TIME_SCALE) -> dict:
    """The rendered rule group holding the TrainingGangHung alert, its windows compressed."""
    for rule_obj in (o for o in objects if o.get("kind") == "PrometheusRule"):
        for group in rule_obj["spec"]["groups"]:
            if any(r.get("alert") == hang.ALERT for r in group["rules"]):
                group = copy.deepcopy(group)
                for r in group["rules"]:
                    r["expr"] = compressed_expression(r["expr"], scale)
                    if r.get("for"):
                        r["for"] = compressed(r["for"], scale)
                return group
    raise RehearsalError(f"the platform render has no PrometheusRule with the {hang.ALERT} alert "
                         "(monitoring.trainingHangAfter off?)")


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """An equality-based label selector (`k=v`, `k==v`, `k!=v`, comma-separated; k8s.io/apimachinery
    pkg/labels/selector.go Parse); any other form is refused rather than guessed."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w.-]*)", term)
        if not m:
            raise ValueError(f"label selector term {term!r}: only equality-based terms are modelled")
        key, op, value = m.groups()
        if (labels.get(key) == value) != (op != "!="):
            return False
    return True


_PATH = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>pods|configmaps)(?:/(?P<name>[^/?]+))?")


@dataclass
class RehearsalApi(Kube):
    """The watchdog's `Kube` client answered by the rehearsal (see the module docstring)."""
    rehearsal: object = None
    objects: list[dict] = field(default_factory=list)  # the render: Roles, RoleBindings, the state ConfigMap
    service_account: tuple[str, str] = ("", "")
    configmaps: dict[tuple[str, str], dict] = field(default_factory=dict)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, body: dict | list | None = None,
                content_type: str = "application/json") -> dict:
        url = urllib.parse.urlsplit(path)
        m = _PATH.fullmatch(url.path)
        if not m:
            raise ApiError(404, f"{method} {url.path}: not served by the rehearsal's API")
        ns, resource, name = m["ns"], m["resource"], m["name"] or ""
        verb = kubernetes.request_verb(method, bool(name))
        self.calls.append(f"{verb} {resource} {ns}/{name}".rstrip("/"))
        if not kubernetes.rbac_allows(self.objects, self.service_account, verb, "", resource, ns, name):
            sa = "system:serviceaccount:{}:{}".format(*self.service_account)
            raise ApiError(403, f'{resource} "{name}" is forbidden: User "{sa}" cannot {verb} resource "{resource}" '
                                f'in API group "" in the namespace "{ns}"')
        if resource == "pods":
            return self._pods(verb, ns, name, dict(urllib.parse.parse_qsl(url.query)))
        return self._configmap(verb, ns, name, body)

    def _live(self, ns: str) -> list[dict]:
        return [p for p in self.rehearsal.live_pods() if p["metadata"].get("namespace") == ns]

    def _pods(self, verb: str, ns: str, name: str, query: dict) -> dict:
        if verb == "list":
            selector = query.get("labelSelector", "")
            return {"kind": "PodList", "items": [{**p, "status": {"phase": "Running"}} for p in self._live(ns)
                                                 if selector_matches(selector, p["metadata"].get("labels") or {})]}
        pod = next((p for p in self._live(ns) if p["metadata"]["name"] == name), None)
        if pod is None:
            raise ApiError(404, f'pods "{name}" not found')
        grace = (pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)) / TIME_SCALE
        self.rehearsal.stop_pods(lambda p: p["metadata"]["name"] == name, grace=max(grace, 1.0))
        self.deleted.append((ns, name))
        return {"kind": "Pod", "metadata": pod["metadata"]}

    def _configmap(self, verb: str, ns: str, name: str, body) -> dict:
        current = self.configmaps.get((ns, name))
        if current is None:
            raise ApiError(404, f'configmaps "{name}" not found')
        if verb == "get":
            return copy.deepcopy(current)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiError(409, f'Operation cannot be fulfilled on configmaps "{name}": the object has been modified')
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        self.configmaps[(ns, name)] = stored
        return copy.deepcopy(stored)


def _watchdog_deployment(objects: list[dict]) -> dict:
    found = [o for o in objects if o.get("kind") == "Deployment" and o["metadata"]["name"] == hang.WATCHDOG]
    if not found:
        raise RehearsalError(f"the platform render has no {hang.WATCHDOG} Deployment "
                             "(monitoring.trainingHangRestarts 0?)")
    return found[0]


def watchdog_settings(objects: list[dict], scale: int = TIME_SCALE) -> tuple[watchdog.Settings, tuple[str, str]]:
    """The settings the watchdog's container gets (its env as the kubelet resolves it), time compressed, and its
    ServiceAccount."""
    dep = _watchdog_deployment(objects)
    [pod] = kubernetes.pods(dep, None)
    env = kubernetes.container_env(pod, pod["spec"]["containers"][0], objects)
    s = watchdog.Settings.from_env(env)
    s = replace(s, window_seconds=s.window_seconds / scale, cooldown_seconds=s.cooldown_seconds / scale,
                interval_seconds=1.0)
    return s, (pod["metadata"]["namespace"], pod["spec"].get("serviceAccountName", "default"))


@dataclass
class Restart:
    """One pass of the watchdog that deleted a pod: which, what it said, and when (monotonic)."""
    namespace: str
    pod: str
    lines: list[str]
    at: float


class HangWatch:
    """Prometheus with the hang rule plus the watchdog, over one rehearsal (see the module docstring)."""

    def __init__(self, rehearsal, scale: int = TIME_SCALE) -> None:
        self.rehearsal = rehearsal
        objects = rehearsal.stack.all_objects()
        self.rule_group = hang_rule_group(objects, scale)
        self.settings, sa = watchdog_settings(objects, scale)
        state = next(o for o in objects if o.get("kind") == "ConfigMap"
                     and o["metadata"]["name"] == self.settings.state_configmap
                     and o["metadata"].get("namespace") == self.settings.state_namespace)
        state = copy.deepcopy(state)
        state["metadata"]["resourceVersion"] = "1"
        self.api = RehearsalApi("https://kubernetes.default.svc", rehearsal=rehearsal, objects=objects,
                                service_account=sa,
                                configmaps={(self.settings.state_namespace, self.settings.state_configmap): state})
        self.prometheus = None
        self._targets: set[str] = set()
        self.log: list[str] = []

    def start(self) -> "HangWatch":
        live = self.rehearsal.live_pods()
        self.prometheus = self.rehearsal.start_prometheus(rule_groups=[self.rule_group], pods=live)
        self._targets = {p["metadata"]["name"] for p in live}
        return self

    def query(self, expr: str) -> dict:
        """The watchdog's query to PROMETHEUS_URL as its Deployment sets it (the Service's name, resolved to the
        rehearsal's Prometheus address)."""
        return watchdog.query_prometheus(self.rehearsal.url_in_cluster(self.settings.prometheus_url), expr, timeout=5)

    def poll(self) -> list[str]:
        """Targets follow the live pods (a reload when they changed); one watchdog pass (its lines)."""
        live = self.rehearsal.live_pods()
        names = {p["metadata"]["name"] for p in live}
        if names != self._targets:
            self.prometheus.reload(live)
            self._targets = names
        lines = watchdog.run_once(self.api, self.query, self.settings, time.time())
        self.log += lines
        return lines

    def until_restart(self, timeout: float) -> Restart:
        """Poll once a second until the watchdog deletes a pod; RehearsalError (with what it said) otherwise."""
        seen = len(self.api.deleted)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lines = self.poll()
            if len(self.api.deleted) > seen:
                ns, pod = self.api.deleted[seen]
                return Restart(ns, pod, lines, time.monotonic())
            time.sleep(self.settings.interval_seconds)
        alerts = self.query(watchdog.QUERY)["data"]["result"]
        steps = self.query(hang.STEPS)["data"]["result"]
        raise RehearsalError(f"no gang restart within {timeout:.0f}s: watchdog said {self.log[-5:]}, firing "
                             f"{[a['metric'] for a in alerts]}, counters "
                             f"{json.dumps([(s['metric'].get('pod'), s['value'][1]) for s in steps])}")
