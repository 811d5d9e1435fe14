"""Copy workload artifacts between local/FSx paths and the artifacts bucket.

Small on purpose: `parse_s3_uri`, `upload_file`, `upload_dir`, `download`. All of them
use a plain `boto3.client("s3")`, so the usual AWS environment (IRSA / Pod Identity
credentials, AWS_REGION, AWS_ENDPOINT_URL) decides where they go. Large files go
through s3transfer's multipart upload/download.

Downloads never leave a half-written file behind: each object is written to a temporary
name next to its destination and renamed into place once complete.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Parts of 64 MiB keep a multi-GB compiled model well under S3's 10,000-part limit.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # may be "" (bucket root) or end with "/" (a prefix)

    def child(self, relative: str) -> "S3Location":
        prefix = self.key if (self.key == "" or self.key.endswith("/")) else self.key + "/"
        return S3Location(self.bucket, prefix + relative)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_uri(value: str | os.PathLike) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Location:
    """`s3://bucket/some/key` -> S3Location("bucket", "some/key"); clear error otherwise."""
    if not is_s3_uri(uri):
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket name: {uri!r}")
    return S3Location(bucket, key)


def _client(client: Any | None):
    if client is not None:
        return client
    import boto3

    return boto3.client("s3")


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)


def upload_file(local: str | os.PathLike, s3_uri: str, *, client: Any | None = None) -> str:
    """Upload one file. A URI ending in "/" is a prefix: the file keeps its name under it.

    Returns the full URI of the object written.
    """
    path = Path(local)
    if not path.is_file():
        raise FileNotFoundError(f"cannot upload {path}: not a file")
    dest = parse_s3_uri(s3_uri)
    if dest.key == "" or dest.key.endswith("/"):
        dest = dest.child(path.name)
    _client(client).upload_file(str(path), dest.bucket, dest.key, Config=_transfer_config())
    log.info("uploaded %s -> %s", path, dest)
    return str(dest)


def upload_dir(local: str | os.PathLike, s3_uri: str, *, client: Any | None = None) -> list[str]:
    """Upload every file under `local` below the prefix `s3_uri`, keeping relative paths.

    Returns the URIs written, in sorted order of their relative paths.
    """
    root = Path(local)
    if not root.is_dir():
        raise NotADirectoryError(f"cannot upload {root}: not a directory")
    prefix = parse_s3_uri(s3_uri)
    s3 = _client(client)
    written = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        dest = prefix.child(path.relative_to(root).as_posix())
        s3.upload_file(str(path), dest.bucket, dest.key, Config=_transfer_config())
        written.append(str(dest))
    log.info("uploaded %d files from %s -> %s", len(written), root, prefix)
    return written


def _download_object(s3, bucket: str, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        s3.download_file(bucket, key, tmp_name, Config=_transfer_config())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def download(s3_uri: str, local: str | os.PathLike, *, client: Any | None = None) -> Path:
    """Download an object, or every object under a prefix, to `local`.

    - `s3://b/dir/file` that names an object: written to `local` (or into `local` when
      `local` is an existing directory). Returns the file path.
    - `s3://b/dir` or `s3://b/dir/` that is a prefix: objects are written under `local`
      keeping their paths relative to the prefix. Returns `local`.
    Raises FileNotFoundError when nothing exists at the URI.
    """
    src = parse_s3_uri(s3_uri)
    target = Path(local)
    s3 = _client(client)

    if src.key and not src.key.endswith("/") and _object_exists(s3, src):
        dest = target / Path(src.key).name if target.is_dir() else target
        _download_object(s3, src.bucket, src.key, dest)
        log.info("downloaded %s -> %s", src, dest)
        return dest

    prefix = src.key if (src.key == "" or src.key.endswith("/")) else src.key + "/"
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=src.bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
        if not obj["Key"].endswith("/")  # "folder" marker objects created by the console
    ]
    if not keys:
        raise FileNotFoundError(f"no object or prefix at {s3_uri}")
    root = target.resolve()
    for key in keys:
        dest = (target / key[len(prefix):]).resolve()
        # A key like "a/../../etc/x" must not write outside the destination directory.
        if not dest.is_relative_to(root):
            raise ValueError(f"refusing to download s3://{src.bucket}/{key}: it resolves outside {target}")
        _download_object(s3, src.bucket, key, dest)
    log.info("downloaded %d objects %s -> %s", len(keys), src, target)
    return target


def _object_exists(s3, location: S3Location) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=location.bucket, Key=location.key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
