"""Helpers for tests that run Pulumi programs of this repository under the mock runtime."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import yaml

from infra.render import RenderResult, run_program

REPO = Path(__file__).resolve().parent.parent
PLATFORM_STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in REPO.glob("Pulumi.*.yaml"))
WORKLOAD_STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (REPO / "workloads").glob("Pulumi.*.yaml"))


@functools.lru_cache(maxsize=None)
def rendered_platform(stack: str) -> RenderResult:
    """Each render sets up its own mocks (a fresh monitor and root stack); results are
    cached because a render takes seconds and tests only read them."""
    return run_program(REPO, stack)


@functools.lru_cache(maxsize=None)
def rendered_workload(stack: str) -> RenderResult:
    return run_program(REPO / "workloads", stack)


def project_with_stack(tmp_path: Path, project: str, stack: str, config: dict) -> Path:
    """A copy of a project's Pulumi.yaml in tmp_path (main pointing at the repo's program)
    with one stack file holding `config`; returns the project dir."""
    src = REPO if project == "platform" else REPO / "workloads"
    doc = yaml.safe_load((src / "Pulumi.yaml").read_text())
    doc["main"] = str((src / doc.get("main", ".")).resolve())
    (tmp_path / "Pulumi.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}))
    return tmp_path


def stack_config(project: str, stack: str) -> dict:
    src = REPO if project == "platform" else REPO / "workloads"
    return yaml.safe_load((src / f"Pulumi.{stack}.yaml").read_text())["config"]


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
