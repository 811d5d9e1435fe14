"""Tokenization engines: gigatoken (fast) checked against the Rust `tokenizers` reference.

Public API (shared with the Ray pretraining workload):

    tok = load_tokenizer("/shared/tokenizers/llama2")      # or a Hugging Face id (HF_TOKEN)
    encoder = BatchEncoder(tok.backend, eod_id=tok.eod_id)  # reference engine
    encoder = choose_encoder(tok, sample_texts)             # gigatoken when it gives the same ids
    for batch in encoder.token_batches(documents, batch_size=1000):
        batch.ids        # every document's ids, then EOD, back to back (int64)
        batch.lengths    # tokens per document including its EOD

Engines turn a list of texts into raw ids (no special tokens); `BatchEncoder` adds what the
tokenizer's post-processor adds (e.g. Llama's BOS) when asked, then EOD, and drops documents
that give no tokens. Its output always equals the reference: one `encode(text,
add_special_tokens=...)` per document with the Rust `tokenizers` library.

- `ReferenceEngine`: `tokenizers` `encode_batch_fast` on rayon's threads (the GIL released).
- `GigatokenEngine`: gigatoken 0.10.0 (byte-level BPE, e.g. GPT-2 / Llama 3, and
  SentencePiece-style BPE with byte fallback, e.g. Llama 2), built from the same
  tokenizer.json. It refuses other models (WordPiece, Unigram) when it loads.

`choose_encoder` uses gigatoken only when it loads the tokenizer AND gives exactly the
reference ids on a sample of the run's own documents; anything else falls back to the
reference, and says why (`EngineChoice.reason`). `BatchEncoder.verify` repeats the check on
later samples (the pipeline checks the first batch of every input file).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ENGINES = ("auto", "gigatoken", "tokenizers")
DEFAULT_VERIFY_BYTES = 128 * 1024  # text checked against the reference before gigatoken is trusted
DEFAULT_GIGATOKEN_CACHE_BYTES = 128 << 20  # process growth that makes gigatoken drop its (unbounded) cache


class EngineError(ValueError):
    """--engine gigatoken was required but gigatoken cannot be used for this tokenizer or data."""


@dataclasses.dataclass(frozen=True)
class LoadedTokenizer:
    backend: Any  # tokenizers.Tokenizer (Rust), truncation and padding off
    files: tuple[Path, ...]  # the tokenizer's files as published (what save_tokenizer copies)
    eod_id: int
    vocab_size: int  # including added tokens: the largest id + 1 that can appear
    source: str
    json: str = ""  # backend.to_str() (truncation and padding off), serialized once


# What a Hugging Face tokenizer directory holds (transformers' save_pretrained writes the first three;
# tokenizer.model is the SentencePiece original some repos ship too).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def set_tokenizer_threads(workers: int) -> None:
    """Let `encode_batch` use `workers` threads.

    TOKENIZERS_PARALLELISM is read on every call (tests and notebooks often set it to false);
    RAYON_NUM_THREADS is read once, when rayon's pool first starts in this process.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(workers)


def _tokenizer_files(name_or_dir: str, hf_token: str | None) -> list[Path]:
    """The tokenizer files of a local directory, or of a Hugging Face repo (downloaded to the HF cache)."""
    directory = Path(name_or_dir)
    if directory.is_dir():
        if not (directory / "tokenizer.json").is_file():
            raise ValueError(f"--tokenizer {name_or_dir!r}: the directory has no tokenizer.json (a fast "
                             f"tokenizer; convert a slow one with transformers' save_pretrained first)")
        return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    from huggingface_hub import hf_hub_download
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.23 (older training images)
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    # Without a reachable Hub, hf_hub_download retries each file for ~23 s (huggingface_hub 0.36.2
    # file_download.py: http_backoff max_retries=5, waits 1+2+4+8+8 s) and then raises
    # LocalEntryNotFoundError, a subclass of EntryNotFoundError ("no such file"). So look once,
    # quickly, and read only the local HF cache when the Hub cannot be reached.
    unreachable = hub_unreachable()
    files = []
    for name in TOKENIZER_FILES:
        try:
            files.append(Path(hf_hub_download(name_or_dir, name, token=hf_token, local_files_only=bool(unreachable))))
        except LocalEntryNotFoundError as err:  # before EntryNotFoundError: it is one
            if name == "tokenizer.json":
                raise ValueError(hub_unreachable_message(name_or_dir, unreachable or str(err))) from None
        except EntryNotFoundError:
            if name == "tokenizer.json":
                raise ValueError(f"--tokenizer {name_or_dir!r}: the repo has no tokenizer.json (no fast tokenizer)") from None
        except Exception as err:  # noqa: BLE001 - auth, no such repo: all end the run the same way
            raise ValueError(f"--tokenizer {name_or_dir!r}: cannot load a tokenizer from this Hugging Face id "
                             f"(set HF_TOKEN for gated models): {err}") from err
    return files


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached from here, or None when it answers a TCP
    connect. HF_HUB_OFFLINE=1 counts as unreachable (the user said so); HF_ENDPOINT is honoured
    (huggingface_hub.constants.ENDPOINT, HF_HUB_OFFLINE)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
    except OSError as err:
        return f"{url.hostname}: {err}"
    return None


def hub_unreachable_message(name: str, why: str) -> str:
    # `huggingface-cli download REPO FILES... --local-dir DIR [--token T]`: huggingface_hub 0.36.2
    # commands/download.py (the version pinned in images/*/requirements.txt).
    return (f"--tokenizer {name!r}: the Hugging Face Hub cannot be reached from here ({why}) and {name}'s "
            f"tokenizer.json is not in the local Hugging Face cache; pass a local directory that holds "
            f"tokenizer.json instead (--tokenizer /shared/tokenizers/{name.rsplit('/', 1)[-1]}; in a workload stack, "
            f"the data section's tokenizer key), made on a machine with network by `huggingface-cli download "
            f"{name} tokenizer.json tokenizer_config.json special_tokens_map.json --local-dir <dir>` "
            f"(add --token for gated models) and copied to /shared")


def _configured_eos(files: list[Path]) -> str | None:
    """The EOS token as transformers reads it: tokenizer_config.json, else special_tokens_map.json."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = next((f for f in files if f.name == name), None)
        if path is None:
            continue
        eos = json.loads(path.read_text()).get("eos_token")
        if isinstance(eos, dict):  # a serialized AddedToken
            eos = eos.get("content")
        if eos:
            return str(eos)
    return None


def load_tokenizer(name_or_dir: str, *, eod_token: str | None = None,
                   hf_token: str | None = None) -> LoadedTokenizer:
    """A fast tokenizer from a local directory or a Hugging Face id (fetched with `hf_token`).

    Read with the Rust `tokenizers` library directly (transformers, and the torch it imports,
    would add ~300 MB and seconds to every run). The end-of-document id is the configured EOS
    token unless `eod_token` names another.
    """
    from tokenizers import Tokenizer

    files = _tokenizer_files(name_or_dir, hf_token)
    try:
        backend = Tokenizer.from_file(str(files[0]))
    except Exception as err:  # noqa: BLE001 - the Rust loader's errors are plain Exceptions
        raise ValueError(f"--tokenizer {name_or_dir!r}: {files[0]} is not a valid tokenizer.json: {err}") from err
    eod = eod_token if eod_token is not None else _configured_eos(files)
    if eod is None:
        raise ValueError(f"--tokenizer {name_or_dir!r} has no EOS token; name the end-of-document token "
                         f"with --eod-token")
    eod_id = backend.token_to_id(eod)
    if eod_id is None:
        raise ValueError(f"--eod-token {eod!r} is not in the vocabulary of {name_or_dir!r}")
    backend.no_truncation()
    backend.no_padding()
    return LoadedTokenizer(backend=backend, files=tuple(files), eod_id=int(eod_id),
                           vocab_size=backend.get_vocab_size(with_added_tokens=True), source=name_or_dir,
                           json=backend.to_str())


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    ids: np.ndarray  # int64 or uint32, documents back to back, each followed by EOD
    lengths: np.ndarray  # int64, tokens per document including EOD
    dropped_empty: int  # documents that produced no tokens (not written, like Megatron's preprocessor)


class ReferenceEngine:
    """The Rust `tokenizers` library: the reference every other engine is checked against."""

    name = "tokenizers"

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets, which we
        # never use: same ids, about 20% less work.
        self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def encode(self, texts: list[str], add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all texts back to back, ids per text)."""
        id_lists = [e.ids for e in self._encode_batch(texts, add_special_tokens=add_special_tokens)]
        counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(counts.sum()))
        return flat, counts


class GigatokenEngine:
    """gigatoken's Rust encoder (https://github.com/marcelroed/gigatoken, PyPI gigatoken==0.10.0).

    It encodes without special tokens (like `add_special_tokens=False`); `BatchEncoder` adds
    the post-processor's tokens itself. Raises `EngineError` when gigatoken refuses the model.

    gigatoken 0.10.0 caches every distinct pre-token it has encoded, per Tokenizer object and
    without a bound (measured: ~12 MB of RSS per MB of text of all-distinct words; bounded
    caches exist only in upstream commits after the release). Dropping the object frees its
    cache, so when the process has grown by more than `cache_bytes` since the tokenizer was
    built, it is rebuilt (a cold cache costs a little speed): memory stays bounded by the
    setting, and text whose pre-tokens repeat (most corpora) never pays for a rebuild.
    """

    name = "gigatoken"

    def __init__(self, tokenizer_json: str, *, parallel: bool = True,
                 cache_bytes: int = DEFAULT_GIGATOKEN_CACHE_BYTES) -> None:
        try:
            import gigatoken
        except ImportError as err:
            raise EngineError(f"gigatoken is not installed ({err})") from err
        self._json = tokenizer_json
        self._load = gigatoken.Tokenizer.from_json
        self.cache_bytes = cache_bytes
        self.reloads = 0
        try:
            # gigatoken 0.10.0 gigatoken/_tokenizer.py: Tokenizer.from_json(tokenizer.json contents);
            # load_hf_json raises RuntimeError("Unsupported model type ...") for WordPiece/Unigram.
            self.tokenizer = self._load(tokenizer_json)
        except Exception as err:  # noqa: BLE001 - any refusal means: use the reference
            raise EngineError(f"gigatoken cannot load this tokenizer: {str(err).splitlines()[0]}") from err
        self._base_rss = _rss_bytes()
        # parallel=None lets gigatoken detect forked/multiprocessing children (its _parallel.py);
        # False keeps everything on this thread (--workers 1).
        self.parallel = None if parallel else False

    def _bound_cache(self) -> None:
        rss = _rss_bytes()
        if rss is None or self._base_rss is None or rss - self._base_rss <= self.cache_bytes:
            return
        self.tokenizer = None  # free the old cache before the new tokenizer allocates
        _return_freed_memory()
        self.tokenizer = self._load(self._json)
        self.reloads += 1
        log.info("gigatoken rebuilt to drop its pre-token cache (the process had grown by %d MB; rebuild %d)",
                 (rss - self._base_rss) >> 20, self.reloads)
        # what is resident now is not the new cache's: the next rebuild comes after another cache_bytes
        self._base_rss = _rss_bytes()

    def encode(self, texts: list[str], add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
        if add_special_tokens:
            raise ValueError("GigatokenEngine encodes without special tokens; BatchEncoder adds them")
        self._bound_cache()
        rows = self.tokenizer.encode_batch(texts, parallel=self.parallel)
        layout = rows.layout
        if type(layout).__name__ == "ListOffsetArray":  # what 0.10.0 returns: offsets + one uint32 buffer
            offsets = np.asarray(layout.offsets.data)
            flat = np.asarray(layout.content.data)[offsets[0]:offsets[-1]]
            return flat, np.diff(offsets)
        import awkward as ak

        return ak.to_numpy(ak.flatten(rows)), ak.to_numpy(ak.num(rows))


def _rss_bytes() -> int | None:
    """This process's resident set size (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them per thread arena otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def special_tokens_around(backend: Any) -> tuple[list[int], list[int]]:
    """(ids before, ids after) a document that `encode(text, add_special_tokens=True)` adds.

    Found by encoding a probe both ways, so it is whatever the post-processor does; raises
    ValueError when the difference is not a fixed prefix + suffix (then only the reference
    engine can add them).
    """
    probe = "probe text 123"
    plain = backend.encode(probe, add_special_tokens=False).ids
    full = backend.encode(probe, add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            prefix, suffix = full[:start], full[start + len(plain):]
            if backend.encode("", add_special_tokens=True).ids == prefix + suffix:
                return prefix, suffix
    raise ValueError("the tokenizer's post-processor does more than add fixed tokens around a document")


class BatchEncoder:
    """Documents -> `TokenBatch`es with one engine; equal to the reference's per-document encode + EOD."""

    def __init__(self, backend: Any, *, eod_id: int, add_special_tokens: bool = False,
                 engine: ReferenceEngine | GigatokenEngine | None = None) -> None:
        self.backend = backend
        self.eod_id = int(eod_id)
        # False matches Megatron's preprocessing (text_to_ids: no BOS); True adds what the
        # tokenizer's post-processor adds (e.g. Llama's BOS) to every document.
        self.add_special_tokens = add_special_tokens
        self.reference = ReferenceEngine(backend)
        self.engine = engine or self.reference
        self._prefix: list[int] = []
        self._suffix: list[int] = []
        if add_special_tokens and self.engine is not self.reference:
            self._prefix, self._suffix = special_tokens_around(backend)

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def encode_one(self, text: str) -> list[int]:
        """The reference: one document's ids + EOD ([] when the text gives no tokens)."""
        ids = self.backend.encode(text, add_special_tokens=self.add_special_tokens).ids
        return ids + [self.eod_id] if ids else []

    def encode_texts(self, texts: list[str]) -> TokenBatch:
        if self.engine is self.reference:
            flat, counts = self.reference.encode(texts, self.add_special_tokens)
            return _with_eod(flat, counts, [], [], self.eod_id)
        flat, counts = self.engine.encode(texts, False)
        return _with_eod(flat, counts, self._prefix, self._suffix, self.eod_id)

    def mismatch(self, texts: Sequence[str]) -> str | None:
        """None when this encoder gives the reference's ids for every text, else where it differs."""
        if self.engine is self.reference or not texts:
            return None
        batch = self.encode_texts(list(texts))
        got = np.split(batch.ids, np.cumsum(batch.lengths)[:-1]) if len(batch.lengths) else []
        # The reference's batch encode on all threads: the same ids as encode_one() per text (the
        # tokenizers library's guarantee, checked in tests/test_dataprep.py), in a fraction of the time.
        reference = self.reference.encode(list(texts), self.add_special_tokens)
        want = [ids.tolist() + [self.eod_id] if len(ids) else []
                for ids in np.split(reference[0], np.cumsum(reference[1])[:-1])]
        want_kept = [w for w in want if w]
        if len(got) != len(want_kept):
            return f"{len(got)} non-empty documents instead of {len(want_kept)}"
        kept = (i for i, w in enumerate(want) if w)
        for i, g, w in zip(kept, got, want_kept):
            if g.tolist() != w:
                diff = next((k for k, (a, b) in enumerate(zip(g.tolist(), w)) if a != b), min(len(g), len(w)))
                return (f"document {i} of the sample ({len(texts[i])} characters, starting {texts[i][:40]!r}) "
                        f"differs from token {diff} on")
        return None

    def token_batches(self, documents: Iterable[Any], *, batch_size: int = 1000,
                      prefetch: int = 4) -> Iterator[TokenBatch]:
        """Tokenize `documents` (objects with `.text`, or plain strings) in batches, in order.

        A background thread collects the next batches of texts (reading and JSON parsing)
        while this thread tokenizes; at most `prefetch` batches wait, so memory is bounded.
        """
        for texts in prefetched(_text_batches(documents, batch_size), prefetch):
            yield self.encode_texts(texts)


def _with_eod(flat: np.ndarray, counts: np.ndarray, prefix: list[int], suffix: list[int],
              eod_id: int) -> TokenBatch:
    """Each document's prefix + ids + suffix + EOD back to back; documents without tokens dropped."""
    extra = len(prefix) + len(suffix)
    kept = counts + extra > 0
    lengths = counts[kept] + extra + 1
    if not extra:
        ends = np.cumsum(counts)[kept]
        ids = np.insert(flat, ends, eod_id)  # keeps the engine's dtype (uint32 or int64)
        return TokenBatch(ids=ids, lengths=lengths, dropped_empty=int((~kept).sum()))
    # prefix/suffix (add_special_tokens with a non-reference engine): no document is empty,
    # every part is placed by index.
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    ids = np.empty(int(lengths.sum()), dtype=np.int64)
    for j, token in enumerate(prefix):
        ids[starts + j] = token
    firsts = np.cumsum(counts) - counts  # where each document's ids start in `flat`
    # every token's slot: its document's start + the prefix + its position within the document
    ids[np.repeat(starts + len(prefix) - firsts, counts) + np.arange(len(flat))] = flat
    for j, token in enumerate(suffix):
        ids[starts + len(prefix) + counts + j] = token
    ids[starts + lengths - 1] = eod_id
    return TokenBatch(ids=ids, lengths=lengths, dropped_empty=0)


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    engine: str  # "gigatoken" | "tokenizers"
    reason: str  # why: the check passed, gigatoken refused, a sample differed, or --engine


def choose_encoder(tok: LoadedTokenizer, sample: Sequence[str], *, add_special_tokens: bool = False,
                   engine: str = "auto", workers: int = 1,
                   gigatoken_cache_bytes: int = DEFAULT_GIGATOKEN_CACHE_BYTES) -> tuple[BatchEncoder, EngineChoice]:
    """gigatoken when allowed, it loads, and it gives the reference's ids on `sample`; else the reference.

    engine="tokenizers" always takes the reference; "gigatoken" raises `EngineError` where
    "auto" falls back (the fallback is logged as a warning).
    """
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    reference = BatchEncoder(tok.backend, eod_id=tok.eod_id, add_special_tokens=add_special_tokens)
    if engine == "tokenizers":
        return reference, EngineChoice("tokenizers", "--engine tokenizers")
    try:
        fast = BatchEncoder(tok.backend, eod_id=tok.eod_id, add_special_tokens=add_special_tokens,
                            engine=GigatokenEngine(tok.json, parallel=workers > 1,
                                                   cache_bytes=gigatoken_cache_bytes))
        problem = fast.mismatch(sample)
        if problem is not None:
            raise EngineError(f"gigatoken differs from the reference on this run's documents: {problem}")
    except (EngineError, ValueError) as err:
        if engine == "gigatoken":
            raise EngineError(f"--engine gigatoken: {err}") from err
        log.warning("using the reference tokenizers engine: %s", err)
        return reference, EngineChoice("tokenizers", str(err))
    sample_bytes = sum(len(t) for t in sample)
    return fast, EngineChoice("gigatoken", f"same ids as the reference on {len(sample)} sample documents "
                                           f"({sample_bytes} characters)")


def verification_sample(texts: Sequence[str], budget_chars: int = DEFAULT_VERIFY_BYTES) -> list[str]:
    """Documents of `texts` up to `budget_chars` in total, in their order: the shortest ones
    first with half the budget (many documents, and the edge cases: empty, whitespace, odd
    characters), then with the rest documents spread evenly over the batch. Never empty for
    a non-empty batch: at least its shortest document."""
    if not texts:
        return []
    picked: set[int] = set()
    left = budget_chars
    for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        if len(texts[i]) > left - budget_chars // 2:
            break
        picked.add(i)
        left -= len(texts[i])
    step = max(1, len(texts) // 64)
    for offset in range(step):
        for i in range(offset, len(texts), step):
            if i not in picked and len(texts[i]) <= left:
                picked.add(i)
                left -= len(texts[i])
        if left <= 0:
            break
    if not picked:  # every document is longer than the budget: check the shortest one anyway
        picked.add(min(range(len(texts)), key=lambda i: len(texts[i])))
    return [texts[i] for i in sorted(picked)]


def checked_token_batches(tok: LoadedTokenizer, documents: Iterable[Any], *, batch_size: int = 1000,
                          add_special_tokens: bool = False, engine: str = "auto", workers: int = 1,
                          verify_bytes: int = DEFAULT_VERIFY_BYTES, choices: list[EngineChoice] | None = None,
                          prefetch: int = 4) -> Iterator[TokenBatch]:
    """`BatchEncoder.token_batches` with the engine chosen by `choose_encoder` on the first batch.

    For callers that see only a stream of documents (the Ray data step); the choice made is
    appended to `choices` when given.
    """
    encoder = None
    for texts in prefetched(_text_batches(documents, batch_size), prefetch):
        if encoder is None:
            encoder, choice = choose_encoder(tok, verification_sample(texts, verify_bytes),
                                             add_special_tokens=add_special_tokens, engine=engine, workers=workers)
            log.info("engine: %s (%s)", choice.engine, choice.reason)
            if choices is not None:
                choices.append(choice)
        yield encoder.encode_texts(texts)


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
