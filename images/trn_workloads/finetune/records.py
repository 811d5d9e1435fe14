"""Load instruction records (default: sql-create-context's question/context/answer) and vet them.

A record is bad when its line is not a JSON object, a field the prompt template or the
answer needs is missing or not a non-empty string, or (for SQL datasets) its answer does not
compile against its own CREATE TABLE schema (SQLite `EXPLAIN`, which resolves tables and
columns without running anything). Bad records are reported with their line number, then
skipped or fatal per `data.bad_records`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from trn_workloads.finetune.config import ConfigError, DataConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Record:
    line: int  # 1-based line in the JSONL file (row number + 1 for hub datasets)
    fields: dict[str, str]


@dataclasses.dataclass(frozen=True)
class BadRecord:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class LoadedRecords:
    source: str
    good: list[Record]
    bad: list[BadRecord]


class BadRecordsError(ValueError):
    """Raised under `bad_records: fail`; lists every bad record with its line number."""


def schema_errors(schema_sql: str) -> str | None:
    """None when the CREATE TABLE statements run in an empty SQLite DB, else SQLite's message."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema_sql)
        return None
    except sqlite3.Error as err:
        return str(err)
    finally:
        conn.close()


def sql_errors(schema_sql: str, query: str) -> str | None:
    """None when `query` compiles against the schema (SQLite EXPLAIN), else SQLite's message."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema_sql)
        conn.execute("EXPLAIN " + query.strip().rstrip(";"))
        return None
    except (sqlite3.Error, sqlite3.Warning) as err:
        return str(err)
    finally:
        conn.close()


def check_record(raw: object, cfg: DataConfig) -> tuple[dict[str, str] | None, str | None]:
    """(fields, None) for a good record, (None, reason) for a bad one."""
    if not isinstance(raw, dict):
        return None, f"expected a JSON object, got {type(raw).__name__}"
    fields = {}
    for name in cfg.required_fields:
        value = raw.get(name)
        if value is None:
            return None, f"missing field {name!r}"
        if not isinstance(value, str) or not value.strip():
            return None, f"field {name!r} must be a non-empty string"
        fields[name] = value
    if cfg.schema_field:
        schema = fields[cfg.schema_field]
        if (err := schema_errors(schema)) is not None:
            return None, f"field {cfg.schema_field!r} is not valid CREATE TABLE SQL: {err}"
        if (err := sql_errors(schema, fields[cfg.answer_field])) is not None:
            return None, f"field {cfg.answer_field!r} is not valid SQL for its schema: {err}"
    return fields, None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object | None, str | None]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line), None
            except json.JSONDecodeError as err:
                yield line_no, None, f"invalid JSON: {err.msg} (column {err.colno})"


def _hub_rows(dataset_id: str, token: str | None) -> Iterator[tuple[int, object | None, str | None]]:
    from datasets import load_dataset

    for row_no, row in enumerate(load_dataset(dataset_id, split="train", token=token), start=1):
        yield row_no, dict(row), None


def _local_copy(source: str, cache_dir: Path) -> Path:
    if source.startswith("s3://"):
        from trn_workloads import artifacts

        cache_dir.mkdir(parents=True, exist_ok=True)
        return artifacts.download(source, cache_dir / Path(source).name)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data.source: {path} does not exist")
    return path


def load_records(cfg: DataConfig, *, cache_dir: Path | None = None, hf_token: str | None = None) -> LoadedRecords:
    """Read and vet every record of `cfg.source`. Raises BadRecordsError under `bad_records: fail`."""
    if cfg.source.startswith("hf:"):
        rows: Iterable = _hub_rows(cfg.source[len("hf:"):], hf_token)
    else:
        cache = cache_dir or Path(tempfile.gettempdir()) / "finetune-data"
        rows = _jsonl_rows(_local_copy(cfg.source, cache))
    good, bad = [], []
    for line_no, raw, parse_error in rows:
        fields, reason = (None, parse_error) if parse_error else check_record(raw, cfg)
        if reason:
            bad.append(BadRecord(line_no, reason))
        else:
            good.append(Record(line_no, fields))
    if bad:
        listing = "\n  ".join(str(b) for b in bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        if cfg.bad_records == "fail":
            raise BadRecordsError(f"{cfg.source}: {len(bad)} bad record(s) (data.bad_records=fail):\n  {listing}")
        log.warning("%s: skipping %d bad record(s):\n  %s", cfg.source, len(bad), listing)
    if not good:
        raise BadRecordsError(f"{cfg.source}: no usable records ({len(bad)} bad)")
    return LoadedRecords(cfg.source, good, bad)


def split_train_eval(records: list[Record], eval_records: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Shuffle deterministically, hold out `eval_records` for evaluation, train on the rest."""
    if eval_records >= len(records):
        raise ConfigError(f"data.eval_records={eval_records} leaves nothing to train on ({len(records)} usable records)")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return shuffled[eval_records:], shuffled[:eval_records]


def render_prompt(template: str, record: Record) -> str:
    return template.format(**record.fields)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    """Write rows as JSONL to a temporary name beside `path`, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
