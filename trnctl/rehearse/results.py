"""What a rehearsal reports: per pod (started, ready, exit, log tail, problem) and per stack."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PodResult:
    name: str
    step: int
    owner: str
    started: bool = False
    ready: bool | None = None
    exit_code: int | None = None
    log_tail: str = ""
    problem: str = ""

    def line(self) -> str:
        state = "ok" if not self.problem else f"FAILED: {self.problem}"
        ready = "" if self.ready is None else f" ready={self.ready}"
        code = "" if self.exit_code is None else f" exit={self.exit_code}"
        return f"step {self.step} pod {self.name} ({self.owner}) started={self.started}{ready}{code} {state}"


@dataclass
class RehearsalResult:
    stack: str
    pods: list[PodResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(not p.problem for p in self.pods)

    def report(self) -> str:
        lines = [p.line() for p in self.pods]
        for p in self.pods:
            if p.problem and p.log_tail:
                lines += [f"--- log tail of {p.name}:", p.log_tail]
        lines += self.notes
        lines += [f"problem: {p}" for p in self.problems]
        lines.append(f"rehearsal of {self.stack}: {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


class RehearsalError(RuntimeError):
    """Bad input: a pod kind or volume the rehearsal cannot run."""
