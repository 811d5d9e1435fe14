"""Streaming JSONL document reader: local files, globs, directories or an s3:// prefix.

Public API (also used by the Ray pretraining workload to build fixed-length token blocks):

    files = resolve_inputs(["/data/*.jsonl.gz", "s3://bucket/corpus/"])
    stats = ReadStats()
    for doc in read_documents(files, json_key="text", on_bad_record="skip", stats=stats):
        doc.text, doc.source, doc.line

Memory stays bounded whatever the corpus size: files are read line by line, S3 objects are
streamed in chunks (gzip decompressed on the fly), nothing is held beyond the current line.

Bad records (invalid JSON, not an object, missing key, non-string value, blank line, bad
UTF-8, an empty file) are reported as `file:line: reason`. With `on_bad_record="fail"` the
first one raises `BadRecordError`; with "skip" they are counted in `ReadStats` and the
first few are kept for the final report.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from trn_workloads.artifacts import is_s3_uri, parse_s3_uri

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
BAD_RECORD_POLICIES = ("fail", "skip")
S3_CHUNK_BYTES = 8 * 1024 * 1024
MAX_REPORTED_PROBLEMS = 20

OnBadRecord = Literal["fail", "skip"]


class InputError(ValueError):
    """An input spec names nothing readable (no match, wrong suffix, missing file, empty prefix)."""


class BadRecordError(ValueError):
    """A record cannot be used and the policy is "fail". The message is `file:line: reason`."""


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One JSONL(.gz) input: a local path or an S3 object (with the size and ETag listed)."""

    uri: str  # local absolute path or s3://bucket/key
    size: int
    etag: str | None = None  # S3 only

    @property
    def is_s3(self) -> bool:
        return is_s3_uri(self.uri)

    @property
    def gzipped(self) -> bool:
        return self.uri.endswith(".gz")


@dataclasses.dataclass(frozen=True)
class Document:
    text: str
    source: str  # the InputFile uri
    line: int  # 1-based line number in the (decompressed) file


@dataclasses.dataclass
class ReadStats:
    documents: int = 0
    bad_records: int = 0
    bytes_read: int = 0  # decompressed JSONL bytes
    problems: list[str] = dataclasses.field(default_factory=list)  # first MAX_REPORTED_PROBLEMS

    def record_problem(self, message: str) -> None:
        self.bad_records += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(message)


# --------------------------------------------------------------------------- resolving inputs

def _is_jsonl(name: str) -> bool:
    return name.endswith(JSONL_SUFFIXES)


def _local_inputs(spec: str) -> list[InputFile]:
    path = Path(spec)
    if path.is_dir():
        names = sorted(p for p in path.iterdir() if p.is_file() and _is_jsonl(p.name))
        if not names:
            raise InputError(f"input {spec!r}: directory has no {' or '.join(JSONL_SUFFIXES)} files")
    elif glob.has_magic(spec):
        names = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not names:
            raise InputError(f"input {spec!r}: the pattern matches no files")
    else:
        if not path.is_file():
            raise InputError(f"input {spec!r}: no such file")
        names = [path]
    wrong = [str(p) for p in names if not _is_jsonl(p.name)]
    if wrong:
        raise InputError(f"input {spec!r}: only {' and '.join(JSONL_SUFFIXES)} files are read, got {wrong[:3]}")
    return [InputFile(str(p.resolve()), p.stat().st_size) for p in names]


def _s3_inputs(spec: str, client: Any) -> list[InputFile]:
    loc = parse_s3_uri(spec)
    found: list[InputFile] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key):
        for obj in page.get("Contents", []):
            if _is_jsonl(obj["Key"]):
                found.append(InputFile(f"s3://{loc.bucket}/{obj['Key']}", int(obj["Size"]), obj["ETag"].strip('"')))
    if not found:
        raise InputError(f"input {spec!r}: no {' or '.join(JSONL_SUFFIXES)} objects under this prefix")
    return sorted(found, key=lambda f: f.uri)


def resolve_inputs(specs: Iterable[str], *, s3_client: Any | None = None,
                   expand: Callable[[str], list[InputFile] | None] | None = None) -> list[InputFile]:
    """Expand paths, globs, directories and s3:// prefixes into an ordered, de-duplicated file list.

    Order is the order of `specs`, sorted within each spec, so a run is reproducible.
    `expand` lets a caller handle some specs itself (e.g. Parquet for the Ray workload):
    it returns the files of a spec it handles, None for the ones left to this function.
    """
    files: list[InputFile] = []
    seen: set[str] = set()
    for spec in specs:
        expanded = expand(spec) if expand else None
        if expanded is None and is_s3_uri(spec):
            if s3_client is None:
                import boto3

                s3_client = boto3.client("s3")
            expanded = _s3_inputs(spec, s3_client)
        elif expanded is None:
            expanded = _local_inputs(spec)
        for f in expanded:
            if f.uri not in seen:
                seen.add(f.uri)
                files.append(f)
    if not files:
        raise InputError("no inputs given")
    return files


def fingerprint_inputs(files: Iterable[InputFile]) -> str:
    """sha256 over what the inputs contain: local files' bytes, S3 objects' size + ETag."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.uri.encode() + b"\0")
        if f.is_s3:
            digest.update(f"{f.size}:{f.etag}".encode())
        else:
            with open(f.uri, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading lines

def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Re-cut a stream of byte chunks into lines (without the newline)."""
    tail = b""
    for chunk in chunks:
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        yield from parts
    if tail:
        yield tail


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a gzip stream chunk by chunk, including multi-member files (e.g. `cat a.gz b.gz`)."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in chunks:
        while chunk:
            yield decomp.decompress(chunk)
            if decomp.eof:
                chunk = decomp.unused_data
                decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                chunk = b""
    yield decomp.flush()


def _s3_chunks(f: InputFile, client: Any) -> Iterator[bytes]:
    loc = parse_s3_uri(f.uri)
    # IfMatch: the object must still be the one whose ETag went into the fingerprint.
    kwargs = {"IfMatch": f.etag} if f.etag else {}
    body = client.get_object(Bucket=loc.bucket, Key=loc.key, **kwargs)["Body"]
    try:
        yield from body.iter_chunks(S3_CHUNK_BYTES)
    finally:
        body.close()


def iter_lines(f: InputFile, *, s3_client: Any | None = None) -> Iterator[bytes]:
    """The decompressed lines of one input, streamed."""
    if f.is_s3:
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        chunks = _s3_chunks(f, s3_client)
        yield from _split_lines(_gunzip(chunks) if f.gzipped else chunks)
        return
    opener = gzip.open if f.gzipped else open
    with opener(f.uri, "rb") as fh:
        for line in fh:
            yield line[:-1] if line.endswith(b"\n") else line


# --------------------------------------------------------------------------- parsing records

def parse_record(line: bytes, json_key: str) -> tuple[str | None, str | None]:
    """(text, None) for a usable record, (None, reason) otherwise. Pure; never raises."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return None, "blank line"
    try:
        record = json.loads(line)
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 ({err.reason} at byte {err.start})"
    except ValueError as err:
        return None, f"invalid JSON ({err})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if json_key not in record:
        keys = ", ".join(sorted(record)[:5]) or "none"
        return None, f"missing key {json_key!r} (keys: {keys})"
    text = record[json_key]
    if not isinstance(text, str):
        return None, f"key {json_key!r} is {type(text).__name__}, expected a string"
    return text, None


def read_documents(files: Iterable[InputFile], *, json_key: str = "text", on_bad_record: OnBadRecord = "fail",
                   stats: ReadStats | None = None, s3_client: Any | None = None) -> Iterator[Document]:
    """Yield every usable document of every file, in order; bad records per `on_bad_record`."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {', '.join(BAD_RECORD_POLICIES)}, got {on_bad_record!r}")
    stats = stats if stats is not None else ReadStats()

    def bad(where: str, reason: str) -> None:
        message = f"{where}: {reason}"
        if on_bad_record == "fail":
            raise BadRecordError(message + " (use --on-bad-record skip to skip such records)")
        stats.record_problem(message)

    for f in files:
        line_no = 0
        for line_no, line in enumerate(iter_lines(f, s3_client=s3_client), start=1):
            stats.bytes_read += len(line) + 1
            text, reason = parse_record(line, json_key)
            if reason is not None:
                bad(f"{f.uri}:{line_no}", reason)
                continue
            stats.documents += 1
            yield Document(text, f.uri, line_no)
        if line_no == 0:
            bad(f"{f.uri}:0", "empty file (no records)")
