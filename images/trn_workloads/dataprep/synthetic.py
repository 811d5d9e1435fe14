"""Generated corpora and tokenizers for tests and the benchmark (no downloads anywhere).

Documents look like web text where it matters for tokenization speed: lengths spread over
three orders of magnitude (log-normal: many short pages, a long tail of long ones), a
Zipf-like word distribution, punctuation, numbers, newlines and some non-ASCII text.
"""
from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path
from typing import Iterable, Iterator

_SYLLABLES = ("ka", "ro", "mi", "ten", "sa", "lo", "ver", "an", "di", "qu", "est", "ion", "pre", "al", "ing", "ur",
              "tho", "be", "ne", "ly", "ment", "com", "ex", "it", "po", "ra", "gen", "ul", "ti", "fo")
_EXTRAS = ("café", "naïve", "Zürich", "東京", "données", "😀", "—", "€", "Ωmega", "straße")
_PUNCT = (",", ",", ".", ".", ".", ";", ":", "?", "!")


def _vocabulary(rng: random.Random, size: int) -> tuple[list[str], list[float]]:
    words = sorted({"".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(size * 2)})[:size]
    rng.shuffle(words)
    words += list(_EXTRAS)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]  # Zipf
    return words, weights


def generate_documents(count: int, *, seed: int = 0, median_words: int = 180, sigma: float = 1.2,
                       max_words: int = 20000) -> Iterator[str]:
    """`count` documents of log-normally distributed length (median `median_words` words)."""
    rng = random.Random(seed)
    words, weights = _vocabulary(rng, 5000)
    cumulative = list(_accumulate(weights))
    for _ in range(count):
        n = max(1, min(max_words, int(rng.lognormvariate(math.log(median_words), sigma))))
        picked = rng.choices(words, cum_weights=cumulative, k=n)
        parts: list[str] = []
        sentence_left = rng.randint(5, 25)
        for i, word in enumerate(picked):
            if sentence_left == 0:
                parts.append(rng.choice(_PUNCT))
                parts.append("\n\n" if rng.random() < 0.1 else " ")
                sentence_left = rng.randint(5, 25)
                word = word.capitalize()
            elif i:
                parts.append(" ")
            parts.append(str(rng.randint(0, 9999)) if rng.random() < 0.02 else word)
            sentence_left -= 1
        parts.append(".")
        yield "".join(parts)


def _accumulate(values: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


def write_jsonl(path: str | Path, texts: Iterable[str], *, key: str = "text", compress: bool | None = None) -> Path:
    """One `{"id": i, key: text}` object per line; gzip when asked or when the name ends in .gz."""
    path = Path(path)
    compress = path.name.endswith(".gz") if compress is None else compress
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, key: text}, ensure_ascii=False) + "\n")
    return path


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 512) -> Path:
    """A byte-level BPE tokenizer (Llama/GPT style) saved as a Hugging Face fast tokenizer.

    Special tokens <unk>=0, <s>=1, </s>=2; the post-processor adds <s> when
    add_special_tokens=True, so tests can tell the two settings apart.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    hf.save_pretrained(str(out_dir))
    return Path(out_dir)


def train_sentencepiece_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 600) -> Path:
    """A SentencePiece-style BPE with byte fallback (the Llama 2 layout) saved as a fast tokenizer.

    As Llama 2's tokenizer.json: normalizer Prepend("▁") + Replace(" ", "▁"), no
    pre-tokenizer, a BPE model with byte_fallback and the 256 byte tokens <0x00>..<0xFF>
    right after <unk>=0, <s>=1, </s>=2; characters outside the vocabulary become byte tokens.
    Merges are learned on Metaspace-split words (fast to train, never spanning a "▁").
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    learner.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                           limit_alphabet=60, show_progress=False))
    spec = json.loads(learner.to_str())
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    spec["model"].update(vocab=vocab, byte_fallback=True, fuse_unk=True)
    spec["pre_tokenizer"] = None
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    for added in spec["added_tokens"]:
        added["id"] = vocab[added["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    hf.save_pretrained(str(out_dir))
    return Path(out_dir)


def train_wordpiece_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 400) -> Path:
    """A BERT-style WordPiece tokenizer (lowercasing normalizer), EOS [SEP]: one gigatoken does not support."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                                             special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[SEP]").save_pretrained(str(out_dir))
    return Path(out_dir)
