"""A workload stack as the rehearsal sees it: rendered (with its rehearsal overlay), together with the
platform stack it references, its Kubernetes objects with real Secret values (the render's placeholders,
never masked), and its steps in apply order.

Steps: the stack's Kubernetes objects grouped by depth in the render's dependsOn graph (step 0 = objects
that depend on no other Kubernetes object of the stack). `pulumi up` creates an object only after the
objects it depends on are created and, for kinds pulumi-kubernetes awaits, ready (Job complete, Deployment
rolled out, Pod ready): running step by step and waiting for each step keeps that order (it is stricter
than Pulumi, which starts a resource as soon as its own dependencies are done).
"""
from __future__ import annotations

import copy
import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stackfiles.records import unwrap_secrets
from trnctl.operators import Context
from trnctl.render import REPO_ROOT, NOT_MANIFESTS, RenderResult, config_bag, run_program

WORKLOADS_PROJECT = "trn-workloads"


@dataclass
class RehearsalStack:
    name: str
    workload: str
    result: RenderResult
    platform: RenderResult
    objects: list[dict]  # the workload stack's Kubernetes objects, secrets unmasked
    steps: list[list[dict]]  # objects in apply order
    ctx: Context
    platform_objects: list[dict] = field(default_factory=list)

    def all_objects(self) -> list[dict]:
        return self.platform_objects + self.objects


def kubernetes_objects(result: RenderResult) -> list[tuple[str, dict]]:
    """(urn, object) of every Kubernetes object the program created directly, secret values unwrapped."""
    out = []
    for r in result.resources:
        if r.type.startswith("kubernetes:") and not r.type.startswith(NOT_MANIFESTS):
            obj = {k: v for k, v in unwrap_secrets(r.inputs).items() if v is not None}
            out.append((r.urn, obj))
    return out


def apply_steps(result: RenderResult) -> list[list[dict]]:
    """Kubernetes objects grouped by depth in the dependsOn graph (dependencies through non-Kubernetes
    resources, such as the component parents, are followed)."""
    by_urn = {r.urn: r for r in result.resources}
    objects = dict(kubernetes_objects(result))

    @functools.lru_cache(maxsize=None)
    def depth(urn: str) -> int:
        deps = [d for d in by_urn[urn].depends_on if d in by_urn]
        own = [depth(d) + (1 if d in objects else 0) for d in deps]
        return max(own, default=0)

    steps: dict[int, list[dict]] = {}
    for urn, obj in objects.items():
        steps.setdefault(depth(urn), []).append(obj)
    return [steps[k] for k in sorted(steps)]


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def overlaid_project(tmp: Path, overlays: dict[str, dict], root: Path = REPO_ROOT) -> Path:
    """A copy of the workloads project's Pulumi.yaml (main = the repository's program) and every workload
    stack file, each with the overlay of its workload merged into its config."""
    src = root / "workloads"
    doc = yaml.safe_load((src / "Pulumi.yaml").read_text())
    doc["main"] = str((src / doc.get("main", ".")).resolve())
    (tmp / "Pulumi.yaml").write_text(yaml.safe_dump(doc))
    for path in src.glob("Pulumi.*.yaml"):
        if path.name == "Pulumi.yaml":
            continue
        stack_doc = yaml.safe_load(path.read_text())
        workload = stack_doc["config"].get(f"{WORKLOADS_PROJECT}:workload")
        overlay = overlays.get(workload, {})
        stack_doc["config"] = deep_merge(stack_doc["config"], {f"{WORKLOADS_PROJECT}:{k}": v for k, v in overlay.items()})
        (tmp / path.name).write_text(yaml.safe_dump(stack_doc, sort_keys=False))
    return tmp


def workload_of(stack: str, root: Path = REPO_ROOT) -> str:
    bag, _ = config_bag(root / "workloads", stack)
    return bag.get(f"{WORKLOADS_PROJECT}:workload", "")


def load(stack: str, overlays: dict[str, dict] | None = None, root: Path = REPO_ROOT) -> RehearsalStack:
    """Render `stack` (with `overlays[workload]` merged into each workload stack's config) and its platform."""
    workload = workload_of(stack, root)
    with tempfile.TemporaryDirectory(prefix="trn-rehearse-render-") as tmp:
        project = overlaid_project(Path(tmp), overlays, root) if overlays else root / "workloads"
        result = run_program(project, stack)
    bag, _ = config_bag(root / "workloads", stack)
    platform_stack = bag[f"{WORKLOADS_PROJECT}:platformStack"].rsplit("/", 1)[-1]
    platform = run_program(root, platform_stack, stack_references={})
    releases = [{"name": r.inputs.get("name", r.name), "values": unwrap_secrets(r.inputs.get("values") or {})}
                for r in platform.resources if r.type == "kubernetes:helm.sh/v3:Release"]
    ctx = Context.from_helm_releases(releases)
    return RehearsalStack(name=stack, workload=workload, result=result, platform=platform,
                          objects=[o for _, o in kubernetes_objects(result)], steps=apply_steps(result), ctx=ctx,
                          platform_objects=[o for _, o in kubernetes_objects(platform)])
