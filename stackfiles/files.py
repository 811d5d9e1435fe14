"""Stack files (`Pulumi.<stack>.yaml`) read the way Pulumi hands their config to a program:
a flat bag of `project:key` values, objects and lists as JSON strings. The platform
program, the workload program and the offline tools (trnctl) all read config through
here, so a key means the same thing everywhere."""
from __future__ import annotations

import difflib
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


# Namespaces a stack file of these projects may use besides the project's own: the providers' settings.
PROVIDER_NAMESPACES = ("aws", "eks", "kubernetes", "docker-build", "pulumi")


def stacks_in(project_dir: Path) -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in Path(project_dir).glob("Pulumi.*.yaml"))


def stack_argument(value: str) -> tuple[str, Path | None]:
    """A stack as a user names it on the command line: a name (`dev-usw2`) or the stack file's
    path (`Pulumi.dev-usw2.yaml`, `workloads/Pulumi.compile-usw2.yaml`, what tab completion
    gives). Returns the stack name and, for a path, the project directory holding it."""
    path = Path(value)
    if path.name.startswith("Pulumi.") and path.name.endswith((".yaml", ".yml")):
        return path.name[len("Pulumi."):].rsplit(".", 1)[0], path.parent
    return value, None


def read_stack_bag(project_dir: Path, stack: str) -> dict[str, Any]:
    """The flat config bag of `Pulumi.<stack>.yaml` (values as YAML gives them).

    A file Pulumi would refuse or misread is a ConfigError naming the file and the key: YAML
    syntax errors (with line and column), a `config:` that is not a mapping, a key given twice
    (YAML keeps the last one silently), a key outside `<namespace>:<name>` or with a namespace
    that is neither this project's (the `name` in Pulumi.yaml) nor a provider's."""
    path = stack_file(project_dir, stack)
    if not path.exists():
        stacks = stacks_in(project_dir)
        raise ConfigError([f"{path} does not exist; stacks here: {', '.join(stacks) or 'none'}"], "stack")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: YAML syntax error{where}: {getattr(err, 'problem', None) or err}"],
                          "stack file") from None
    problems = [f"{path}: {p}" for p in _duplicate_keys(node)]
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        problems.append(f"{path}: expected a mapping with a `config:` section, got {type(doc).__name__}")
        doc = {}
    config = doc.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        problems.append(f"{path}: config: expected a mapping of <namespace>:<name> settings, got {type(config).__name__}")
        config = {}
    problems += [f"{path}: {p}" for p in _namespace_problems(config, _project_name(project_dir))]
    if problems:
        raise ConfigError(problems, "stack file")
    return dict(config)


def _project_name(project_dir: Path) -> str | None:
    project = Path(project_dir) / "Pulumi.yaml"
    try:
        name = (yaml.safe_load(project.read_text()) or {}).get("name") if project.exists() else None
    except (yaml.YAMLError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[str]:
    """Keys given twice in one mapping, at any depth."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            where = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                out.append(f"{where}: duplicate key (lines {seen[key]} and {line}); keep one")
            else:
                seen[key] = line
            out += _duplicate_keys(value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, f"{path}[{i}]")
    return out


def check_namespaces(bag: dict[str, Any], project: str) -> None:
    """Inside a program: the engine passes every key of the stack file, and a key under a
    misspelled project prefix would otherwise just be ignored."""
    problems = _namespace_problems(bag, project)
    if problems:
        raise ConfigError([p.removeprefix("config.") for p in problems], "stack config")


def _namespace_problems(config: dict, project: str | None) -> list[str]:
    out = []
    allowed = [project, *PROVIDER_NAMESPACES] if project else list(PROVIDER_NAMESPACES)
    for key in config:
        namespace, sep, name = str(key).partition(":")
        if not sep or not namespace or not name:
            out.append(f"config.{key}: keys are <namespace>:<name>, e.g. {project or '<project>'}:{key}")
        elif project and namespace not in allowed:
            close = difflib.get_close_matches(namespace, allowed, n=1)
            hint = f"; did you mean {close[0]}:{name}?" if close else ""
            out.append(f"config.{key}: unknown namespace {namespace!r}{hint} (allowed: {', '.join(allowed)})")
    return out
