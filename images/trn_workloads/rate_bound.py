"""A bound on how often an agent may act per key (a node pool, a training job), kept as
epoch seconds in the `data` of a ConfigMap ({key: JSON list}); pure functions."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    history: dict[str, list[float]]  # key -> action times within the window (this one added when allowed)
    reason: str


def decide(history: dict[str, list[float]], *, key: str, now: float, limit: int, window_seconds: float,
           what: str, cooldown_seconds: float = 0) -> Decision:
    """At most `limit` actions for `key` in any `window_seconds`, and none within `cooldown_seconds`
    of the previous one. Entries older than the window are dropped from the returned history."""
    recent = {k: [t for t in times if now - t < window_seconds] for k, times in history.items()}
    recent = {k: times for k, times in recent.items() if times}
    done = recent.get(key, [])
    if limit <= 0:
        return Decision(False, recent, f"{what}: off (limit 0)")
    if done and now - max(done) < cooldown_seconds:
        return Decision(False, recent, f"{what}: the last one was {now - max(done):.0f}s ago; waiting "
                                       f"{cooldown_seconds:.0f}s before another")
    if len(done) >= limit:
        wait = window_seconds - (now - min(done))
        return Decision(False, recent, f"{what}: {len(done)} in the last {window_seconds:.0f}s (limit {limit}); "
                                       f"next possible in {wait:.0f}s")
    return Decision(True, {**recent, key: [*done, now]}, f"{what}: {len(done) + 1} of {limit} in the window")


def history_from_configmap(data: dict[str, str] | None) -> dict[str, list[float]]:
    """The ConfigMap's `data`; unreadable entries count as none."""
    out: dict[str, list[float]] = {}
    for key, raw in (data or {}).items():
        try:
            out[key] = [float(t) for t in json.loads(raw)]
        except (ValueError, TypeError):
            out[key] = []
    return out


def history_to_configmap(history: dict[str, list[float]]) -> dict[str, str]:
    return {key: json.dumps(times) for key, times in sorted(history.items())}
