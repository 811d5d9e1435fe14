"""What the cluster's controllers make of our objects: one module per upstream operator.

Shared interface (see each module for its rules, each cited to the upstream file at the pinned tag):

- `Context`: the operator settings read from the platform render (KubeRay's batch scheduler, the cluster
  domain) and `generate_ssh_keypair()` for Secrets a controller generates (MPI operator's ssh keys).
- `controller_for(obj)`: the module that controls an object's (apiVersion, kind), imported by name, so a
  module that does not exist yet fails only when an object of its kind is used.
- `all_pods(objects, ctx)`, `all_services(objects, ctx)`, `all_config_objects(objects, ctx)`: the pods,
  Services and ConfigMaps/Secrets that exist once the controllers have acted on `objects` (the objects'
  own Services/ConfigMaps/Secrets included).
- `dns_records(objects, ctx)`: cluster DNS name -> pod name (Kubernetes DNS-based service discovery:
  kubernetes/dns@master:docs/specification.md, sections 2.3.1 ClusterIP, 2.4 headless and pod hostnames).
- `admission_problems(objects, ctx)`: what a controller refuses or never acts on, one message each.

Each operator module exposes `KINDS`, `pods(obj, ctx)`, `services(obj, ctx)`, `config_objects(obj, ctx)`,
`admission_problems(obj, ctx)` (the last three optional: absent means "creates none / refuses nothing").
"""
from __future__ import annotations

import importlib
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

CLUSTER_DOMAIN = "cluster.local"  # EKS's kubelet --cluster-domain (and CoreDNS's zone)
OWNER_ANNOTATION = "trn-platform.rehearse/owner"  # "<Kind>/<name>": the object a pod/service was made from

# (apiVersion, kind) -> module that controls it. Kinds missing here create no pods or services.
CONTROLLERS: dict[tuple[str, str], str] = {
    **{key: "trnctl.operators.kubernetes" for key in (
        ("v1", "Pod"), ("batch/v1", "Job"), ("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"),
        ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"))},
    **{key: "trnctl.operators.kuberay" for key in (
        ("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayService"))},
    ("kubeflow.org/v2beta1", "MPIJob"): "trnctl.operators.mpi",
    ("batch.volcano.sh/v1alpha1", "Job"): "trnctl.operators.volcano",
    ("keda.sh/v1alpha1", "ScaledObject"): "trnctl.operators.keda",
}


def generate_ssh_keypair_openssh() -> tuple[str, str]:
    """A fresh ed25519 key pair (private key in OpenSSH format, public key line), from ssh-keygen."""
    with tempfile.TemporaryDirectory(prefix="trn-sshkey-") as tmp:
        key = Path(tmp) / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rehearsal", "-f", str(key)],
                       check=True, capture_output=True, timeout=30)
        return key.read_text(), (key.with_suffix(".pub")).read_text()


@dataclass
class Context:
    """Cluster-wide settings the controllers act on, read once from the platform render."""
    cluster_domain: str = CLUSTER_DOMAIN
    kuberay_batch_scheduler: str | None = None  # kuberay-operator chart value batchScheduler.name
    helm_values: dict[str, dict] = field(default_factory=dict)  # release name -> values, for other modules
    ssh_keypair: Callable[[], tuple[str, str]] = generate_ssh_keypair_openssh
    _ssh_cache: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    def generate_ssh_keypair(self, owner: str = "") -> tuple[str, str]:
        """(private, public) key for `owner`; the same pair for the same owner within one Context, as the
        controller generates its Secret once per job."""
        if owner not in self._ssh_cache:
            self._ssh_cache[owner] = self.ssh_keypair()
        return self._ssh_cache[owner]

    @classmethod
    def from_helm_releases(cls, releases: Iterable[dict], **overrides: Any) -> "Context":
        """From the platform render's Helm releases ({"release"/"name", "values"} dicts, as in helm/*.yaml)."""
        values = {(r.get("release") or r.get("name")): (r.get("values") or {}) for r in releases}
        kuberay = values.get("kuberay-operator") or next(
            (v for k, v in values.items() if k and "kuberay" in k), {})
        scheduler = (kuberay.get("batchScheduler") or {}).get("name") or None
        return cls(kuberay_batch_scheduler=scheduler, helm_values=values, **overrides)


def key_of(obj: dict) -> tuple[str, str]:
    return obj.get("apiVersion", ""), obj.get("kind", "")


def controller_for(obj: dict) -> ModuleType | None:
    """The operator module that acts on `obj`, or None for kinds no controller turns into pods."""
    name = CONTROLLERS.get(key_of(obj))
    return importlib.import_module(name) if name else None


def describe(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name')}"


def _from_controllers(objects: Iterable[dict], ctx: Context, attr: str) -> list[dict]:
    out: list[dict] = []
    for obj in objects:
        module = controller_for(obj)
        fn = getattr(module, attr, None) if module else None
        if fn is not None:
            out.extend(fn(obj, ctx))
    return out


def all_pods(objects: Iterable[dict], ctx: Context) -> list[dict]:
    return _from_controllers(list(objects), ctx, "pods")


def all_services(objects: Iterable[dict], ctx: Context) -> list[dict]:
    objects = list(objects)
    return [o for o in objects if key_of(o) == ("v1", "Service")] + _from_controllers(objects, ctx, "services")


def all_config_objects(objects: Iterable[dict], ctx: Context) -> list[dict]:
    objects = list(objects)
    own = [o for o in objects if key_of(o) in (("v1", "ConfigMap"), ("v1", "Secret"))]
    return own + _from_controllers(objects, ctx, "config_objects")


def admission_problems(objects: Iterable[dict], ctx: Context) -> list[str]:
    return [p for obj in objects for p in _problems_of(obj, ctx)]


def _problems_of(obj: dict, ctx: Context) -> list[str]:
    module = controller_for(obj)
    fn = getattr(module, "admission_problems", None) if module else None
    return list(fn(obj, ctx)) if fn else []


def selects(selector: dict | None, labels: dict | None) -> bool:
    """A Service's equality selector (spec.selector) matches these labels; an empty one selects nothing
    (a Service without a selector gets no Endpoints from the endpoints controller)."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_hostname(pod: dict) -> str:
    """spec.hostname, else the pod name (the kubelet's GeneratePodHostNameAndDomain, truncated to 63)."""
    # source: kubernetes/kubernetes@v1.34.0:pkg/kubelet/kubelet_pods.go (GeneratePodHostNameAndDomain)
    return (pod.get("spec", {}).get("hostname") or pod["metadata"]["name"])[:63]


def service_endpoints(pods: list[dict], services: list[dict]) -> dict[tuple[str, str], list[str]]:
    """(namespace, service) -> names of the pods its selector matches, sorted (readiness is the caller's)."""
    out: dict[tuple[str, str], list[str]] = {}
    for svc in services:
        meta = svc["metadata"]
        ns = meta.get("namespace", "default")
        selector = (svc.get("spec") or {}).get("selector")
        out[(ns, meta["name"])] = sorted(p["metadata"]["name"] for p in pods
                                         if p["metadata"].get("namespace", "default") == ns
                                         and selects(selector, p["metadata"].get("labels")))
    return out


def dns_records(objects: Iterable[dict], ctx: Context) -> dict[str, str]:
    """Cluster DNS names -> the pod that answers them.

    - A Service `s` in namespace `n` (ClusterIP or headless): `s.n.svc.<domain>`, `s.n.svc`, `s.n` and `s`
      (the short forms are what a pod's resolv.conf search path `n.svc.<domain> svc.<domain> <domain>`
      completes; /etc/hosts has no search path, so they are listed; `s` alone is right only inside `n`,
      and every pod of a stack lives in one namespace). It resolves to the first selected pod by name
      (the runner re-points it to a ready one).
    - A pod with `hostname` and `subdomain` where a headless Service named `subdomain` exists in its
      namespace: `hostname.subdomain.n.svc.<domain>` and the shorter forms down to `hostname.subdomain`.
    source: kubernetes/dns@master:docs/specification.md (2.3 ClusterIP records, 2.4 headless Services and
    hostname/subdomain records); resolv.conf search path: kubernetes/kubernetes@v1.34.0:pkg/kubelet/network/dns/dns.go
    """
    objects = list(objects)
    pods = all_pods(objects, ctx)
    services = all_services(objects, ctx)
    endpoints = service_endpoints(pods, services)
    records: dict[str, str] = {}

    def add(parts: list[str], pod: str) -> None:
        # longest first: name.ns.svc.domain, name.ns.svc, name.ns, name
        full = parts + ["svc", *ctx.cluster_domain.split(".")]
        for cut in (len(full), len(parts) + 1, len(parts)):
            records.setdefault(".".join(full[:cut]), pod)

    headless = set()
    for svc in services:
        ns, name = svc["metadata"].get("namespace", "default"), svc["metadata"]["name"]
        if (svc.get("spec") or {}).get("clusterIP") == "None":
            headless.add((ns, name))
        selected = endpoints.get((ns, name)) or []
        if selected:
            add([name, ns], selected[0])
            records.setdefault(name, selected[0])
    for pod in pods:
        spec, meta = pod.get("spec") or {}, pod["metadata"]
        ns, sub = meta.get("namespace", "default"), spec.get("subdomain")
        if sub and (ns, sub) in headless:
            add([pod_hostname(pod), sub, ns], meta["name"])
            records.setdefault(f"{pod_hostname(pod)}.{sub}", meta["name"])
    return records
