"""Kubernetes rules: pinned images and charts, requests and limits, no privileged pods or exposed
dashboards, no secret values in env or outputs."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from policy.rules.base import (
    UNKNOWN,
    Resource,
    is_k8s_object,
    resource_rule,
    stack_rule,
)
from policy.rules.exceptions import PrivilegedWorkload, exceptions
from policy.rules.helpers import containers, is_unknown, kind_of, metadata, pod_specs, truthy
from stackfiles.records import SECRET_MASK

# An image is pinned by digest, or by a tag carrying at least major.minor.patch (an
# optional leading `v`, and a suffix after `-`, `+`, `.` or `_` such as
# `2.26.1-neuronx-py310-ubuntu22.04` or `v1.21.1-eksbuild.1`). `latest`, no tag, and
# floating tags like `0.8`, `v1` or `stable` are refused: they change under a running workload.
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-+._][0-9A-Za-z][0-9A-Za-z._+-]*)?$")


def image_pin_problem(image: str) -> str | None:
    """Why `image` is not pinned, or None if it is."""
    if DIGEST.search(image):
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (pulls :latest)"
    tag = last.rsplit(":", 1)[1]
    if not EXACT_TAG.match(tag):
        return f"image {image!r}: tag {tag!r} is not an exact version (major.minor.patch) or a digest"
    return None


def tag_pin_problem(where: str, tag: str) -> str | None:
    if tag == "" or is_unknown(tag) or EXACT_TAG.match(tag) or re.match(r"^sha256:[0-9a-f]{64}$", tag):
        return None  # empty: the chart's own pinned appVersion
    return f"{where}: tag {tag!r} is not an exact version (major.minor.patch) or a digest"


def helm_image_problems(values: Any, path: str = "values") -> Iterator[str]:
    """Image references in Helm values: `image: repo:tag` strings and `...tag` keys."""
    if isinstance(values, dict):
        for k, v in values.items():
            p = f"{path}.{k}"
            if isinstance(v, str) and k == "image" and not is_unknown(v):
                problem = image_pin_problem(v)
                if problem:
                    yield f"{p}: {problem}"
            elif isinstance(v, str) and (k.lower().endswith("tag") or k.lower().endswith("tag_version")):
                problem = tag_pin_problem(p, v)
                if problem:
                    yield problem
            else:
                yield from helm_image_problems(v, p)
    elif isinstance(values, list):
        for i, v in enumerate(values):
            yield from helm_image_problems(v, f"{path}[{i}]")


REMOTE_REF = re.compile(r"[?&]ref=([^&]+)")


def kustomization_problems(directory: str) -> Iterator[str]:
    path = Path(directory) / "kustomization.yaml"
    if not path.exists():
        yield f"{path} not found: cannot check the images it deploys"
        return
    doc = yaml.safe_load(path.read_text()) or {}
    for i, res in enumerate(doc.get("resources") or []):
        if isinstance(res, str) and res.startswith(("http://", "https://", "github.com/")):
            m = REMOTE_REF.search(res)
            if not m or not EXACT_TAG.match(m.group(1)):
                yield f"{path}: resources[{i}] {res!r} is not pinned to an exact ?ref=<version>"
    for i, img in enumerate(doc.get("images") or []):
        if img.get("digest"):
            continue
        problem = tag_pin_problem(f"{path}: images[{i}] ({img.get('name')}).newTag", str(img.get("newTag", "")))
        if problem or "newTag" not in img:
            yield problem or f"{path}: images[{i}] ({img.get('name')}) sets neither newTag nor digest"


@resource_rule("k8s-images-pinned", "mandatory", ("kubernetes:*",),
               what="every container image is pinned: a digest or an exact major.minor.patch tag "
                    "(manifests, Helm values, kustomizations)",
               why="`latest`, tag-less and floating tags (`:0.8`, `:v1`) change under a running workload and "
                   "make rollbacks and audits impossible",
               fix="use image:<exact version> (e.g. :2.26.1) or image@sha256:<digest>")
def check_images_pinned(r: Resource) -> Iterator[str]:
    if r.type.startswith("kubernetes:helm.sh/"):
        yield from helm_image_problems(r.props.get("values") or {})
    elif r.type.startswith("kubernetes:kustomize/"):
        directory = r.props.get("directory")
        if isinstance(directory, str) and not directory.startswith(("http://", "https://")):
            yield from kustomization_problems(directory)
    elif is_k8s_object(r):
        for path, spec in pod_specs(r.props):
            for where, c in containers(spec):
                image = c.get("image")
                if not isinstance(image, str) or not image:
                    yield f"{path}.{where}: no image"
                elif not is_unknown(image):
                    problem = image_pin_problem(image)
                    if problem:
                        yield f"{path}.{where}: {problem}"


@resource_rule("k8s-charts-pinned", "mandatory", ("kubernetes:helm.sh/*",),
               what="every Helm release pins an exact chart version",
               why="without a version Helm installs whatever the repository serves today",
               fix="set version='<major.minor.patch>' on the Release")
def check_chart_pinned(r: Resource) -> Iterator[str]:
    version = str(r.props.get("version") or "")
    if not EXACT_TAG.match(version):
        yield f"chart {r.props.get('chart')!r}: version {version or '(none)'!r} is not an exact major.minor.patch"


RESOURCE_KEYS = ("cpu", "memory")


@resource_rule("k8s-requests-limits", "mandatory", ("kubernetes:*",),
               what="every workload container sets requests and limits for cpu and memory",
               why="without requests the scheduler packs pods blindly and Karpenter sizes nodes wrong; without limits "
                   "one runaway process starves the Neuron runtime on the node",
               fix="resources: {requests: {cpu, memory}, limits: {cpu, memory}} on every container and init container")
def check_requests_limits(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    for path, spec in pod_specs(r.props):
        for where, c in containers(spec):
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                missing = [k for k in RESOURCE_KEYS if k not in (res.get(kind) or {})]
                if missing:
                    yield f"{path}.{where}: resources.{kind} lacks {', '.join(missing)}"


def privilege_features(spec: dict) -> list[tuple[str, str]]:
    """(feature, where) for each privileged setting of a pod spec."""
    found = [(f, f) for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f) is True]
    found += [("hostPath", f"volumes[{i}] ({v.get('name')})") for i, v in enumerate(spec.get("volumes") or [])
              if isinstance(v, dict) and "hostPath" in v]
    for where, c in containers(spec):
        sc = c.get("securityContext") or {}
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if sc.get("privileged") is True:
            found.append(("privileged", f"{where} securityContext.privileged"))
        elif added & {"SYS_ADMIN", "ALL"}:
            found.append(("privileged", f"{where} capabilities.add {sorted(added & {'SYS_ADMIN', 'ALL'})}"))
    return found


def privileged_exception(r: Resource, feature: str) -> PrivilegedWorkload | None:
    meta = metadata(r)
    for e in exceptions().privileged_workloads:
        if (meta.get("namespace") == e.namespace and fnmatch.fnmatchcase(str(meta.get("name", "")), e.name)
                and feature in e.allows):
            return e
    return None


@resource_rule("k8s-no-privileged-pods", "mandatory", ("kubernetes:*",),
               what="no privileged containers, hostPath volumes or host namespaces, except the device plugins and "
                    "CSI drivers allow-listed in policy/exceptions.yaml",
               why="a privileged or hostPath pod owns the node: its kubelet credentials, the node role and other pods",
               fix="drop privileged/hostPath; Neuron devices come from the device plugin via aws.amazon.com/neuron "
                   "requests, shared data from the FSx PVC")
def check_no_privileged(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    for path, spec in pod_specs(r.props):
        for feature, where in privilege_features(spec):
            if not privileged_exception(r, feature):
                yield f"{path}: {feature} ({where})"


DASHBOARD = re.compile(r"tensorboard|ray|grafana|dashboard|prometheus|kibana|jupyter", re.I)
DASHBOARD_PORTS = {6006: "TensorBoard", 8265: "Ray dashboard", 3000: "Grafana", 9090: "Prometheus", 8888: "Jupyter"}
EXPOSED_TYPES = ("LoadBalancer", "NodePort")


def _service_names(r: Resource) -> list[str]:
    meta = metadata(r)
    spec = r.props.get("spec") or {}
    return ([str(meta.get("name", ""))] + [str(v) for v in (meta.get("labels") or {}).values()]
            + [str(v) for v in (spec.get("selector") or {}).values()]
            + [str(p.get("name", "")) for p in spec.get("ports") or []])


@resource_rule("k8s-no-exposed-dashboards", "mandatory", ("kubernetes:*",),
               what="no LoadBalancer or NodePort Service (or RayCluster serviceType) exposes a dashboard: "
                    "TensorBoard, Ray, Grafana, Prometheus, Jupyter",
               why="these dashboards have no authentication; Ray's accepts job submissions, i.e. remote code execution",
               fix="use type: ClusterIP and `kubectl port-forward`, or an authenticated ingress")
def check_no_exposed_dashboards(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    kind = kind_of(r)
    spec = r.props.get("spec") or {}
    if kind == "Service" and spec.get("type") in EXPOSED_TYPES:
        named = [n for n in _service_names(r) if DASHBOARD.search(n)]
        ports = [DASHBOARD_PORTS[p.get(k)] for p in spec.get("ports") or [] for k in ("port", "targetPort")
                 if p.get(k) in DASHBOARD_PORTS]
        if named or ports:
            yield f"Service type {spec['type']} exposes {', '.join(sorted(set(named + ports)))}"
    for key, head in (("headGroupSpec", spec.get("headGroupSpec")),
                      ("rayClusterSpec.headGroupSpec", (spec.get("rayClusterSpec") or {}).get("headGroupSpec"))):
        if isinstance(head, dict) and head.get("serviceType") in EXPOSED_TYPES:
            yield f"spec.{key}.serviceType {head['serviceType']} exposes the Ray dashboard and job API"


# kube-prometheus-stack and the Grafana chart: where each UI's values live (chart values keys
# of prometheus-community kube-prometheus-stack 88.5.3 and grafana-community grafana 12.11.1).
MONITORING_CHARTS = {"kube-prometheus-stack": ("prometheus", "alertmanager", "grafana"), "grafana": ("",)}


def _chart_name(chart: Any) -> str:
    return str(chart or "").rstrip("/").rsplit("/", 1)[-1]


@resource_rule("k8s-monitoring-private", "mandatory", ("kubernetes:helm.sh/*",),
               what="Prometheus, Alertmanager and Grafana (kube-prometheus-stack, grafana charts) are ClusterIP only "
                    "with no ingress; Grafana has anonymous access off and its admin login from an existing Secret",
               why="Prometheus and Alertmanager have no authentication; a chart-default Grafana login "
                   "(admin/prom-operator) or a literal password in values is readable by anyone who can read the "
                   "Helm release or the Pulumi state",
               fix="keep service.type ClusterIP and ingress disabled (reach them with the `monitoring` stack "
                   "output's port-forward commands); set grafana.admin.existingSecret to a Secret filled from a Pulumi "
                   "secret and grafana.ini auth.anonymous.enabled false")
def check_monitoring_private(r: Resource) -> Iterator[str]:
    components = MONITORING_CHARTS.get(_chart_name(r.props.get("chart")))
    values = r.props.get("values")
    if components is None or not isinstance(values, dict):
        return
    for component in components:
        v = values.get(component) if component else values
        where = f"{component}." if component else ""
        if not isinstance(v, dict):
            v = {}
        service_type = (v.get("service") or {}).get("type")
        if service_type in EXPOSED_TYPES:
            yield f"{where}service.type {service_type} exposes it outside the cluster"
        if truthy((v.get("ingress") or {}).get("enabled")):
            yield f"{where}ingress.enabled: an ingress exposes it"
        if component in ("grafana", ""):
            if v.get("adminPassword") not in (None, ""):
                yield f"{where}adminPassword is a literal in the chart values"
            if not (v.get("admin") or {}).get("existingSecret"):
                yield f"{where}admin.existingSecret is not set: the chart's default or generated login applies"
            if truthy(((v.get("grafana.ini") or {}).get("auth.anonymous") or {}).get("enabled")):
                yield f"{where}grafana.ini auth.anonymous.enabled: anyone reaching Grafana is logged in"


SECRET_ENV_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIALS?)(_|$)", re.I)


@resource_rule("k8s-no-secret-env-values", "mandatory", ("kubernetes:*",),
               what="no container env variable named like a secret (TOKEN, SECRET, PASSWORD, KEY, CREDENTIALS) "
                    "has a literal `value`",
               why="literal env values are stored in the manifest, the Pulumi state and `kubectl get -o yaml` output",
               fix="put the value in a Kubernetes Secret (from `pulumi config set --secret`) and use "
                   "env[].valueFrom.secretKeyRef, or mount it as a file")
def check_no_secret_env(r: Resource) -> Iterator[str]:
    if not is_k8s_object(r):
        return
    for path, spec in pod_specs(r.props):
        for where, c in containers(spec):
            for e in c.get("env") or []:
                if isinstance(e, dict) and "value" in e and e.get("value") not in ("", None) \
                        and SECRET_ENV_NAME.search(str(e.get("name", ""))):
                    yield f"{path}.{where}: env {e['name']} has a literal value"


# Shapes of well-known credentials, and output names that say "this is a secret".
TOKEN_PATTERNS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(ghp|gho|ghs|ghu)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{40,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "API secret key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
}
SECRET_OUTPUT_NAME = re.compile(r"(token|secret|password|passwd|credentials?)$", re.I)


def secret_output_problems(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from secret_output_problems(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from secret_output_problems(v, f"{path}[{i}]")
    elif isinstance(value, str) and value not in (SECRET_MASK, "", UNKNOWN):
        for what, pattern in TOKEN_PATTERNS.items():
            if pattern.search(value):
                yield f"output {path} holds what looks like a {what}, unmasked"
                return
        last = re.split(r"[.\[]", path)[-1]
        if SECRET_OUTPUT_NAME.search(last):
            yield f"output {path} is named like a secret and is not marked secret"


@stack_rule("outputs-no-secrets", "mandatory",
            what="stack outputs never carry a credential unmasked",
            why="stack outputs are shown by `pulumi stack output` and readable by every StackReference",
            fix="export it with pulumi.Output.secret(...) (or do not export it at all)")
def check_outputs_no_secrets(resources: list[Resource], outputs: dict) -> Iterator[tuple[None, str]]:
    for problem in secret_output_problems(outputs or {}, ""):
        yield None, problem
