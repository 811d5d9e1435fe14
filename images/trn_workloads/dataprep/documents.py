"""Streaming JSONL document reader: local files, globs, directories or an s3:// prefix.

Public API (also used by the Ray pretraining workload to build fixed-length token blocks):

    files = resolve_inputs(["/data/*.jsonl.gz", "s3://bucket/corpus/"])
    stats = ReadStats()
    for doc in read_documents(files, json_key="text", on_bad_record="skip", stats=stats):
        doc.text, doc.source, doc.line

Memory stays bounded whatever the corpus size: files and S3 objects are read in chunks (gzip
decompressed on the fly), nothing is held beyond the current line, and a line longer than
`max_document_bytes` is skipped over (a bad record) instead of being accumulated.

A damaged input (not gzip, a CRC or length mismatch, a truncated file, an S3 download that
ends early) is a `CorruptInputError` naming the file and the byte offset: never a silently
shorter corpus.

Bad records (invalid JSON, not an object, missing key, non-string value, blank line, bad
UTF-8, an empty file) are reported as `file:line: reason`. With `on_bad_record="fail"` the
first one raises `BadRecordError`; with "skip" they are counted in `ReadStats` and the
first few are kept for the final report.
"""
from __future__ import annotations

import dataclasses
import glob
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


class CorruptInputError(ValueError):
    """A whole input is damaged (not gzip, bad CRC, truncated file or download): `file: byte N: reason`."""

    def __init__(self, where: str, offset: int, reason: str) -> None:
        super().__init__(f"{where}: byte {offset}: {reason}")
        self.where, self.offset, self.reason = where, offset, reason


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One JSONL(.gz) input: a local path or an S3 object (with the size and ETag listed)."""

    uri: str  # local absolute path or s3://bucket/key
    size: int
    etag: str | None = None  # S3 only
    mtime_ns: int | None = None  # local only

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
    input_bytes: int = 0  # bytes as stored (compressed for .gz) read so far: progress against the files' sizes
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
    return [local_input(p) for p in names]


def local_input(path: Path) -> InputFile:
    st = path.stat()
    return InputFile(str(path.resolve()), st.st_size, mtime_ns=st.st_mtime_ns)


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
    """sha256 over the inputs' identities: S3 objects' size + ETag, local files' size + mtime.

    Local files are identified like `make` does (size and modification time) rather than by
    hashing their bytes, which would cost a full extra pass over the corpus on every run;
    a rewrite that keeps both size and mtime needs --force.
    """
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.uri.encode() + b"\0")
        if f.is_s3:
            digest.update(f"{f.size}:{f.etag}".encode())
        elif f.mtime_ns is not None:
            digest.update(f"{f.size}:{f.mtime_ns}".encode())
        else:
            with open(f.uri, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading lines

@dataclasses.dataclass(frozen=True)
class OversizeLine:
    """Stands in for a line longer than the reader's limit: only its length was kept, never its bytes."""

    size: int


def _split_lines(chunks: Iterable[bytes], max_line: int | None = None) -> Iterator[bytes | OversizeLine]:
    """Re-cut a stream of byte chunks into lines (without the newline).

    With `max_line`, a line longer than that is not accumulated: it is skipped to its newline
    and an `OversizeLine` with its length is yielded in its place, so memory stays bounded.
    """
    tail = b""
    skipping = 0  # > 0: inside an over-long line, this many bytes seen so far
    for chunk in chunks:
        if skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                skipping += len(chunk)
                continue
            yield OversizeLine(skipping + cut)
            skipping, chunk = 0, chunk[cut + 1:]
        parts = (tail + chunk).split(b"\n") if tail else chunk.split(b"\n")
        tail = parts.pop()
        if max_line is not None and parts and max(map(len, parts)) > max_line:
            yield from (OversizeLine(len(part)) if len(part) > max_line else part for part in parts)
        else:
            yield from parts
        if max_line is not None and len(tail) > max_line:
            skipping, tail = len(tail), b""
    if skipping:
        yield OversizeLine(skipping)
    elif tail:
        yield tail if max_line is None or len(tail) <= max_line else OversizeLine(len(tail))


def _gunzip(chunks: Iterable[bytes], where: str = "<stream>") -> Iterator[bytes]:
    """Decompress a gzip stream chunk by chunk, including multi-member files (e.g. `cat a.gz b.gz`).

    Every failure raises `CorruptInputError` naming `where` and the compressed byte offset:
    not gzip (bad magic or header), damaged deflate data, a CRC or length mismatch, and a
    stream that ends before its last member does (a truncated file or download).
    """
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    offset = 0  # compressed bytes fed to the current decompressor's predecessors
    member_start = 0
    started = False  # the current member has received input
    for chunk in chunks:
        while chunk:
            if not started and member_start > 0:
                # zero padding after a member (some writers pad to a block size; Python's gzip allows it)
                padded = len(chunk)
                chunk = chunk.lstrip(b"\0")
                offset += padded - len(chunk)
                member_start = offset
                if not chunk:
                    break
            started = True
            try:
                out = decomp.decompress(chunk)
            except zlib.error as err:
                raise CorruptInputError(where, offset, f"not a valid gzip stream ({err}); "
                                        f"the member starting at byte {member_start} is damaged") from err
            if out:
                yield out
            if decomp.eof:
                used = len(chunk) - len(decomp.unused_data)
                offset += used
                member_start = offset
                chunk = decomp.unused_data
                decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
                started = False
            else:
                offset += len(chunk)
                chunk = b""
    if started and not decomp.eof:
        raise CorruptInputError(where, offset, f"truncated gzip stream: it ends inside the member starting at "
                                               f"byte {member_start}")
    if offset == 0 and not started:
        return  # an empty file: reported by the caller as "empty file"
    tail = decomp.flush()
    if tail:
        yield tail


def _local_chunks(f: InputFile, chunk_bytes: int) -> Iterator[bytes]:
    with open(f.uri, "rb") as fh:
        while True:
            chunk = fh.read(chunk_bytes)
            if not chunk:
                return
            yield chunk


def _counted(chunks: Iterable[bytes], stats: ReadStats | None) -> Iterator[bytes]:
    for chunk in chunks:
        if stats is not None:
            stats.input_bytes += len(chunk)
        yield chunk


def _s3_chunks(f: InputFile, client: Any, chunk_bytes: int = S3_CHUNK_BYTES) -> Iterator[bytes]:
    loc = parse_s3_uri(f.uri)
    # IfMatch: the object must still be the one whose ETag went into the fingerprint.
    kwargs = {"IfMatch": f.etag} if f.etag else {}
    body = client.get_object(Bucket=loc.bucket, Key=loc.key, **kwargs)["Body"]
    received = 0
    try:
        for chunk in body.iter_chunks(chunk_bytes):
            received += len(chunk)
            yield chunk
    finally:
        body.close()
    # A body cut short (a dropped connection) must not read as a shorter, valid corpus.
    if received != f.size:
        raise CorruptInputError(f.uri, received, f"download ended after {received} of the {f.size} bytes listed")


def iter_lines(f: InputFile, *, s3_client: Any | None = None, max_line: int | None = None,
               chunk_bytes: int = S3_CHUNK_BYTES, stats: ReadStats | None = None) -> Iterator[bytes | OversizeLine]:
    """The decompressed lines of one input, streamed in chunks of `chunk_bytes` (see `_split_lines`)."""
    if f.is_s3:
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        chunks = _s3_chunks(f, s3_client, chunk_bytes)
    else:
        chunks = _local_chunks(f, chunk_bytes)
    chunks = _counted(chunks, stats)
    yield from _split_lines(_gunzip(chunks, f.uri) if f.gzipped else chunks, max_line)


# --------------------------------------------------------------------------- parsing records

try:  # orjson parses about twice as fast; json stays the judge of what is valid (see parse_record)
    from orjson import JSONDecodeError as _FastJSONError
    from orjson import loads as _fast_loads
except ImportError:  # an image without orjson: the standard library alone
    _FastJSONError, _fast_loads = ValueError, json.loads


def parse_record(line: bytes, json_key: str) -> tuple[str | None, str | None]:
    """(text, None) for a usable record, (None, reason) otherwise. Pure; never raises.

    A line orjson rejects is parsed again by the standard library, which decides: records
    json accepts (NaN, huge integers in other fields) stay usable, and the reason for a bad
    one is json's (with the position).
    """
    try:
        record = _fast_loads(line)
    except _FastJSONError:
        return _parse_record_stdlib(line, json_key)
    return _text_of(record, json_key)


def _parse_record_stdlib(line: bytes, json_key: str) -> tuple[str | None, str | None]:
    try:
        record = json.loads(line)  # JSON allows the surrounding whitespace, so also a trailing \r
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 ({err.reason} at byte {err.start})"
    except ValueError as err:
        return None, "blank line" if not line.strip() else f"invalid JSON ({err})"
    return _text_of(record, json_key)


def _text_of(record: Any, json_key: str) -> tuple[str | None, str | None]:
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    text = record.get(json_key, _MISSING)
    if text is _MISSING:
        keys = ", ".join(sorted(record)[:5]) or "none"
        return None, f"missing key {json_key!r} (keys: {keys})"
    if not isinstance(text, str):
        return None, f"key {json_key!r} is {type(text).__name__}, expected a string"
    return text, None


_MISSING = object()


def iter_records(f: InputFile, *, json_key: str, max_document_bytes: int | None = None,
                 stats: ReadStats | None = None, s3_client: Any | None = None,
                 chunk_bytes: int = S3_CHUNK_BYTES) -> Iterator[tuple[int, str | None, str | None]]:
    """(line, text, None) for each usable record of `f`, (line, None, reason) for each bad one.

    Raises `CorruptInputError` when the file itself is damaged (see `_gunzip`, `_s3_chunks`).
    """
    line_no = 0
    for line_no, line in enumerate(iter_lines(f, s3_client=s3_client, max_line=max_document_bytes,
                                              chunk_bytes=chunk_bytes, stats=stats), start=1):
        if type(line) is OversizeLine:
            yield line_no, None, (f"document line of {line.size} bytes is longer than --max-document-bytes "
                                  f"{max_document_bytes} (raise it to keep such documents)")
            continue
        if stats is not None:
            stats.bytes_read += len(line) + 1
        text, reason = parse_record(line, json_key)
        yield line_no, text, reason
    if line_no == 0:
        yield 0, None, "empty file (no records)"


def _bad_record_handler(on_bad_record: str, stats: ReadStats) -> Callable[[str], None]:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {', '.join(BAD_RECORD_POLICIES)}, got {on_bad_record!r}")

    def bad(message: str) -> None:
        if on_bad_record == "fail":
            raise BadRecordError(message + " (use --on-bad-record skip to skip such records)")
        stats.record_problem(message)

    return bad


def _usable_records(f: InputFile, bad: Callable[[str], None], **kwargs: Any) -> Iterator[tuple[int, str]]:
    """(line, text) of each usable record of `f`; each bad one goes to `bad` as `file:line: reason`."""
    for line_no, text, reason in iter_records(f, **kwargs):
        if reason is None:
            yield line_no, text
        else:
            bad(f"{f.uri}:{line_no}: {reason}")


def read_documents(files: Iterable[InputFile], *, json_key: str = "text", on_bad_record: OnBadRecord = "fail",
                   stats: ReadStats | None = None, s3_client: Any | None = None,
                   max_document_bytes: int | None = None) -> Iterator[Document]:
    """Yield every usable document of every file, in order; bad records per `on_bad_record`.

    A damaged file (`CorruptInputError`) is fatal under either policy here: its earlier
    documents have already been handed out and cannot be taken back. `read_text_batches`
    (the Megatron pipeline's reader) drops such a file whole instead.
    """
    stats = stats if stats is not None else ReadStats()
    bad = _bad_record_handler(on_bad_record, stats)
    for f in files:
        try:
            for line_no, text in _usable_records(f, bad, json_key=json_key, max_document_bytes=max_document_bytes,
                                                 stats=stats, s3_client=s3_client):
                stats.documents += 1
                yield Document(text, f.uri, line_no)
        except CorruptInputError as err:
            raise BadRecordError(f"{err} (a damaged file cannot be used in part)") from err


@dataclasses.dataclass(frozen=True)
class TextBatch:
    """Consecutive documents of one file, as the pipeline's encoder takes them."""

    texts: list[str]
    source: str
    first_of_file: bool  # the pipeline checkpoints its output here, to drop the file if it turns out damaged


@dataclasses.dataclass(frozen=True)
class DroppedFile:
    """`source` turned out damaged (skip mode): every document already read from it must be dropped."""

    source: str
    message: str


def read_text_batches(files: Iterable[InputFile], *, json_key: str = "text", on_bad_record: OnBadRecord = "fail",
                      stats: ReadStats | None = None, s3_client: Any | None = None,
                      max_document_bytes: int | None = None, batch_size: int = 1000,
                      batch_bytes: int = 4 << 20) -> Iterator[TextBatch | DroppedFile]:
    """The documents of `files` in `TextBatch`es of at most `batch_size` documents or about `batch_bytes`.

    A damaged file is a bad record naming the file and byte offset: fatal with "fail"; with
    "skip", a `DroppedFile` follows its batches and none of its documents may be kept.
    """
    stats = stats if stats is not None else ReadStats()
    bad = _bad_record_handler(on_bad_record, stats)
    for f in files:
        texts: list[str] = []
        size = 0
        first = True
        kept = 0
        try:
            for _, text in _usable_records(f, bad, json_key=json_key, max_document_bytes=max_document_bytes,
                                           stats=stats, s3_client=s3_client):
                texts.append(text)
                size += len(text)
                if len(texts) >= batch_size or size >= batch_bytes:
                    kept += len(texts)
                    stats.documents += len(texts)
                    yield TextBatch(texts, f.uri, first)
                    texts, size, first = [], 0, False
        except CorruptInputError as err:
            stats.documents -= kept
            bad(f"{err}; none of its {kept + len(texts)} records read so far are used")
            yield DroppedFile(f.uri, str(err))
            continue
        if texts:
            stats.documents += len(texts)
            yield TextBatch(texts, f.uri, first)
