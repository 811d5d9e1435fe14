"""Score generated SQL against reference SQL by running both in SQLite.

For each record: an in-memory database is built from the record's CREATE TABLE context
and filled with a few generated rows. Row values come partly from the literals that the
reference query mentions (so `WHERE name = "x"` matches something) and partly at random
(so a query with the wrong filter returns a different result). The reference and the
generated query then run against the same data:

- execution match: same result rows (as a multiset; in order when the reference has
  ORDER BY);
- exact match: the same text after normalization (sqlglot's SQLite rendering, lower case,
  whitespace collapsed, no trailing semicolon).

Generated SQL that does not parse, names unknown columns, writes, or runs too long scores
0 on both and never raises. The database is made read-only before any query runs.
"""
from __future__ import annotations

import collections
import dataclasses
import random
import re
import sqlite3
from typing import Sequence

_QUOTED = re.compile(r"'((?:[^']|'')*)'|\"([^\"]*)\"")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_LIMIT = re.compile(r"\b(?:limit|offset)\s+\d+(?:\s*,\s*\d+)?", re.IGNORECASE)
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class QueryResult:
    rows: list[tuple] | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class SqlScore:
    exact_match: bool
    execution_match: bool
    error: str | None = None  # why the generated SQL failed to run, if it did
    reference_rows: int = 0


def extract_sql(generated_text: str) -> str:
    """The query from a model's continuation: its first non-empty line (records hold one-line SQL)."""
    for line in generated_text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def normalize_sql(sql: str) -> str:
    text = sql.strip().rstrip(";").strip()
    try:
        import sqlglot

        text = sqlglot.transpile(text, read="sqlite", write="sqlite")[0]
    except Exception:  # unparsable SQL keeps its raw text and is simply compared as such
        pass
    return " ".join(text.split()).lower()


def _literals(sql: str) -> tuple[list[str], list[float]]:
    strings = [(a if a else b).replace("''", "'") for a, b in _QUOTED.findall(sql)]
    # LIMIT/OFFSET counts are not data values; seeding rows with them invites false matches.
    unquoted = _LIMIT.sub(" ", _QUOTED.sub(" ", sql))
    numbers = [float(n) for n in _NUMBER.findall(unquoted)]
    numbers += [float(s) for s in strings if _NUMBER.fullmatch(s.strip())]
    return strings, numbers


def _affinity(declared_type: str) -> str:
    # SQLite's column affinity rules (https://sqlite.org/datatype3.html, section 3.1).
    t = declared_type.upper()
    if "INT" in t:
        return "integer"
    if any(k in t for k in ("CHAR", "CLOB", "TEXT")) or t == "":
        return "text"
    if any(k in t for k in ("REAL", "FLOA", "DOUB")):
        return "real"
    return "numeric"


def _value(column: str, affinity: str, strings: list[str], numbers: list[float], rng: random.Random,
           from_literals: bool):
    if affinity == "text":
        if from_literals and strings:
            return rng.choice(strings)
        return f"{column}_{rng.randint(0, 999)}"
    if from_literals and numbers:
        value = rng.choice(numbers)
    else:
        value = rng.randint(0, 100) if affinity == "integer" else round(rng.uniform(0, 100), 2)
    return int(value) if affinity == "integer" and float(value).is_integer() else value


def build_database(schema_sql: str, reference_sql: str, rows_per_table: int, seed: int) -> sqlite3.Connection:
    """In-memory DB from the CREATE TABLE statements plus `rows_per_table` generated rows per table.

    The first row of each table takes every value from the reference query's literals
    where one fits the column type; later rows mix literals and random values.
    """
    conn = sqlite3.connect(":memory:")
    conn.executescript(schema_sql)
    strings, numbers = _literals(reference_sql)
    rng = random.Random(seed)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for table in tables:
        columns = [(row[1], _affinity(row[2] or "")) for row in conn.execute(f'PRAGMA table_info("{table}")')]
        placeholders = ", ".join("?" for _ in columns)
        for i in range(rows_per_table):
            row = [_value(name, aff, strings, numbers, rng, from_literals=(i == 0 or rng.random() < 0.5))
                   for name, aff in columns]
            conn.execute(f'INSERT INTO "{table}" VALUES ({placeholders})', row)
    conn.commit()
    conn.execute("PRAGMA query_only = ON")  # generated SQL must not change what the reference sees
    return conn


def run_query(conn: sqlite3.Connection, sql: str, max_steps: int = 1_000_000) -> QueryResult:
    """Run one statement; any SQLite error (syntax, unknown column, timeout, ...) comes back as `error`."""
    steps = {"n": 0}

    def abort_when_too_long() -> int:
        steps["n"] += 1000
        return 1 if steps["n"] > max_steps else 0

    conn.set_progress_handler(abort_when_too_long, 1000)
    try:
        return QueryResult(rows=conn.execute(sql.strip().rstrip(";")).fetchall())
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as err:
        return QueryResult(rows=None, error=f"{type(err).__name__}: {err}")
    finally:
        conn.set_progress_handler(None, 0)


def same_result(reference: Sequence[tuple], generated: Sequence[tuple], ordered: bool) -> bool:
    if ordered:
        return list(reference) == list(generated)
    return collections.Counter(map(tuple, reference)) == collections.Counter(map(tuple, generated))


def score_sql(schema_sql: str, reference_sql: str, generated_sql: str, *, rows_per_table: int = 5,
              seed: int = 0, max_steps: int = 1_000_000) -> SqlScore:
    """Exact and execution match of one generated query against its reference."""
    if not generated_sql.strip():
        return SqlScore(False, False, "no SQL generated")
    exact = normalize_sql(generated_sql) == normalize_sql(reference_sql)
    try:
        conn = build_database(schema_sql, reference_sql, rows_per_table, seed)
    except sqlite3.Error as err:  # records are vetted at load time, so this is a broken record
        return SqlScore(exact, False, f"schema failed: {err}")
    try:
        reference = run_query(conn, reference_sql, max_steps)
        if reference.rows is None:
            return SqlScore(exact, False, f"reference failed: {reference.error}")
        generated = run_query(conn, generated_sql, max_steps)
        if generated.rows is None:
            return SqlScore(exact, False, generated.error, len(reference.rows))
        match = same_result(reference.rows, generated.rows, ordered=bool(_ORDER_BY.search(reference_sql)))
        return SqlScore(exact, match, None, len(reference.rows))
    finally:
        conn.close()


def summarize(scores: Sequence[SqlScore]) -> dict:
    n = len(scores)
    return {
        "records": n,
        "exact_match": sum(s.exact_match for s in scores) / n if n else 0.0,
        "execution_accuracy": sum(s.execution_match for s in scores) / n if n else 0.0,
        "generated_sql_errors": sum(s.error is not None for s in scores),
    }
