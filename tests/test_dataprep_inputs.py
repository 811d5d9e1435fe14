"""Data preparation inputs and runs: damaged gzip (local and S3) never gives a partial corpus,
over-long lines stay out of memory, one run per prefix, progress with bytes, percent and ETA."""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from trn_workloads.dataprep import synthetic
from trn_workloads.dataprep.cli import main as cli_main
from trn_workloads.dataprep.config import DataPrepConfig
from trn_workloads.dataprep.documents import (BadRecordError, CorruptInputError, InputFile, OversizeLine, _gunzip,
                                              _s3_chunks, _split_lines)
from trn_workloads.dataprep.indexed import dataset_paths
from trn_workloads.dataprep.lock import RunLockedError, lock_path, run_lock
from trn_workloads.dataprep.pipeline import manifest_path, prepare
from trn_workloads.dataprep.progress import Progress

pytestmark = pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")

REPO = Path(__file__).resolve().parents[1]
GOOD = list(synthetic.generate_documents(40, seed=21))
DAMAGED = list(synthetic.generate_documents(200, seed=22))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return synthetic.train_bpe_tokenizer(synthetic.generate_documents(300, seed=7),
                                         tmp_path_factory.mktemp("tok") / "bpe", vocab_size=400)


def reference(tokenizer_dir, texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return [ids + [2] for ids in (tok.encode(t, add_special_tokens=False).ids for t in texts) if ids]


def read_back(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix, mmap=True)
    return [ds[i].tolist() for i in range(len(ds))]


def gz(texts) -> bytes:
    return gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts).encode())


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def bad_crc(data: bytes) -> bytes:
    return data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]  # the CRC32 in the gzip trailer


def not_gzip(_: bytes) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in DAMAGED).encode()  # plain JSONL named .gz


def trailing_garbage(data: bytes) -> bytes:
    return data + b"this is not a second gzip member"


DAMAGE = {"truncated": (truncated, "truncated gzip stream"), "bad CRC": (bad_crc, "incorrect data check"),
          "not gzip": (not_gzip, "incorrect header check"), "trailing garbage": (trailing_garbage, "header check")}


def config(tokenizer_dir, inputs, out, **kw) -> DataPrepConfig:
    return DataPrepConfig(tokenizer=str(tokenizer_dir), inputs=tuple(map(str, inputs)), output_prefix=str(out),
                          workers=1, batch_size=kw.pop("batch_size", 8), **kw)


# --------------------------------------------------------------------------- gzip failures

@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_local_gzip_is_a_bad_record_never_a_partial_corpus(tokenizer_dir, tmp_path, capsys, damage):
    corrupt, reason = DAMAGE[damage]
    good = synthetic.write_jsonl(tmp_path / "a_good.jsonl", GOOD)
    bad = tmp_path / "b_damaged.jsonl.gz"
    bad.write_bytes(corrupt(gz(DAMAGED)))
    out = tmp_path / "out" / "c"

    rc = cli_main(["--tokenizer", str(tokenizer_dir), "--input", str(good), "--input", str(bad),
                   "--output-prefix", str(out), "--batch-size", "8"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{bad}: byte " in err and reason in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []

    # skip: the damaged file is dropped whole, also the batches of it already written
    result = prepare(config(tokenizer_dir, [good, bad], out, on_bad_record="skip"))
    assert result.bad_records == 1 and result.problems[0].startswith(f"{bad}: byte ")
    assert "none of its" in result.problems[0]
    assert read_back(result.dataset_prefix) == reference(tokenizer_dir, GOOD)
    assert result.documents == len(GOOD)


def test_gunzip_reports_the_offset_of_the_damaged_member():
    first, second = gz(["one"]), gz(["two"] * 50)
    with pytest.raises(CorruptInputError, match=rf"f.gz: byte {len(first) + 20}: truncated gzip stream: it ends "
                                                rf"inside the member starting at byte {len(first)}"):
        list(_gunzip([first + second[:20]], "f.gz"))
    assert b"".join(_gunzip([first, second], "f.gz")).count(b"two") == 50
    padded = first + b"\0" * 700 + second + b"\0" * 100  # zero padding between and after members is allowed
    assert b"".join(_gunzip([padded[i:i + 64] for i in range(0, len(padded), 64)], "f.gz")).count(b"two") == 50
    with pytest.raises(CorruptInputError, match="f.gz: byte 0: not a valid gzip stream"):
        list(_gunzip([b"\0" * 10 + first], "f.gz"))  # but not before the first member
    assert list(_gunzip([], "empty.gz")) == []


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def iter_chunks(self, size):
        for i in range(0, len(self.data), size):
            yield self.data[i:i + size]

    def close(self):
        pass


class _ShortReadClient:
    """An S3 client whose GET body ends early (a dropped connection), shorter than the listed size."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_object(self, **kw):
        return {"Body": _Body(self.data[: len(self.data) // 2])}


def test_s3_download_shorter_than_the_listed_size_is_an_error():
    data = b'{"text": "x"}\n' * 100  # plain JSONL: a short body would otherwise just look like fewer lines
    f = InputFile("s3://b/k.jsonl", len(data), etag="e")
    with pytest.raises(CorruptInputError, match=rf"s3://b/k.jsonl: byte {len(data) // 2}: download ended after "
                                                rf"{len(data) // 2} of the {len(data)} bytes listed"):
        list(_s3_chunks(f, _ShortReadClient(data), 64))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_gzip_through_s3_is_a_bad_record(tokenizer_dir, tmp_path, aws_env, damage):
    import boto3

    corrupt, reason = DAMAGE[damage]
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.create_bucket(Bucket="corpus", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    s3.put_object(Bucket="corpus", Key="web/a.jsonl.gz", Body=gz(GOOD))
    s3.put_object(Bucket="corpus", Key="web/b.jsonl.gz", Body=corrupt(gz(DAMAGED)))
    out = tmp_path / "c"

    with pytest.raises(BadRecordError, match=rf"s3://corpus/web/b.jsonl.gz: byte \d+: .*{reason}"):
        prepare(config(tokenizer_dir, ["s3://corpus/web/"], out))
    assert list(tmp_path.glob("c_*")) == []

    result = prepare(config(tokenizer_dir, ["s3://corpus/web/"], out, on_bad_record="skip"))
    assert result.bad_records == 1 and "s3://corpus/web/b.jsonl.gz: byte" in result.problems[0]
    assert read_back(result.dataset_prefix) == reference(tokenizer_dir, GOOD)


# --------------------------------------------------------------------------- long documents

def test_overlong_line_is_skipped_without_being_held():
    chunks = [b'{"text": "a"}\n' + b"x" * 100, b"y" * 5000, b"z" * 100 + b'\n{"text": "b"}\n']
    lines = list(_split_lines(chunks, max_line=1000))
    assert lines == [b'{"text": "a"}', OversizeLine(5200), b'{"text": "b"}']
    assert list(_split_lines([b"short\n", b"q" * 3000], max_line=1000)) == [b"short", OversizeLine(3000)]


def test_overlong_document_is_a_bad_record_with_file_and_line(tokenizer_dir, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "w " * 4000}) + "\n"
                    + json.dumps({"text": "also fine"}) + "\n")
    with pytest.raises(BadRecordError, match=rf"{path}:2: document line of 8\d\d\d bytes is longer than "
                                             rf"--max-document-bytes 4096"):
        prepare(config(tokenizer_dir, [path], tmp_path / "c", max_document_bytes=4096))
    result = prepare(config(tokenizer_dir, [path], tmp_path / "c", max_document_bytes=4096, on_bad_record="skip"))
    assert result.bad_records == 1 and read_back(result.dataset_prefix) == reference(tokenizer_dir,
                                                                                     ["fine", "also fine"])


# Runs the CLI and reports the process's own peak RSS (VmHWM): unlike ru_maxrss, it starts
# afresh at exec, so the (large) pytest process a child is forked from does not count.
PEAK_RSS_WRAPPER = """
import runpy, sys
sys.argv = ["trn_workloads.dataprep", *sys.argv[1:]]
try:
    runpy.run_module("trn_workloads.dataprep", run_name="__main__")
    code = 0
except SystemExit as stop:
    code = stop.code
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_RSS_KB", hwm.split()[1], file=sys.stderr)
sys.exit(code)
"""


def _cli_peak_rss_mb(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'images'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return proc, kb / 1024


def test_memory_stays_bounded_with_a_huge_line(tokenizer_dir, tmp_path):
    """A 150 MB JSON line (the issue's 50 MB line peaked at 11.5 GB) next to ordinary documents.

    Read whole, the line alone costs several hundred MB (bytes, decoded text, ids; GBs with
    the reference engine); the run must stay under a generous 300 MB (it needs ~100 MB), the
    line reported and the other documents written.
    """
    path = tmp_path / "in.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"text": "before"}) + "\n")
        f.write('{"text": "' + "lorem ipsum " * 12_500_000 + '"}\n')
        for text in GOOD:
            f.write(json.dumps({"text": text}) + "\n")
    out = tmp_path / "c"

    proc, peak_mb = _cli_peak_rss_mb(["--tokenizer", str(tokenizer_dir), "--input", str(path), "--output-prefix",
                                      str(out), "--on-bad-record", "skip", "--max-document-bytes", str(8 << 20)])
    assert proc.returncode == 0, proc.stderr
    assert f"{path}:2: document line of 150000012 bytes" in proc.stderr
    assert read_back(f"{out}_text_document") == reference(tokenizer_dir, ["before"] + GOOD)
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 300, f"peak RSS {peak_mb:.0f} MB"


# --------------------------------------------------------------------------- one run per prefix

HOLDER = """
import sys, time
from pathlib import Path
from trn_workloads.dataprep.lock import run_lock
with run_lock(sys.argv[1]):
    Path(sys.argv[2]).write_text("held")
    time.sleep(120)
"""


def test_second_run_on_a_prefix_fails_cleanly_and_a_killed_holder_releases_it(tokenizer_dir, tmp_path):
    good = synthetic.write_jsonl(tmp_path / "in.jsonl", GOOD)
    cfg = config(tokenizer_dir, [good], tmp_path / "out" / "c")
    first = prepare(cfg)
    before = {p: p.read_bytes() for p in (first.bin_path, first.idx_path, first.manifest_path)}
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'images'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, cfg.dataset_prefix, str(ready)], env=env)
    try:
        for _ in range(600):
            if ready.exists() or holder.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        assert ready.exists(), "the lock holder did not start"
        with pytest.raises(RunLockedError, match=rf"another run is writing this output \(pid {holder.pid} on "):
            prepare(DataPrepConfig(**{**cfg.__dict__, "force": True}))
        assert {p: p.read_bytes() for p in before} == before  # untouched: nothing renamed, nothing deleted
        assert not list((tmp_path / "out").glob("*.partial"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    rerun = prepare(DataPrepConfig(**{**cfg.__dict__, "force": True}))  # the kernel released the dead run's lock
    assert not rerun.skipped and read_back(rerun.dataset_prefix) == reference(tokenizer_dir, GOOD)
    assert not lock_path(cfg.dataset_prefix).exists()


def test_two_concurrent_runs_one_writes_the_other_refuses(tokenizer_dir, tmp_path):
    texts = list(synthetic.generate_documents(1200, seed=9))
    path = synthetic.write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out" / "c"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'images'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "trn_workloads.dataprep", "--tokenizer", str(tokenizer_dir), "--input", str(path),
           "--output-prefix", str(out), "--workers", "1", "--batch-size", "4", "--engine", "tokenizers"]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in runs]
    codes = sorted(rc for rc, _, _ in results)
    refused = [err for rc, _, err in results if rc == 2]
    # Either they overlapped (one refused, naming the other) or one finished before the other
    # started (then the second found it up to date); never a crash or a damaged output.
    assert codes in ([0, 2], [0, 0]), results
    assert all("another run is writing this output" in err for err in refused)
    assert read_back(f"{out}_text_document") == reference(tokenizer_dir, texts)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [p.name for p in dataset_paths(f"{out}_text_document")] + [manifest_path(f"{out}_text_document").name])


def test_lock_is_reentrant_across_sequential_runs(tmp_path):
    prefix = str(tmp_path / "x_text_document")
    with run_lock(prefix) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            with run_lock(prefix):
                pass
    with run_lock(prefix):
        pass
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- progress

def test_progress_lines_have_bytes_percent_and_eta(tokenizer_dir, tmp_path, caplog):
    good = synthetic.write_jsonl(tmp_path / "in.jsonl", GOOD)
    with caplog.at_level("INFO", logger="trn_workloads.dataprep.pipeline"):
        result = prepare(config(tokenizer_dir, [good], tmp_path / "c", progress_interval_s=1e-9, batch_size=5))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    size = good.stat().st_size
    assert len(lines) >= 5 and all("percent=" in x and "eta=" in x and f"/{size} " in x for x in lines)
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")][-1]
    assert f"documents={result.documents} tokens={result.tokens} " in done and f"bytes={size}/{size}" in done


def test_progress_bar_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(1000, 30.0, stream=stream, tty=True)
    progress.last -= 10
    progress.update(documents=10, tokens=500, input_bytes=250, bad_records=0)
    progress.done(documents=40, tokens=2000, input_bytes=1000, bad_records=0)
    text = stream.getvalue()
    assert text.startswith("\r[#######.....................]  25.0% 10 docs 500 tokens") and "ETA " in text
    assert text.endswith("\n")


def test_crc_flip_is_detected_by_zlib():
    data = gz(["abc"])
    assert zlib.crc32(b'{"text": "abc"}\n') == int.from_bytes(data[-8:-4], "little")  # the byte bad_crc flips


def _distinct_words(count: int, seed: int) -> list[str]:
    import random
    import string

    rng = random.Random(seed)
    return [" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 12))) for _ in range(300))
            for _ in range(count)]


def test_gigatoken_cache_is_bounded_by_rebuilding(tokenizer_dir, tmp_path):
    """gigatoken 0.10.0 caches every distinct pre-token (~12 MB per MB of such text): 10 MB of
    all-distinct words would add ~120 MB. Rebuilding it whenever the process has grown by
    32 MB keeps the run near its base."""
    path = tmp_path / "distinct.jsonl"
    texts = _distinct_words(4000, seed=5)
    synthetic.write_jsonl(path, texts)
    out = tmp_path / "c"
    proc, peak_mb = _cli_peak_rss_mb(["--tokenizer", str(tokenizer_dir), "--input", str(path), "--output-prefix",
                                      str(out), "--gigatoken-cache-bytes", str(32 << 20), "--batch-bytes", str(1 << 20),
                                      "--engine", "gigatoken"])
    assert proc.returncode == 0, proc.stderr
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 240, f"peak RSS {peak_mb:.0f} MB"  # measured: ~180 MB; without reloading ~300 MB
    assert read_back(f"{out}_text_document") == reference(tokenizer_dir, texts)
