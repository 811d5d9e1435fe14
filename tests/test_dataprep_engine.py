"""Data preparation engines: gigatoken used only where it gives the tokenizers reference's ids."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trn_workloads.dataprep import synthetic
from trn_workloads.dataprep.config import DataPrepConfig
from trn_workloads.dataprep.pipeline import manifest_path, prepare
from trn_workloads.dataprep.tokenization import (BatchEncoder, EngineError, GigatokenEngine, choose_encoder,
                                                 load_tokenizer, verification_sample)

pytestmark = pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")

# Unicode, emoji (outside the small vocabularies: byte fallback), whitespace runs, empty, very long.
HARD_TEXTS = ["", " ", "\n", "\t\t\t", " " * 3000, "\n" * 500 + "x", "a" * 20000, "café naïve Zürich straße",
              "東京の天気は晴れです", "😀🎉👩‍👩‍👧 family", "Ωmega — €5 “quoted”", "tab\tand\r\nwindows newline",
              "  leading and trailing  ", "literal </s> and <s> inside", "mixed   spaces\u00a0nbsp\u2003em",
              "\u0301 combining first", "🙂" * 2000]


def long_document(seed: int = 4) -> str:
    return "\n\n".join(synthetic.generate_documents(120, seed=seed, median_words=400, sigma=0.2))  # ~ 250 kB


def corpus_texts() -> list[str]:
    return list(synthetic.generate_documents(120, seed=3)) + HARD_TEXTS + [long_document()]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return synthetic.train_bpe_tokenizer(synthetic.generate_documents(300, seed=7),
                                         tmp_path_factory.mktemp("bpe") / "tok", vocab_size=400)


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    return synthetic.train_sentencepiece_bpe_tokenizer(synthetic.generate_documents(300, seed=7),
                                                       tmp_path_factory.mktemp("sp") / "tok", vocab_size=600)


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
    return synthetic.train_wordpiece_tokenizer(synthetic.generate_documents(200, seed=7),
                                               tmp_path_factory.mktemp("wp") / "tok", vocab_size=400)


def reference(tok_dir, texts, *, add_special_tokens=False) -> list[list[int]]:
    tok = load_tokenizer(str(tok_dir))
    out = []
    for text in texts:
        ids = tok.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if ids:
            out.append(ids + [tok.eod_id])
    return out


def read_back(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix, mmap=True)
    return [ds[i].tolist() for i in range(len(ds))]


def run(tok_dir, texts, tmp_path, **kw):
    (tmp_path / "in").mkdir(exist_ok=True)
    synthetic.write_jsonl(tmp_path / "in" / "a.jsonl", texts[: len(texts) // 2])
    synthetic.write_jsonl(tmp_path / "in" / "b.jsonl.gz", texts[len(texts) // 2:])
    cfg = DataPrepConfig(tokenizer=str(tok_dir), inputs=(str(tmp_path / "in"),), output_prefix=str(tmp_path / "c"),
                         workers=2, batch_size=kw.pop("batch_size", 16), **kw)
    result = prepare(cfg)
    return result, json.loads(manifest_path(result.dataset_prefix).read_text())


@pytest.mark.parametrize("kind", ["byte-level BPE", "SentencePiece BPE with byte fallback"])
@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_gigatoken_output_equals_the_reference(bpe_dir, sp_dir, tmp_path, kind, add_special_tokens):
    tok_dir = bpe_dir if kind == "byte-level BPE" else sp_dir
    texts = corpus_texts()

    result, manifest = run(tok_dir, texts, tmp_path, add_special_tokens=add_special_tokens)

    assert manifest["engine"] == result.engine == "gigatoken", manifest["engine_reason"]
    assert read_back(result.dataset_prefix) == reference(tok_dir, texts, add_special_tokens=add_special_tokens)
    assert result.dropped_empty == (0 if add_special_tokens else 1)


def test_sentencepiece_tokenizer_uses_byte_fallback(sp_dir):
    tok = load_tokenizer(str(sp_dir))
    tokens = tok.backend.encode("😀", add_special_tokens=False).tokens
    assert tokens[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert type(GigatokenEngine(tok.backend.to_str()).tokenizer.backend).__name__ == "SentencePieceTokenizer"


def test_wordpiece_falls_back_to_the_reference(wordpiece_dir, tmp_path, caplog):
    texts = corpus_texts()
    with caplog.at_level("WARNING", logger="trn_workloads.dataprep.tokenization"):
        result, manifest = run(wordpiece_dir, texts, tmp_path)

    assert manifest["engine"] == "tokenizers" and "WordPiece" in manifest["engine_reason"]
    assert any("using the reference tokenizers engine" in r.getMessage() and "WordPiece" in r.getMessage()
               for r in caplog.records)
    assert read_back(result.dataset_prefix) == reference(wordpiece_dir, texts)


def test_engine_gigatoken_refuses_instead_of_falling_back(wordpiece_dir, tmp_path):
    with pytest.raises(EngineError, match="--engine gigatoken: gigatoken cannot load this tokenizer.*WordPiece"):
        run(wordpiece_dir, corpus_texts(), tmp_path, engine="gigatoken")
    assert list(tmp_path.glob("c_*")) == []


def test_engine_tokenizers_is_the_reference(bpe_dir, tmp_path):
    texts = corpus_texts()
    result, manifest = run(bpe_dir, texts, tmp_path, engine="tokenizers")
    assert manifest["engine"] == "tokenizers" and manifest["engine_reason"] == "--engine tokenizers"
    assert read_back(result.dataset_prefix) == reference(bpe_dir, texts)


def _wrong_on(marker: str):
    """A gigatoken encode that changes the first id of every document containing `marker`."""
    real = GigatokenEngine.encode

    def encode(self, texts, add_special_tokens):
        flat, counts = real(self, texts, add_special_tokens)
        flat = flat.copy()
        starts = np.cumsum(counts) - counts
        for i, text in enumerate(texts):
            if marker in text and counts[i]:
                flat[starts[i]] = (int(flat[starts[i]]) + 1) % 300
        return flat, counts

    return encode


def test_a_difference_in_the_first_sample_means_the_reference(bpe_dir, monkeypatch):
    monkeypatch.setattr(GigatokenEngine, "encode", _wrong_on("Zürich"))
    tok = load_tokenizer(str(bpe_dir))
    texts = corpus_texts()
    encoder, choice = choose_encoder(tok, verification_sample(texts))
    assert choice.engine == "tokenizers" and "differs from the reference" in choice.reason
    assert "starting 'café naïve Zürich" in choice.reason
    assert encoder.engine is encoder.reference
    with pytest.raises(EngineError, match="--engine gigatoken: gigatoken differs"):
        choose_encoder(tok, verification_sample(texts), engine="gigatoken")


def test_a_difference_in_a_later_file_restarts_with_the_reference(bpe_dir, tmp_path, monkeypatch, caplog):
    """The first file passes the check; the second file's sample differs: the whole run is redone."""
    monkeypatch.setattr(GigatokenEngine, "encode", _wrong_on("only-in-the-second-file"))
    first = list(synthetic.generate_documents(60, seed=1))
    second = ["only-in-the-second-file " + t for t in synthetic.generate_documents(30, seed=2)]
    (tmp_path / "in").mkdir()
    synthetic.write_jsonl(tmp_path / "in" / "1.jsonl", first)
    synthetic.write_jsonl(tmp_path / "in" / "2.jsonl", second)
    cfg = DataPrepConfig(tokenizer=str(bpe_dir), inputs=(str(tmp_path / "in"),), output_prefix=str(tmp_path / "c"),
                         workers=1, batch_size=8)
    with caplog.at_level("WARNING", logger="trn_workloads.dataprep.pipeline"):
        result = prepare(cfg)
    assert result.engine == "tokenizers"
    assert any("starting again with the tokenizers engine" in r.getMessage() and "2.jsonl" in r.getMessage()
               for r in caplog.records)
    assert read_back(result.dataset_prefix) == reference(bpe_dir, first + second)


def test_special_tokens_added_by_gigatoken_path_match_the_post_processor(bpe_dir):
    tok = load_tokenizer(str(bpe_dir))
    texts = HARD_TEXTS + list(synthetic.generate_documents(30, seed=5))
    fast = BatchEncoder(tok.backend, eod_id=tok.eod_id, add_special_tokens=True,
                        engine=GigatokenEngine(tok.backend.to_str()))
    batch = fast.encode_texts(texts)
    got = [d.tolist() for d in np.split(batch.ids, np.cumsum(batch.lengths)[:-1])]
    assert got == reference(bpe_dir, texts, add_special_tokens=True)
    assert fast.mismatch(texts) is None


def test_verification_sample_spans_the_batch_within_its_budget():
    texts = [f"doc {i} " + "x" * (i % 50) for i in range(2000)]
    sample = verification_sample(texts, 5000)
    assert sum(map(len, sample)) <= 5000
    assert texts[0] in sample and any(t.startswith("doc 19") for t in sample)
    assert verification_sample(["y" * 100, "z" * 50], 10) == ["z" * 50]  # over budget: the shortest anyway
    assert verification_sample([], 10) == []


@pytest.mark.parametrize("change, message", [
    ({"engine": "fast"}, "--engine: must be one of auto, gigatoken, tokenizers, got 'fast'"),
    ({"verify_bytes": 0}, "--verify-bytes: must be >= 1024, got 0 (gigatoken is never used unchecked)"),
    ({"max_document_bytes": 10}, "--max-document-bytes: must be >= 1024, got 10"),
    ({"batch_bytes": 1}, "--batch-bytes: must be >= 1024, got 1"),
    ({"gigatoken_cache_bytes": 5}, "--gigatoken-cache-bytes: must be >= 1048576, got 5"),
])
def test_new_settings_are_validated_with_the_option_name(tmp_path, change, message):
    from trn_workloads.dataprep.config import ConfigError

    cfg = DataPrepConfig(**{**dict(tokenizer="tok", inputs=("a.jsonl",), output_prefix=str(tmp_path / "c")),
                            **change})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare(cfg)
    assert list(tmp_path.iterdir()) == []
