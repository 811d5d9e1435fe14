"""The config reader both Pulumi projects (platform and workloads) parse their stack
config with: one mapping at a time, every problem recorded (key, what is wrong, the
allowed values) and raised together as one `ConfigError` before any resource exists."""
from __future__ import annotations

import difflib
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
        self.missing: dict[str, str] = {}  # required key -> its "missing" problem (a typo in finish() replaces it)

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def get(self, k: str, typ: type | tuple, default: Any = None, *, required: bool = False,
            allowed: tuple | None = None, check: Callable[[Any], str | None] | None = None) -> Any:
        self.used.add(k)
        if k not in self.data or self.data[k] is None:
            if required:
                self.missing[k] = f"{self.key(k)}: required key is missing"
                self.problems.append(self.missing[k])
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
            self.problems.append(f"{self.key(k)}: expected {want}, got {type(value).__name__} {value!r}"
                                 + _yaml_hint(k, value, typ, allowed))
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
                self.problems.append(f"{self.key(k)}[{i}]: expected str, got {item!r}" + _yaml_hint(f"{k}[{i}]", item, str, allowed))
            elif allowed is not None and item not in allowed:
                self.problems.append(f"{self.key(k)}[{i}]: {item!r} is not allowed; allowed values: {', '.join(allowed)}")
            else:
                out.append(item)
        return tuple(out)

    def finish(self) -> None:
        """Unknown keys, each with the known key it is closest to (difflib). A misspelt required
        key is one mistake: its "required key is missing" problem is replaced, not repeated."""
        unknown = sorted(set(self.data) - self.used)
        for k in unknown:
            close = difflib.get_close_matches(str(k), sorted(self.used), n=1, cutoff=0.6)
            if close and close[0] in self.missing and close[0] not in self.data:
                self.problems.remove(self.missing.pop(close[0]))
                self.problems.append(f"{self.key(k)}: unknown key; did you mean {close[0]}? (a required key; "
                                     f"rename {k} to {close[0]})")
            elif close:
                self.problems.append(f"{self.key(k)}: unknown key; did you mean {close[0]}? known keys: "
                                     f"{', '.join(sorted(self.used))}")
            else:
                self.problems.append(f"{self.key(k)}: unknown key; known keys: {', '.join(sorted(self.used))}")


def _yaml_hint(k: str, value: Any, typ: type | tuple, allowed: tuple | None) -> str:
    """The fix for the two ways YAML typing trips a stack file: a number in quotes is a string,
    and an unquoted 1.30 is the number 1.3 (so the fix is to quote what was written, not 1.3)."""
    wants = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, str) and (int in wants or float in wants):
        try:
            number = int(value) if int in wants else float(value)
        except ValueError:
            return ""
        return f"; remove the quotes ({k}: {number})"
    if str in wants and isinstance(value, (int, float)) and not isinstance(value, bool):
        example = f", e.g. {k}: \"{allowed[-1]}\"" if allowed else ""
        return (f"; YAML read an unquoted value as a number (1.30 becomes 1.3): quote it exactly as written in the "
                f"stack file{example}" + (f"; allowed values: {', '.join(map(str, allowed))}" if allowed else ""))
    return ""
