"""Stack files (`Pulumi.<stack>.yaml`) read the way Pulumi hands their config to a program:
a flat bag of `project:key` values, objects and lists as JSON strings. The platform
program, the workload program and the offline tools (trnctl) all read config through
here, so a key means the same thing everywhere."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from stackfiles.reader import ConfigError


def decode_value(value: Any) -> Any:
    """Pulumi hands object/list config values to programs as JSON strings."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    return value


def raw_from_bag(bag: dict[str, Any], project: str) -> tuple[dict[str, Any], str | None]:
    """Split a flat `project:key` config bag into this project's keys and the AWS region."""
    prefix = project + ":"
    raw = {k[len(prefix):]: decode_value(v) for k, v in bag.items() if k.startswith(prefix)}
    return raw, bag.get("aws:region")


def pulumi_config_bag() -> dict[str, Any]:
    """Inside a Pulumi program: the whole stack config bag, as the engine passed it."""
    from pulumi.runtime import config as runtime_config

    bag = dict(runtime_config.get_config_env())
    bag.update(runtime_config.CONFIG.get())
    return bag


def stack_file(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


def read_stack_bag(project_dir: Path, stack: str) -> dict[str, Any]:
    """The flat config bag of `Pulumi.<stack>.yaml` (values as YAML gives them)."""
    path = stack_file(project_dir, stack)
    if not path.exists():
        stacks = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in Path(project_dir).glob("Pulumi.*.yaml"))
        raise ConfigError([f"{path} does not exist; stacks here: {', '.join(stacks) or 'none'}"], "stack")
    doc = yaml.safe_load(path.read_text()) or {}
    return dict(doc.get("config") or {})
