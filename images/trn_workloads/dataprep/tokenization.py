"""Batch tokenization with the Rust `tokenizers` library, identical to one `encode(text)` per text.

Public API (shared with the Ray pretraining workload):

    tok = load_tokenizer("/shared/tokenizers/llama2")      # or a Hugging Face id (HF_TOKEN)
    encoder = BatchEncoder(tok.backend, eod_id=tok.eod_id)
    for batch in encoder.token_batches(documents, batch_size=1000):
        batch.ids        # every document's ids, then EOD, back to back (int64)
        batch.lengths    # tokens per document including its EOD

`encode_batch_fast` tokenizes a whole batch on all threads of rayon's pool with the GIL released,
so the reader thread can parse the next batch meanwhile. Its output equals calling
`encode(text, add_special_tokens=...)` on each text with the same flag; truncation and
padding that a saved tokenizer.json may carry are switched off so no document is cut.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np



@dataclasses.dataclass(frozen=True)
class LoadedTokenizer:
    backend: Any  # tokenizers.Tokenizer (Rust), truncation and padding off
    hf: Any  # transformers PreTrainedTokenizerFast, for save_pretrained
    eod_id: int
    vocab_size: int  # including added tokens: the largest id + 1 that can appear
    source: str


def set_tokenizer_threads(workers: int) -> None:
    """Let `encode_batch` use `workers` threads.

    TOKENIZERS_PARALLELISM is read on every call (tests and notebooks often set it to false);
    RAYON_NUM_THREADS is read once, when rayon's pool first starts in this process.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(workers)


def load_tokenizer(name_or_dir: str, *, eod_token: str | None = None,
                   hf_token: str | None = None) -> LoadedTokenizer:
    """A fast tokenizer from a local directory or a Hugging Face id (fetched with `hf_token`).

    The end-of-document id is the tokenizer's EOS token unless `eod_token` names another.
    """
    from transformers import AutoTokenizer

    is_dir = Path(name_or_dir).is_dir()
    try:
        hf = AutoTokenizer.from_pretrained(name_or_dir, use_fast=True, token=None if is_dir else hf_token)
    except (OSError, ValueError) as err:
        where = "directory" if is_dir else "Hugging Face id (set HF_TOKEN for gated models)"
        raise ValueError(f"--tokenizer {name_or_dir!r}: cannot load a tokenizer from this {where}: {err}") from err
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"--tokenizer {name_or_dir!r}: no fast (Rust) tokenizer available for it")
    eod = eod_token if eod_token is not None else hf.eos_token
    if eod is None:
        raise ValueError(f"--tokenizer {name_or_dir!r} has no EOS token; name the end-of-document token "
                         f"with --eod-token")
    eod_id = hf.convert_tokens_to_ids(eod)
    if eod_id is None or (eod_id == hf.unk_token_id and eod != hf.unk_token):
        raise ValueError(f"--eod-token {eod!r} is not in the vocabulary of {name_or_dir!r}")
    backend = hf.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    return LoadedTokenizer(backend=backend, hf=hf, eod_id=int(eod_id), vocab_size=len(hf), source=name_or_dir)


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    ids: np.ndarray  # int64, documents back to back, each followed by EOD
    lengths: np.ndarray  # int64, tokens per document including EOD
    dropped_empty: int  # documents that produced no tokens (not written, like Megatron's preprocessor)


class BatchEncoder:
    def __init__(self, backend: Any, *, eod_id: int, add_special_tokens: bool = False) -> None:
        self.backend = backend
        self.eod_id = int(eod_id)
        # False matches Megatron's preprocessing (text_to_ids: no BOS); True adds what the
        # tokenizer's post-processor adds (e.g. Llama's BOS) to every document.
        self.add_special_tokens = add_special_tokens
        # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets, which we
        # never use: same ids, about 20% less work.
        self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def encode_one(self, text: str) -> list[int]:
        """The reference: one document's ids + EOD ([] when the text gives no tokens)."""
        ids = self.backend.encode(text, add_special_tokens=self.add_special_tokens).ids
        return ids + [self.eod_id] if ids else []

    def encode_texts(self, texts: list[str]) -> TokenBatch:
        encodings = self._encode_batch(texts, add_special_tokens=self.add_special_tokens)
        id_lists = [e.ids for e in encodings]
        token_counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        kept = token_counts > 0
        lengths = token_counts[kept] + 1
        eod = (self.eod_id,)
        flat = np.fromiter(itertools.chain.from_iterable(
            itertools.chain.from_iterable((ids, eod) for ids in id_lists if ids)),
            dtype=np.int64, count=int(lengths.sum()))
        return TokenBatch(ids=flat, lengths=lengths, dropped_empty=int((~kept).sum()))

    def token_batches(self, documents: Iterable[Any], *, batch_size: int = 1000,
                      prefetch: int = 4) -> Iterator[TokenBatch]:
        """Tokenize `documents` (objects with `.text`, or plain strings) in batches, in order.

        A background thread collects the next batches of texts (reading and JSON parsing)
        while this thread tokenizes; at most `prefetch` batches wait, so memory is bounded.
        """
        for texts in prefetched(_text_batches(documents, batch_size), prefetch):
            yield self.encode_texts(texts)


def _text_batches(documents: Iterable[Any], batch_size: int) -> Iterator[list[str]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts: list[str] = []
    for doc in documents:
        texts.append(doc if isinstance(doc, str) else doc.text)
        if len(texts) == batch_size:
            yield texts
            texts = []
    if texts:
        yield texts


_DONE = object()


def prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run the `items` generator in a thread, `depth` items ahead; its exceptions re-raise here."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone away

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(err)

    thread = threading.Thread(target=produce, name="dataprep-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
