"""Helpers the domain rules share: values, Kubernetes objects, IAM documents."""
from __future__ import annotations

import json
import re
from typing import Any, Iterator

from policy.rules.base import UNKNOWN, Resource, is_k8s_object  # noqa: F401 (shared with the domain rules)


def is_unknown(value: Any) -> bool:
    return value == UNKNOWN


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def truthy(value: Any) -> bool:
    """Booleans as providers take them: true, "true" (launch templates use strings)."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


NEURON_INSTANCE = re.compile(r"^(trn|inf)\d+[a-z]*\.")
NEURON_FAMILY = re.compile(r"^(trn|inf)\d+[a-z]*$")


def is_neuron_instance_type(name: str) -> bool:
    return bool(NEURON_INSTANCE.match(name))




def kind_of(r: Resource) -> str:
    return r.props.get("kind") or r.type.rsplit(":", 1)[-1]


def policy_document(value: Any) -> dict | None:
    """An IAM policy document from a JSON string or dict; None while unknown."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or is_unknown(value) or not value.strip():
        return None
    try:
        doc = json.loads(value)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def statements(doc: dict | None) -> list[dict]:
    if not doc:
        return []
    return [s for s in as_list(doc.get("Statement")) if isinstance(s, dict)]


def refers_to_bucket(child: Resource, bucket: Resource) -> bool:
    """`child` (a public access block, policy...) belongs to `bucket`: it depends on it
    (its `bucket` input is the bucket's output), or names the bucket's explicit name."""
    if bucket.urn and bucket.urn in child.depends_on:
        return True
    ref, name = child.props.get("bucket"), bucket.props.get("bucket")
    return bool(ref) and not is_unknown(ref) and ref == name


def pod_specs(obj: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every pod spec inside a Kubernetes object, whatever the kind (Deployment, Job,
    MPIJob replica specs, RayCluster head and worker groups...): a mapping with `containers`."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield path or "spec", obj
        for k, v in obj.items():
            if k not in ("containers", "initContainers"):
                yield from pod_specs(v, f"{path}.{k}" if path else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from pod_specs(v, f"{path}[{i}]")


def containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            if isinstance(c, dict):
                yield f"{key}[{i}] ({c.get('name', '?')})", c


def metadata(r: Resource) -> dict:
    meta = r.props.get("metadata")
    return meta if isinstance(meta, dict) else {}
