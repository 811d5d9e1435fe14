"""Small agents written for the standard library (images/trn_workloads/: the burn-in, the hang
watchdog) ship to their pods in a ConfigMap, mounted as a package tree at CODE_ROOT, so they run
in an image the platform already pulls (a Neuron DLC, the neuron-monitor image) instead of one
more image to build and pin."""
from __future__ import annotations

from pathlib import Path

IMAGES = Path(__file__).resolve().parent.parent / "images"
CODE_ROOT = "/opt/trn-agent"
SHARED_MODULES = ("trn_workloads/__init__.py", "trn_workloads/kube_api.py", "trn_workloads/rate_bound.py")


def package_modules(package: str) -> list[str]:
    """`trn_workloads/<package>/*.py`, relative to images/."""
    return sorted(str(p.relative_to(IMAGES)) for p in (IMAGES / "trn_workloads" / package).glob("*.py"))


def code_configmap(name: str, *, namespace: str, labels: dict[str, str], modules: list[str]) -> tuple[dict, list[dict]]:
    """The ConfigMap holding `modules` (paths relative to images/) and the volume `items` that
    put each back at its path (ConfigMap keys cannot hold `/`)."""
    files = sorted({*SHARED_MODULES, *modules})
    key = {m: m.replace("/", ".") for m in files}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                 "data": {key[m]: (IMAGES / m).read_text() for m in files}}
    return configmap, [{"key": key[m], "path": m} for m in files]


def resource_args(manifest: dict) -> dict:
    """A built-in object's manifest as arguments of its pulumi_kubernetes class: top-level keys
    in snake case (`roleRef` -> `role_ref`), apiVersion and kind left to the class."""
    return {"".join(f"_{c.lower()}" if c.isupper() else c for c in k): v
            for k, v in manifest.items() if k not in ("apiVersion", "kind")}
