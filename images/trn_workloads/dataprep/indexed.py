"""Writer for Megatron's memory-mapped indexed dataset (`<prefix>.bin` + `<prefix>.idx`).

The format, as megatron-core's `IndexedDataset` and NeMo's `MMapIndexedDataset` read it:

    .bin  every document's token ids, back to back, in one dtype (no header)
    .idx  b"MMIDIDX\\x00\\x00"          9-byte magic
          u64 version = 1
          u8  dtype code               (uint16 = 8, int32 = 4, ...)
          u64 sequence count  N
          u64 document count  N + 1    (length of the document index array below)
          i32[N] sequence lengths      (tokens per sequence)
          i64[N] sequence pointers     (byte offset of each sequence in .bin)
          i64[N+1] document indices    (0, then the sequence index ending each document)

We write one sequence per document (the `--append-eod` layout used for GPT pretraining), so
the document indices are simply 0..N. Both files are written under temporary names and only
renamed to their final names by `finish()`; an exception inside the `with` block removes
the temporary files, so a failed or killed run never leaves final-named files half-written.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# Megatron's numeric dtype codes (only the two token dtypes are ever written here).
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
# Megatron picks uint16 below this vocabulary size (it keeps a little headroom under 65536).
UINT16_VOCAB_LIMIT = 65500
PARTIAL_SUFFIX = ".partial"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits with Megatron's headroom, else int32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def dataset_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """(`<prefix>.bin`, `<prefix>.idx`): the pair Megatron opens for a data prefix."""
    prefix = str(prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


def encode_index(lengths: np.ndarray, dtype: np.dtype) -> bytes:
    """The complete .idx content for documents of the given token `lengths` (pure)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 0).any() or (lengths > np.iinfo(np.int32).max).any():
        raise ValueError("document lengths must be between 0 and 2**31-1 tokens")
    count = len(lengths)
    pointers = np.zeros(count, dtype=np.int64)
    if count > 1:
        np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    header = INDEX_MAGIC + struct.pack("<Q", INDEX_VERSION) + struct.pack("<B", DTYPE_CODES[dtype])
    header += struct.pack("<Q", count) + struct.pack("<Q", count + 1)
    return b"".join([header, lengths.astype(np.int32).tobytes(), pointers.tobytes(),
                     np.arange(count + 1, dtype=np.int64).tobytes()])


class _GrowableInt32:
    """Document lengths, appended batch by batch: 4 bytes per document, amortised O(1) append."""

    def __init__(self) -> None:
        self._data = np.empty(1 << 16, dtype=np.int32)
        self._size = 0

    def extend(self, values: np.ndarray) -> None:
        needed = self._size + len(values)
        if needed > len(self._data):
            grown = np.empty(max(needed, 2 * len(self._data)), dtype=np.int32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size:needed] = values
        self._size = needed

    def view(self) -> np.ndarray:
        return self._data[: self._size]

    def truncate(self, size: int) -> None:
        self._size = min(self._size, size)


class IndexedDatasetWriter:
    """Streams documents into `<prefix>.bin.partial`; `finish()` writes the index and renames.

    with IndexedDatasetWriter(prefix, token_dtype(vocab_size)) as writer:
        writer.add_batch(flat_ids, lengths)   # any number of times
        writer.finish()                       # both final files appear, or neither
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"token dtype must be uint16 or int32, got {self.dtype}")
        self.bin_path, self.idx_path = dataset_paths(prefix)
        self._lengths = _GrowableInt32()
        self._tokens = 0
        self._bin = None
        self._finished = False

    def __enter__(self) -> "IndexedDatasetWriter":
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        # "wb" truncates a stale .partial left by a killed run: a rerun always starts clean.
        self._bin = open(partial_path(self.bin_path), "wb")
        return self

    @property
    def documents(self) -> int:
        return len(self._lengths.view())

    @property
    def tokens(self) -> int:
        return self._tokens

    def add_batch(self, flat_ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat id array and the length of each document."""
        if self._bin is None or self._finished:
            raise RuntimeError("add_batch() outside an open, unfinished writer")
        flat_ids = np.asarray(flat_ids)
        if int(np.sum(lengths)) != len(flat_ids):
            raise ValueError(f"lengths sum to {int(np.sum(lengths))} but {len(flat_ids)} ids were given")
        if len(flat_ids) and flat_ids.dtype != self.dtype:
            low = 0 if flat_ids.dtype.kind == "u" else flat_ids.min()  # unsigned (gigatoken's uint32): no pass
            if low < 0 or flat_ids.max() > np.iinfo(self.dtype).max:
                raise ValueError(f"token ids out of range for {self.dtype}: {flat_ids.min()}..{flat_ids.max()}")
        self._bin.write(memoryview(np.ascontiguousarray(flat_ids, dtype=self.dtype)))
        self._lengths.extend(lengths)
        self._tokens += len(flat_ids)

    def checkpoint(self) -> tuple[int, int]:
        """(documents, tokens) written so far: a point `rollback` can return to."""
        return self.documents, self._tokens

    def rollback(self, point: tuple[int, int]) -> None:
        """Forget every document added after `checkpoint()` returned `point` (a dropped input file)."""
        if self._bin is None or self._finished:
            raise RuntimeError("rollback() outside an open, unfinished writer")
        documents, tokens = point
        self._bin.flush()
        self._bin.truncate(tokens * self.dtype.itemsize)
        self._bin.seek(tokens * self.dtype.itemsize)
        self._lengths.truncate(documents)
        self._tokens = tokens

    def finish(self) -> None:
        """Write the index, flush both files to disk, then rename .bin and .idx into place."""
        assert self._bin is not None
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        idx_partial = partial_path(self.idx_path)
        with open(idx_partial, "wb") as f:
            f.write(encode_index(self._lengths.view(), self.dtype))
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial_path(self.bin_path), self.bin_path)
        os.replace(idx_partial, self.idx_path)
        self._finished = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bin is not None and not self._bin.closed:
            self._bin.close()
        if not self._finished:
            for path in (partial_path(self.bin_path), partial_path(self.idx_path)):
                path.unlink(missing_ok=True)
