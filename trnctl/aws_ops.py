"""Small boto3 helpers shared by `trnctl.preflight` and `trnctl.sweep`.

Clients come from boto3's default credential chain; botocore itself honours
AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>), which is how the tests reach moto's
server. Nothing here decides anything: the callers' pure functions do.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

# Standard retry mode backs off on throttling; the sweep's deletes are idempotent anyway.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})

# Operation-name prefixes that only read. Anything else is a change.
READ_ONLY_PREFIXES = ("Describe", "Get", "List")


class ReadOnlyViolation(RuntimeError):
    """A client guarded by `guard_read_only` was asked to change something."""


def session(region: str) -> boto3.Session:
    return boto3.Session(region_name=region)


def client(sess: boto3.Session, service: str) -> Any:
    return sess.client(service, config=CLIENT_CONFIG)


def guard_read_only(aws_client: Any, log: list[str] | None = None) -> Any:
    """Refuse, before anything is sent, every call that is not Describe*/Get*/List*.

    Uses botocore's `before-call` event, so it holds for paginators and waiters too.
    With `log`, every operation name is appended to it (tests assert on it).
    """
    def before_call(model, **_kwargs):
        if log is not None:
            log.append(model.name)
        if not model.name.startswith(READ_ONLY_PREFIXES):
            raise ReadOnlyViolation(f"{aws_client.meta.service_model.service_name}:{model.name} is not read-only")

    aws_client.meta.events.register("before-call.*.*", before_call)
    return aws_client


def record_operations(aws_client: Any, log: list[str]) -> Any:
    """Append every operation name this client sends to `log` (no other effect)."""
    aws_client.meta.events.register("before-call.*.*", lambda model, **_kw: log.append(model.name))
    return aws_client


def paginate(aws_client: Any, operation: str, result_key: str, **kwargs: Any) -> Iterator[dict]:
    """Every item under `result_key` across all pages of `operation`."""
    for page in aws_client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(result_key, [])


def tag_map(tags: Iterable[dict] | None) -> dict[str, str]:
    """[{'Key': k, 'Value': v}, ...] (EC2, ELB, ECR spelling) as a dict."""
    return {t["Key"]: t.get("Value", "") for t in (tags or [])}


def error_code(err: Exception) -> str:
    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code", "ClientError")
    return type(err).__name__


def describe_error(err: Exception, limit: int = 200) -> str:
    """One short line for a table cell: the AWS error code and message (an HTML error
    page from a proxy or endpoint is reduced to its text)."""
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        text = f"{e.get('Code', 'ClientError')}: {e.get('Message', '')}"
    else:
        text = f"{type(err).__name__}: {err}"
    text = " ".join(re.sub(r"<[^>]+>", " ", text).split()).rstrip(":")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def chunks(items: list, size: int) -> Iterator[list]:
    """ELB DescribeTags takes at most 20 names/ARNs per call."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def render_table(headers: tuple[str, ...], rows: list[tuple[str, ...]], max_width: int = 90) -> str:
    """A plain-text table; long cells wrap inside their column so it stays readable in a terminal."""
    import textwrap

    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], min(len(cell), max_width))

    def lines_of(row: tuple[str, ...]) -> list[str]:
        wrapped = [textwrap.wrap(cell, widths[i], break_on_hyphens=False) or [""] for i, cell in enumerate(row)]
        height = max(len(w) for w in wrapped)
        return ["  ".join((w[n] if n < len(w) else "").ljust(widths[i]) for i, w in enumerate(wrapped)).rstrip()
                for n in range(height)]

    rule = "  ".join("-" * w for w in widths)
    out = lines_of(headers) + [rule]
    for row in rows:
        out += lines_of(row)
    return "\n".join(out)
