"""The token-block format on FSx: every training sample is one row of `seq_len + 1` token ids.

A data directory holds two files:

    blocks.bin   the blocks, row-major, no header: n_blocks x (seq_len + 1) ids of `dtype`
                 (uint16 when the vocabulary fits, else int32: dataprep's `token_dtype`)
    index.json   {"format": "llama-token-blocks", "version": 1, "seq_len", "block_len",
                  "n_blocks", "dtype", "vocab_size", "eod_id", "tokens", "dropped_tail_tokens",
                  "documents", "fingerprint", "bin_bytes", ...}

Blocks are the concatenation of every document's ids + EOD, in input order, cut into
consecutive non-overlapping windows of `seq_len + 1` tokens; the model reads ids[:-1] and
predicts ids[1:], so every position has a target. The last partial window is dropped
(`dropped_tail_tokens` says how many tokens), which makes every sample the same shape.

`index.json` is written last and only after `blocks.bin` is complete under its final name:
a directory without it (or whose sizes disagree with it) is incomplete and is rebuilt.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from trn_workloads.dataprep.pipeline import write_json_atomically

FORMAT_NAME = "llama-token-blocks"
FORMAT_VERSION = 1
BLOCKS_FILE = "blocks.bin"
INDEX_FILE = "index.json"
PARTIAL_SUFFIX = ".partial"


class BlockFormatError(ValueError):
    """A data directory is missing, incomplete or does not match the run config. Names the file."""


class BlockPacker:
    """Cuts a stream of token-id chunks into full blocks of `block_len`, carrying the remainder over."""

    def __init__(self, block_len: int) -> None:
        if block_len < 2:
            raise ValueError(f"block_len must be >= 2, got {block_len}")
        self.block_len = block_len
        self._carry = np.empty(0, dtype=np.int64)

    def add(self, ids: np.ndarray) -> np.ndarray:
        """The full blocks completed by `ids`, shape [k, block_len] (k may be 0)."""
        stream = np.concatenate([self._carry, np.asarray(ids, dtype=np.int64)])
        full = len(stream) // self.block_len * self.block_len
        self._carry = stream[full:].copy()
        return stream[:full].reshape(-1, self.block_len)

    @property
    def leftover(self) -> int:
        """Tokens waiting for the next block: dropped if the stream ends here."""
        return len(self._carry)


def block_paths(data_dir: str | os.PathLike) -> tuple[Path, Path]:
    root = Path(data_dir)
    return root / BLOCKS_FILE, root / INDEX_FILE


class BlockWriter:
    """Appends blocks to `blocks.bin.partial`; `finish(index)` renames it into place, then writes index.json.

    Until `finish`, a previous complete output in the directory is untouched. An exception
    inside the `with` block removes the partial file.
    """

    def __init__(self, data_dir: str | os.PathLike, block_len: int, dtype: np.dtype) -> None:
        self.bin_path, self.index_path = block_paths(data_dir)
        self.partial = self.bin_path.with_name(self.bin_path.name + PARTIAL_SUFFIX)
        self.block_len = block_len
        self.dtype = np.dtype(dtype)
        self.n_blocks = 0
        self._file = None

    def __enter__(self) -> "BlockWriter":
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")
        return self

    def add(self, blocks: np.ndarray) -> None:
        if blocks.ndim != 2 or blocks.shape[1] != self.block_len:
            raise ValueError(f"blocks must have shape [k, {self.block_len}], got {list(blocks.shape)}")
        if len(blocks) and int(blocks.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {int(blocks.max())} does not fit {self.dtype.name}")
        self._file.write(np.ascontiguousarray(blocks, dtype=self.dtype).tobytes())
        self.n_blocks += len(blocks)

    def finish(self, index: dict[str, Any]) -> None:
        """Make the output final: blocks.bin under its name first, index.json (the 'done' mark) last."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.index_path.unlink(missing_ok=True)  # a crash between the two renames reads as incomplete
        os.replace(self.partial, self.bin_path)
        write_json_atomically(self.index_path, {**index, "format": FORMAT_NAME, "version": FORMAT_VERSION,
                                                "block_len": self.block_len, "n_blocks": self.n_blocks,
                                                "dtype": self.dtype.name, "bin_bytes": self.bin_path.stat().st_size})

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if exc_type is not None:
            self.partial.unlink(missing_ok=True)


def read_index(data_dir: str | os.PathLike) -> dict[str, Any]:
    """index.json of a complete data directory; BlockFormatError naming the file otherwise."""
    bin_path, index_path = block_paths(data_dir)
    if not index_path.is_file():
        raise BlockFormatError(f"{index_path}: not found; run the data step "
                               f"(python -m trn_workloads.ray_train.data) for this data_dir first")
    try:
        index = json.loads(index_path.read_text())
    except ValueError as err:
        raise BlockFormatError(f"{index_path}: not valid JSON ({err})") from None
    if index.get("format") != FORMAT_NAME or index.get("version") != FORMAT_VERSION:
        raise BlockFormatError(f"{index_path}: format {index.get('format')!r} version {index.get('version')!r}, "
                               f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}")
    expected = index["n_blocks"] * index["block_len"] * np.dtype(index["dtype"]).itemsize
    actual = bin_path.stat().st_size if bin_path.is_file() else None
    if actual != expected or actual != index["bin_bytes"]:
        raise BlockFormatError(f"{bin_path}: {actual} bytes, index.json says {index['n_blocks']} blocks x "
                               f"{index['block_len']} x {index['dtype']} = {expected}; rerun the data step")
    return index


def open_blocks(data_dir: str | os.PathLike, *, seq_len: int) -> tuple[np.memmap, dict[str, Any]]:
    """Memory-map the blocks read-only, checking they were made for `seq_len`."""
    index = read_index(data_dir)
    if index["seq_len"] != seq_len:
        raise BlockFormatError(f"{block_paths(data_dir)[1]}: blocks were made for seq_len {index['seq_len']}, "
                               f"the run config has seq_len {seq_len}; rerun the data step with this config")
    blocks = np.memmap(block_paths(data_dir)[0], dtype=np.dtype(index["dtype"]), mode="r",
                       shape=(index["n_blocks"], index["block_len"]))
    return blocks, index

