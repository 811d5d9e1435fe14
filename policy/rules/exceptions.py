"""Allowed exceptions (policy/exceptions.yaml), each with its reason."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

POLICY_DIR = Path(__file__).resolve().parent.parent
EXCEPTIONS_FILE = POLICY_DIR / "exceptions.yaml"


@dataclass(frozen=True)
class WriteOnAnyResource:
    actions: tuple[str, ...]
    condition_key_prefixes: tuple[str, ...]  # the statement must carry one of these keys
    reason: str


@dataclass(frozen=True)
class PrivilegedWorkload:
    name: str  # fnmatch pattern on metadata.name
    namespace: str
    allows: tuple[str, ...]  # subset of PRIVILEGE_FEATURES
    reason: str


@dataclass(frozen=True)
class Exceptions:
    read_only_verbs: tuple[str, ...]
    write_on_any_resource: tuple[WriteOnAnyResource, ...]
    privileged_workloads: tuple[PrivilegedWorkload, ...]


PRIVILEGE_FEATURES = ("privileged", "hostPath", "hostNetwork", "hostPID", "hostIPC")


class ExceptionsError(ValueError):
    pass


def parse_exceptions(doc: Any, source: str = str(EXCEPTIONS_FILE)) -> Exceptions:
    """Validate the exceptions file: every entry needs a reason, and names only known keys."""
    problems: list[str] = []

    def need(entry: dict, key: str, where: str, typ: type) -> Any:
        value = entry.get(key)
        if not isinstance(value, typ) or not value:
            problems.append(f"{source}: {where}.{key}: required, a non-empty {typ.__name__}")
            return typ()
        return value

    if not isinstance(doc, dict):
        raise ExceptionsError(f"{source}: expected a mapping with keys iam, privilegedWorkloads")
    iam = doc.get("iam") or {}
    verbs = need(iam, "readOnlyVerbs", "iam", list)
    need(iam, "readOnlyReason", "iam", str)
    writes = []
    for i, e in enumerate(iam.get("writeOnAnyResource") or []):
        where = f"iam.writeOnAnyResource[{i}]"
        writes.append(WriteOnAnyResource(tuple(need(e, "actions", where, list)),
                                         tuple(need(e, "conditionKeyPrefixes", where, list)),
                                         need(e, "reason", where, str)))
    pods = []
    for i, e in enumerate(doc.get("privilegedWorkloads") or []):
        where = f"privilegedWorkloads[{i}]"
        allows = tuple(need(e, "allows", where, list))
        for a in allows:
            if a not in PRIVILEGE_FEATURES:
                problems.append(f"{source}: {where}.allows: {a!r} is not allowed; allowed values: {', '.join(PRIVILEGE_FEATURES)}")
        pods.append(PrivilegedWorkload(need(e, "name", where, str), need(e, "namespace", where, str), allows,
                                       need(e, "reason", where, str)))
    if problems:
        raise ExceptionsError("invalid policy exceptions:\n  - " + "\n  - ".join(problems))
    return Exceptions(tuple(verbs), tuple(writes), tuple(pods))


@functools.lru_cache(maxsize=None)
def exceptions() -> Exceptions:
    return parse_exceptions(yaml.safe_load(EXCEPTIONS_FILE.read_text()))
