"""Alertmanager's routing of an alert through a route tree (the `route` of its config).

source: prometheus/alertmanager dispatch/route.go (Route.Match, read at commit
003555a70caa264c42649fcdb537048d07a8336e): a route matches when all its matchers match; its
children are tried depth-first, left to right, and the first matching child stops the search
unless that child has `continue: true`; a route none of whose children match is itself the
match. Matchers (`name op "value"`, op one of = != =~ !~) follow pkg/labels/parse.go: regular
expressions are anchored at both ends; a missing label is the empty string.
"""
from __future__ import annotations

import re

_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')


def matcher_matches(matcher: str, labels: dict[str, str]) -> bool:
    m = _MATCHER.match(matcher)
    if not m:
        raise ValueError(f"not an Alertmanager matcher: {matcher!r}")
    name, op, value = m.groups()
    actual = labels.get(name, "")
    if op in ("=", "!="):
        return (actual == value) == (op == "=")
    return (re.fullmatch(value, actual) is not None) == (op == "=~")


def receivers(route: dict, labels: dict[str, str], inherited: str | None = None) -> list[str]:
    """The receivers an alert with `labels` is sent to ([] when `route` does not match it)."""
    if not all(matcher_matches(m, labels) for m in route.get("matchers", [])):
        return []
    receiver = route.get("receiver", inherited)
    found: list[str] = []
    for child in route.get("routes", []):
        matched = receivers(child, labels, receiver)
        found += matched
        if matched and not child.get("continue", False):
            break
    return found or [receiver]
