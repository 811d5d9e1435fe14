"""Data preparation: Megatron .bin/.idx read back with megatron-core, token for token."""
from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trn_workloads.dataprep import synthetic
from trn_workloads.dataprep.cli import main as cli_main
from trn_workloads.dataprep.config import ConfigError, DataPrepConfig
from trn_workloads.dataprep.documents import (BadRecordError, InputError, ReadStats, _gunzip, _split_lines,
                                              parse_record, read_documents, resolve_inputs)
from trn_workloads.dataprep.indexed import (IndexedDatasetWriter, dataset_paths, encode_index, partial_path,
                                            token_dtype)
from trn_workloads.dataprep.pipeline import manifest_path, prepare
from trn_workloads.dataprep.tokenization import BatchEncoder, load_tokenizer, prefetched

# megatron-core warns on import that Transformer Engine/Apex are absent (CPU reader only here).
pytestmark = pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")

REPO = Path(__file__).resolve().parents[1]
EOD = 2  # </s> in synthetic.train_bpe_tokenizer
BOS = 1
EDGE_TEXTS = ["", " ", "\n\n", "x", "café 東京 😀", "literal </s> inside", "  leading and trailing  ",
              "tab\tand\r\nwindows newline"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    return synthetic.train_bpe_tokenizer(synthetic.generate_documents(300, seed=7), out, vocab_size=400)


@pytest.fixture(scope="module")
def rust_tokenizer(tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def reference_tokens(tokenizer, texts, *, add_special_tokens=False) -> list[list[int]]:
    """What the output must hold: each document encoded on its own, then EOD; empty ones dropped."""
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if ids:
            out.append(ids + [EOD])
    return out


def read_back(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix, mmap=True)
    assert list(ds.document_indices) == list(range(len(ds) + 1))
    return [ds[i].tolist() for i in range(len(ds))]


@pytest.fixture
def corpus(tmp_path) -> tuple[list[Path], list[str]]:
    """Two inputs (plain and gzip) with mixed lengths, edge-case texts and an empty document."""
    texts = list(synthetic.generate_documents(150, seed=3)) + EDGE_TEXTS
    (tmp_path / "in").mkdir()
    a = synthetic.write_jsonl(tmp_path / "in" / "a.jsonl", texts[:90])
    b = synthetic.write_jsonl(tmp_path / "in" / "b.jsonl.gz", texts[90:])
    return [a, b], texts


def config(tokenizer_dir, inputs, out, **kw) -> DataPrepConfig:
    return DataPrepConfig(tokenizer=str(tokenizer_dir), inputs=tuple(str(i) for i in inputs),
                          output_prefix=str(out), workers=2, batch_size=kw.pop("batch_size", 16), **kw)


# --------------------------------------------------------------------------- correctness

@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_output_equals_per_document_encode_plus_eod(tokenizer_dir, rust_tokenizer, corpus, tmp_path,
                                                    add_special_tokens):
    inputs, texts = corpus
    result = prepare(config(tokenizer_dir, [tmp_path / "in" / "*.jsonl*"], tmp_path / "out" / "corpus",
                            add_special_tokens=add_special_tokens))

    expected = reference_tokens(rust_tokenizer, texts, add_special_tokens=add_special_tokens)
    assert result.dataset_prefix == str(tmp_path / "out" / "corpus_text_document")
    assert read_back(result.dataset_prefix) == expected
    assert result.documents == len(expected) and result.tokens == sum(map(len, expected))
    # "" (and, without BOS, nothing else here) gives no tokens: dropped, as Megatron's preprocessor does.
    assert result.dropped_empty == (0 if add_special_tokens else 1)
    assert all(doc[0] == BOS for doc in expected) == add_special_tokens
    manifest = json.loads(manifest_path(result.dataset_prefix).read_text())
    assert manifest["dtype"] == "uint16" and manifest["eod_id"] == EOD and manifest["documents"] == len(expected)
    assert not list((tmp_path / "out").glob("*.partial"))


def test_batch_encoder_equals_single_encode(tokenizer_dir, rust_tokenizer):
    tok = load_tokenizer(str(tokenizer_dir))
    texts = EDGE_TEXTS + list(synthetic.generate_documents(40, seed=11))
    for flag in (False, True):
        encoder = BatchEncoder(tok.backend, eod_id=tok.eod_id, add_special_tokens=flag)
        batches = list(encoder.token_batches(texts, batch_size=7))
        flat = np.concatenate([b.ids for b in batches])
        lengths = np.concatenate([b.lengths for b in batches])
        docs = [d.tolist() for d in np.split(flat, np.cumsum(lengths)[:-1])]
        assert docs == [encoder.encode_one(t) for t in texts if encoder.encode_one(t)]
        assert docs == reference_tokens(rust_tokenizer, texts, add_special_tokens=flag)


def test_token_dtype_follows_megatron_threshold():
    assert token_dtype(400) == np.uint16
    assert token_dtype(32000) == np.uint16
    assert token_dtype(65499) == np.uint16
    assert token_dtype(65500) == np.int32
    assert token_dtype(128256) == np.int32
    with pytest.raises(ValueError, match="vocab_size"):
        token_dtype(0)


def test_index_layout_is_megatron_mmidx():
    idx = encode_index(np.array([3, 1, 4]), np.dtype(np.uint16))
    assert idx[:9] == b"MMIDIDX\x00\x00"
    version, code, sequences, documents = struct.unpack("<QBQQ", idx[9:34])
    assert (version, code, sequences, documents) == (1, 8, 3, 4)
    body = idx[34:]
    assert np.frombuffer(body[:12], np.int32).tolist() == [3, 1, 4]
    assert np.frombuffer(body[12:36], np.int64).tolist() == [0, 6, 8]  # byte offsets, 2 bytes per token
    assert np.frombuffer(body[36:], np.int64).tolist() == [0, 1, 2, 3]
    assert struct.unpack("<B", encode_index(np.array([1]), np.dtype(np.int32))[17:18])[0] == 4


def test_large_vocabulary_is_written_as_int32(tmp_path):
    """A vocabulary >= 65500 ids: int32 on disk, ids above 65535 survive the round trip."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70000)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(tmp_path / "tok")
    texts = ["w1 w69999 w65536", "w65535 w0", "w42"]
    synthetic.write_jsonl(tmp_path / "in.jsonl", texts)

    result = prepare(config(tmp_path / "tok", [tmp_path / "in.jsonl"], tmp_path / "big"))

    assert read_back(result.dataset_prefix) == [[3, 70001, 65538, 1], [65537, 2, 1], [44, 1]]
    assert json.loads(manifest_path(result.dataset_prefix).read_text())["dtype"] == "int32"
    assert dataset_paths(result.dataset_prefix)[0].stat().st_size == 9 * 4


# --------------------------------------------------------------------------- crash safety

@pytest.mark.slow
def test_killed_run_leaves_no_final_files_and_rerun_completes(tokenizer_dir, rust_tokenizer, tmp_path):
    texts = list(synthetic.generate_documents(1500, seed=5))
    synthetic.write_jsonl(tmp_path / "big.jsonl", texts)
    out = tmp_path / "out" / "corpus"
    cmd = [sys.executable, "-m", "trn_workloads.dataprep", "--tokenizer", str(tokenizer_dir), "--input",
           str(tmp_path / "big.jsonl"), "--output-prefix", str(out), "--workers", "1", "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'images'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    bin_path, idx_path = dataset_paths(f"{out}_text_document")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (partial_path(bin_path).exists() and partial_path(bin_path).stat().st_size > 50_000):
            assert proc.poll() is None, "the run finished before it could be killed; give it more data"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not bin_path.exists() and not idx_path.exists() and not manifest_path(f"{out}_text_document").exists()
    assert partial_path(bin_path).exists()  # the killed run's leftovers

    rerun = subprocess.run(cmd[:-1] + ["500"], env=env, capture_output=True, text=True, timeout=120)

    assert rerun.returncode == 0, rerun.stderr
    assert read_back(f"{out}_text_document") == reference_tokens(rust_tokenizer, texts)
    assert not list(out.parent.glob("*.partial"))


def test_exception_inside_writer_removes_partial_files(tmp_path):
    prefix = tmp_path / "x_text_document"
    with pytest.raises(RuntimeError, match="boom"):
        with IndexedDatasetWriter(prefix, np.dtype(np.uint16)) as writer:
            writer.add_batch(np.array([5, 6, 2]), np.array([3]))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_rerun_keeps_previous_complete_output(tokenizer_dir, corpus, tmp_path):
    inputs, _ = corpus
    cfg = config(tokenizer_dir, inputs, tmp_path / "out" / "corpus")
    first = prepare(cfg)
    before = {p: p.read_bytes() for p in (first.bin_path, first.idx_path, first.manifest_path)}
    with open(inputs[0], "a") as f:
        f.write("{broken\n")

    with pytest.raises(BadRecordError, match=rf"{inputs[0]}:91: invalid JSON"):
        prepare(cfg)

    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in before)


# --------------------------------------------------------------------------- skip when done

def test_second_run_skips_and_changed_input_rebuilds(tokenizer_dir, corpus, tmp_path):
    inputs, texts = corpus
    cfg = config(tokenizer_dir, inputs, tmp_path / "out" / "corpus")
    first = prepare(cfg)
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (first.bin_path, first.idx_path)}

    second = prepare(cfg)
    assert second.skipped and second.documents == first.documents and second.tokens == first.tokens
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stamp} == stamp

    # Worker count and batch size do not change the output: still up to date.
    assert prepare(DataPrepConfig(**{**cfg.__dict__, "workers": 1, "batch_size": 3})).skipped

    synthetic.write_jsonl(inputs[1], texts[90:] + ["one more document"])
    third = prepare(cfg)
    assert not third.skipped and third.documents == first.documents + 1

    # An output setting that changes tokens (BOS on every document) rebuilds too.
    assert not prepare(DataPrepConfig(**{**cfg.__dict__, "add_special_tokens": True})).skipped


def test_damaged_output_is_rebuilt(tokenizer_dir, corpus, tmp_path):
    inputs, _ = corpus
    cfg = config(tokenizer_dir, inputs, tmp_path / "out" / "corpus")
    first = prepare(cfg)
    with open(first.bin_path, "ab") as f:
        f.write(b"\0\0")
    assert not prepare(cfg).skipped
    first.idx_path.unlink()
    assert not prepare(cfg).skipped
    assert prepare(cfg).skipped


# --------------------------------------------------------------------------- bad input

BAD_LINES = {
    "invalid JSON": b'{"text": "unterminated\n',
    "missing key 'text'": b'{"body": "no text key"}\n',
    "key 'text' is int": b'{"text": 42}\n',
    "expected a JSON object": b'["a", "list"]\n',
    "blank line": b"\n",
    "not valid UTF-8": b'{"text": "\xff\xfe"}\n',
}


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_bad_record_fails_with_file_and_line(tokenizer_dir, tmp_path, capsys, reason):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "good one"}\n{"text": "good two"}\n' + BAD_LINES[reason] + b'{"text": "good"}\n')
    out = tmp_path / "out" / "c"

    rc = cli_main(["--tokenizer", str(tokenizer_dir), "--input", str(path), "--output-prefix", str(out)])

    assert rc == 2
    err = capsys.readouterr().err
    assert f"{path}:3: {reason}" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_bad_record_skipped_and_counted(tokenizer_dir, rust_tokenizer, tmp_path, reason):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "good one"}\n' + BAD_LINES[reason] + b'{"text": "good two"}\n')

    result = prepare(config(tokenizer_dir, [path], tmp_path / "c", on_bad_record="skip"))

    assert result.bad_records == 1 and result.problems[0].startswith(f"{path}:2: {reason}")
    assert read_back(result.dataset_prefix) == reference_tokens(rust_tokenizer, ["good one", "good two"])


def test_empty_file_is_reported(tokenizer_dir, rust_tokenizer, tmp_path):
    empty = tmp_path / "a_empty.jsonl"
    empty.write_bytes(b"")
    good = synthetic.write_jsonl(tmp_path / "b.jsonl", ["hello"])
    with pytest.raises(BadRecordError, match=rf"{empty}:0: empty file"):
        prepare(config(tokenizer_dir, [empty, good], tmp_path / "c"))
    assert not dataset_paths(str(tmp_path / "c_text_document"))[0].exists()

    result = prepare(config(tokenizer_dir, [empty, good], tmp_path / "c", on_bad_record="skip"))
    assert result.bad_records == 1 and read_back(result.dataset_prefix) == reference_tokens(rust_tokenizer, ["hello"])


def test_no_usable_documents_is_an_error(tokenizer_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"x": 1}\n{"text": ""}\n')
    with pytest.raises(BadRecordError, match="no usable documents"):
        prepare(config(tokenizer_dir, [path], tmp_path / "c", on_bad_record="skip"))
    assert list(tmp_path.glob("c_*")) == []


@pytest.mark.parametrize("change, message", [
    ({"workers": 0}, "--workers: must be >= 1"),
    ({"batch_size": 0}, "--batch-size: must be >= 1"),
    ({"on_bad_record": "ignore"}, "--on-bad-record: must be one of fail, skip, got 'ignore'"),
    ({"output_prefix": "/tmp/data/"}, "--output-prefix: must end in a file name prefix"),
    ({"output_prefix": "s3://b/p"}, "--output-prefix: must be a local or FSx path"),
    ({"inputs": ()}, "--input: give at least one"),
    ({"json_key": ""}, "--json-key: must not be empty"),
])
def test_invalid_settings_name_the_option(tmp_path, change, message):
    cfg = DataPrepConfig(**{**dict(tokenizer="tok", inputs=("a.jsonl",), output_prefix=str(tmp_path / "c")),
                            **change})
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        prepare(cfg)
    assert list(tmp_path.iterdir()) == []


def test_inputs_that_name_nothing_are_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"'.*/nothing-\*\.jsonl': the pattern matches no files"):
        resolve_inputs([str(tmp_path / "nothing-*.jsonl")])
    with pytest.raises(InputError, match="no such file"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="only .jsonl and .jsonl.gz files"):
        resolve_inputs([str(tmp_path / "notes.txt")])
    with pytest.raises(InputError, match="directory has no"):
        resolve_inputs([str(tmp_path)])


def test_unknown_tokenizer_is_a_clear_error(tmp_path, corpus):
    inputs, _ = corpus
    with pytest.raises(ValueError, match="--tokenizer 'no-such-org/no-such-model'"):
        prepare(DataPrepConfig(tokenizer="no-such-org/no-such-model", inputs=tuple(map(str, inputs)),
                               output_prefix=str(tmp_path / "o" / "c")))
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- reader pieces

def test_line_splitting_and_multimember_gzip():
    assert list(_split_lines([b"a\nb", b"c\n", b"", b"d"])) == [b"a", b"bc", b"d"]
    two_members = gzip.compress(b'{"text": "1"}\n') + gzip.compress(b'{"text": "2"}\n')
    chunks = [two_members[i:i + 7] for i in range(0, len(two_members), 7)]
    assert list(_split_lines(_gunzip(chunks))) == [b'{"text": "1"}', b'{"text": "2"}']


def test_parse_record_reasons():
    assert parse_record(b'{"text": "hi"}\r', "text") == ("hi", None)
    assert parse_record(b'{"content": "hi"}', "content") == ("hi", None)
    assert parse_record(b"null", "text")[1] == "expected a JSON object, got NoneType"


def test_directory_input_and_custom_key(tokenizer_dir, rust_tokenizer, tmp_path):
    (tmp_path / "d").mkdir()
    synthetic.write_jsonl(tmp_path / "d" / "2.jsonl", ["second"], key="content")
    synthetic.write_jsonl(tmp_path / "d" / "1.jsonl.gz", ["first"], key="content")
    result = prepare(config(tokenizer_dir, [tmp_path / "d"], tmp_path / "c", json_key="content"))
    assert read_back(result.dataset_prefix) == reference_tokens(rust_tokenizer, ["first", "second"])


def test_reader_reports_stats_in_skip_mode(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "a"}\nnope\n{"text": "b"}\n')
    stats = ReadStats()
    docs = list(read_documents(resolve_inputs([str(path)]), on_bad_record="skip", stats=stats))
    assert [(d.text, d.line) for d in docs] == [("a", 1), ("b", 3)]
    assert stats.documents == 2 and stats.bad_records == 1 and stats.problems[0].startswith(f"{path}:2: invalid JSON")


def test_prefetch_re_raises_reader_errors_in_order():
    def items():
        yield 1
        yield 2
        raise BadRecordError("f.jsonl:3: bad")

    got = []
    with pytest.raises(BadRecordError, match="f.jsonl:3"):
        for item in prefetched(items(), 1):
            got.append(item)
    assert got == [1, 2]


def test_save_tokenizer_for_training(tokenizer_dir, corpus, tmp_path):
    inputs, _ = corpus
    saved = tmp_path / "shared" / "tokenizer"
    prepare(config(tokenizer_dir, inputs, tmp_path / "c", save_tokenizer=str(saved)))
    prepare(config(tokenizer_dir, inputs, tmp_path / "c", save_tokenizer=str(saved)))  # replaces in place
    reloaded = load_tokenizer(str(saved))
    assert reloaded.eod_id == EOD and reloaded.vocab_size == 400
    assert sorted(p.name for p in saved.parent.iterdir()) == ["tokenizer"]


# --------------------------------------------------------------------------- S3 input

def test_s3_prefix_input_matches_local(tokenizer_dir, rust_tokenizer, corpus, tmp_path, aws_env):
    import boto3

    inputs, texts = corpus
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.create_bucket(Bucket="corpus", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    s3.upload_file(str(inputs[0]), "corpus", "web/part-0.jsonl")
    s3.upload_file(str(inputs[1]), "corpus", "web/part-1.jsonl.gz")
    s3.put_object(Bucket="corpus", Key="web/_SUCCESS", Body=b"")
    s3.put_object(Bucket="corpus", Key="other/x.jsonl", Body=b'{"text": "not under the prefix"}\n')
    cfg = config(tokenizer_dir, ["s3://corpus/web/"], tmp_path / "s3out" / "corpus")

    result = prepare(cfg)

    assert read_back(result.dataset_prefix) == reference_tokens(rust_tokenizer, texts)
    manifest = json.loads(result.manifest_path.read_text())
    assert [i["uri"] for i in manifest["inputs"]] == ["s3://corpus/web/part-0.jsonl", "s3://corpus/web/part-1.jsonl.gz"]
    assert all(i["etag"] for i in manifest["inputs"])
    assert prepare(cfg).skipped

    s3.put_object(Bucket="corpus", Key="web/part-0.jsonl", Body=b'{"text": "replaced"}\n')
    rebuilt = prepare(cfg)
    assert not rebuilt.skipped
    assert read_back(rebuilt.dataset_prefix) == reference_tokens(rust_tokenizer, ["replaced"] + texts[90:])


def test_s3_bad_record_names_object_and_line(tokenizer_dir, tmp_path, aws_env):
    import boto3

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.create_bucket(Bucket="corpus", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    s3.put_object(Bucket="corpus", Key="p/a.jsonl.gz", Body=gzip.compress(b'{"text": "ok"}\n{"txt": "x"}\n'))
    with pytest.raises(BadRecordError, match=r"s3://corpus/p/a.jsonl.gz:2: missing key 'text'"):
        prepare(config(tokenizer_dir, ["s3://corpus/p"], tmp_path / "c"))
    with pytest.raises(InputError, match="no .jsonl or .jsonl.gz objects"):
        prepare(config(tokenizer_dir, ["s3://corpus/nothing/"], tmp_path / "c"))
    assert list(tmp_path.glob("c_*")) == []


def test_older_tokenizers_without_encode_batch_fast_give_the_same_ids(tokenizer_dir, rust_tokenizer):
    """The NeMo image pins transformers 4.31 (tokenizers 0.13, no encode_batch_fast)."""
    class OldTokenizer:  # exposes only what tokenizers 0.13 has
        def __init__(self, inner):
            self.encode, self.encode_batch = inner.encode, inner.encode_batch

    texts = EDGE_TEXTS + list(synthetic.generate_documents(20, seed=2))
    old = BatchEncoder(OldTokenizer(rust_tokenizer), eod_id=EOD)
    assert not hasattr(old.backend, "encode_batch_fast")
    batch = old.encode_texts(texts)
    assert [d.tolist() for d in np.split(batch.ids, np.cumsum(batch.lengths)[:-1])] == \
        reference_tokens(rust_tokenizer, texts)


def test_progress_lines_report_documents_tokens_and_rate(tokenizer_dir, corpus, tmp_path, caplog):
    inputs, _ = corpus
    with caplog.at_level("INFO", logger="trn_workloads.dataprep.pipeline"):
        result = prepare(config(tokenizer_dir, inputs, tmp_path / "c", progress_interval_s=1e-9, batch_size=50))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("progress:", "done:"))]
    assert len(lines) >= 3 and lines[-1].startswith(f"done: documents={result.documents} tokens={result.tokens} ")
    assert all("tokens/s=" in line for line in lines)
