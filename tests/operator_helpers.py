"""Rendered objects and the operator Context of the repository's stacks, for the tests of trnctl/operators."""
from __future__ import annotations

import copy
import functools

from stackfiles.records import unwrap_secrets
from tests.platform_helpers import REPO, rendered_platform, rendered_workload
from trnctl.operators import Context
from trnctl.render import config_bag


def fixed_keypair() -> tuple[str, str]:
    return "PRIVATE KEY", "ssh-ed25519 AAAA test"


def platform_of(stack: str) -> str:
    bag, _ = config_bag(REPO / "workloads", stack)
    return bag["trn-workloads:platformStack"].rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=None)
def _context(platform_stack: str) -> Context:
    releases = [{"name": r.inputs.get("name", r.name), "values": unwrap_secrets(r.inputs.get("values") or {})}
                for r in rendered_platform(platform_stack).resources if r.type == "kubernetes:helm.sh/v3:Release"]
    return Context.from_helm_releases(releases, ssh_keypair=fixed_keypair)


def context(workload_stack: str) -> Context:
    """The operator settings of the platform a workload stack references (e.g. KubeRay's batch scheduler)."""
    return _context(platform_of(workload_stack))


@functools.lru_cache(maxsize=None)
def _objects(stack: str) -> tuple[dict, ...]:
    return tuple(obj for _, obj in rendered_workload(stack).manifests)


def objects(stack: str) -> list[dict]:
    """The workload stack's rendered Kubernetes objects (fresh copies: tests may change them)."""
    return copy.deepcopy(list(_objects(stack)))


def one(objs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} ending {name_suffix!r}, found {[o['metadata']['name'] for o in found]}"
    return found[0]
