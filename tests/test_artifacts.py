"""trn_workloads.artifacts against moto's S3 server over HTTP."""
from __future__ import annotations

import boto3
import pytest

from trn_workloads import artifacts


@pytest.fixture
def bucket(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    return "artifacts"


def test_parse_s3_uri():
    assert artifacts.parse_s3_uri("s3://b/a/b.pt") == artifacts.S3Location("b", "a/b.pt")
    assert artifacts.parse_s3_uri("s3://b") == artifacts.S3Location("b", "")
    assert str(artifacts.parse_s3_uri("s3://b/p/").child("x/y")) == "s3://b/p/x/y"
    assert str(artifacts.parse_s3_uri("s3://b/p").child("y")) == "s3://b/p/y"
    with pytest.raises(ValueError, match="not an S3 URI"):
        artifacts.parse_s3_uri("/fsx/models")
    with pytest.raises(ValueError, match="no bucket"):
        artifacts.parse_s3_uri("s3:///key")


def test_upload_file_to_key_and_prefix(bucket, tmp_path):
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights")
    assert artifacts.upload_file(src, "s3://artifacts/a/renamed.pt") == "s3://artifacts/a/renamed.pt"
    assert artifacts.upload_file(src, "s3://artifacts/b/") == "s3://artifacts/b/model.pt"
    s3 = boto3.client("s3")
    assert s3.get_object(Bucket=bucket, Key="a/renamed.pt")["Body"].read() == b"weights"
    assert s3.get_object(Bucket=bucket, Key="b/model.pt")["Body"].read() == b"weights"
    with pytest.raises(FileNotFoundError, match="not a file"):
        artifacts.upload_file(tmp_path / "missing", "s3://artifacts/x")


def test_upload_dir_and_download_prefix_roundtrip(bucket, tmp_path):
    src = tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"m")
    (src / "sub" / "log.txt").write_text("hello")
    written = artifacts.upload_dir(src, "s3://artifacts/run1")
    assert written == ["s3://artifacts/run1/model.pt", "s3://artifacts/run1/sub/log.txt"]

    dest = tmp_path / "back"
    assert artifacts.download("s3://artifacts/run1", dest) == dest
    assert (dest / "model.pt").read_bytes() == b"m"
    assert (dest / "sub" / "log.txt").read_text() == "hello"
    assert sorted(p.name for p in dest.rglob("*")) == ["log.txt", "model.pt", "sub"]  # no temp files left


def test_download_single_object_to_file_and_into_dir(bucket, tmp_path):
    boto3.client("s3").put_object(Bucket=bucket, Key="x/data.csv", Body=b"a,b\n")
    assert artifacts.download("s3://artifacts/x/data.csv", tmp_path / "d.csv").read_bytes() == b"a,b\n"
    assert artifacts.download("s3://artifacts/x/data.csv", tmp_path) == tmp_path / "data.csv"
    with pytest.raises(FileNotFoundError, match="s3://artifacts/nothing"):
        artifacts.download("s3://artifacts/nothing", tmp_path / "n")


def test_multipart_upload_and_download(bucket, tmp_path, monkeypatch):
    # 5 MiB is S3's smallest part size; an 11 MiB file then needs three parts.
    monkeypatch.setattr(artifacts, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(artifacts, "MULTIPART_CHUNK", 5 * 1024 * 1024)
    payload = bytes(range(256)) * (11 * 4096)
    src = tmp_path / "big.bin"
    src.write_bytes(payload)
    artifacts.upload_file(src, "s3://artifacts/big.bin")
    etag = boto3.client("s3").head_object(Bucket=bucket, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # S3 marks multipart objects with "-<parts>"
    assert artifacts.download("s3://artifacts/big.bin", tmp_path / "copy.bin").read_bytes() == payload


def test_download_refuses_keys_that_escape_the_destination(bucket, tmp_path):
    boto3.client("s3").put_object(Bucket=bucket, Key="p/../../escape.txt", Body=b"x")
    with pytest.raises(ValueError, match="outside"):
        artifacts.download("s3://artifacts/p/", tmp_path / "d")
    assert not (tmp_path / "escape.txt").exists()


def test_failed_download_keeps_old_file_and_leaves_no_temp(tmp_path):
    class FailingClient:
        """Writes part of the object, then fails, as a dropped connection would."""

        def head_object(self, **_):
            return {}

        def download_file(self, bucket, key, filename, Config=None):
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise ConnectionError("connection reset")

    dest = tmp_path / "model.pt"
    dest.write_bytes(b"old complete model")
    with pytest.raises(ConnectionError):
        artifacts.download("s3://b/model.pt", dest, client=FailingClient())
    assert dest.read_bytes() == b"old complete model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
