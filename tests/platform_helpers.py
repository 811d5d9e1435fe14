"""Helpers for tests that run Pulumi programs of this repository under the mock runtime."""
from __future__ import annotations

import copy
import functools
import shutil
from pathlib import Path

import yaml

from stackfiles import stacks_in
from trnctl.render import RenderResult, run_program

REPO = Path(__file__).resolve().parent.parent
PLATFORM_STACKS = stacks_in(REPO)
WORKLOAD_STACKS = stacks_in(REPO / "workloads")


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


def with_setting(base: dict, section: str, key: str, value) -> dict:
    """A deep copy of stack config `base` with `<section>.<key>` set to `value`; `key` is
    dotted ("run.nodes") and missing intermediate maps are created."""
    cfg = copy.deepcopy(base)
    node = cfg[section]
    *parents, last = key.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return cfg


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def platform_refs(stack: str = "dev-usw2") -> dict:
    """StackReference answers for workload programs: the rendered platform stack."""
    platform = rendered_platform(stack)
    return {f"organization/trn-platform/{stack}": {"outputs": platform.outputs,
                                                    "secret": sorted(platform.secret_outputs)}}


def assert_rejected_before_any_resource(tmp_path: Path, project: str, config: dict, expected: str,
                                        error: type[Exception]) -> None:
    """Running the program on `config` raises `error` mentioning `expected`, with nothing registered."""
    import pytest

    project_dir = project_with_stack(tmp_path, project, "bad", config)
    refs = platform_refs() if project == "workloads" else {}
    with pytest.raises(error) as err:
        run_program(project_dir, "bad", stack_references=refs)
    assert expected in str(err.value)
    assert err.value.registered_resources == 0
