"""The config reader both Pulumi projects (platform and workloads) parse their stack
config with: one mapping at a time, every problem recorded (key, what is wrong, the
allowed values) and raised together as one `ConfigError` before any resource exists."""
from __future__ import annotations

from typing import Any, Callable


class ConfigError(ValueError):
    """One or more invalid stack config keys; the message lists every problem."""

    def __init__(self, problems: list[str], source: str = "stack config"):
        self.problems = problems
        super().__init__(f"invalid {source}:\n  - " + "\n  - ".join(problems))


class ConfigReader:
    """Reads one mapping, recording problems instead of stopping at the first."""

    def __init__(self, data: Any, where: str, problems: list[str]):
        self.where = where
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
            data = {}
        self.data = data
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def get(self, k: str, typ: type | tuple, default: Any = None, *, required: bool = False,
            allowed: tuple | None = None, check: Callable[[Any], str | None] | None = None) -> Any:
        self.used.add(k)
        if k not in self.data or self.data[k] is None:
            if required:
                self.problems.append(f"{self.key(k)}: required key is missing")
            return default
        value = self.data[k]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and typ is not bool:
            ok = False
        else:
            ok = isinstance(value, typ)
        if not ok:
            want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            self.problems.append(f"{self.key(k)}: expected {want}, got {type(value).__name__} {value!r}")
            return default
        if allowed is not None and value not in allowed:
            self.problems.append(f"{self.key(k)}: {value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")
            return default
        if check is not None:
            msg = check(value)
            if msg:
                self.problems.append(f"{self.key(k)}: {msg}")
                return default
        return value

    def str_list(self, k: str, default: tuple = (), *, allowed: tuple | None = None,
                 required: bool = False) -> tuple[str, ...]:
        items = self.get(k, list, None, required=required)
        if items is None:
            return tuple(default)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.problems.append(f"{self.key(k)}[{i}]: expected str, got {item!r}")
            elif allowed is not None and item not in allowed:
                self.problems.append(f"{self.key(k)}[{i}]: {item!r} is not allowed; allowed values: {', '.join(allowed)}")
            else:
                out.append(item)
        return tuple(out)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        for k in unknown:
            self.problems.append(f"{self.key(k)}: unknown key; known keys: {', '.join(sorted(self.used))}")
