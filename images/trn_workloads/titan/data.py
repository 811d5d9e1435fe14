"""Training samples from the data-prep output (images/trn_workloads/dataprep): the Megatron
indexed dataset `<prefix>.bin/.idx` on FSx, read through megatron-core's IndexedDataset.

The documents (each ending in EOD, as data prep writes them) are one token stream cut into
samples of seq_len + 1 tokens (inputs and shifted labels). The sample order is a seeded
permutation per epoch and each step's samples are a pure function of (step, data-parallel
rank), so a resumed run reads exactly what the uninterrupted run would have read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from trn_workloads.dataprep.indexed import dataset_paths
from trn_workloads.dataprep.pipeline import manifest_path


@dataclass(frozen=True)
class TokenSamples:
    tokens: np.ndarray  # the whole stream, memory-mapped
    seq_len: int
    seed: int
    _orders: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(cls, dataset_prefix: str, *, seq_len: int, seed: int, vocab_size: int) -> "TokenSamples":
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        bin_path, idx_path = dataset_paths(dataset_prefix)
        for path in (bin_path, idx_path):
            if not path.exists():
                raise FileNotFoundError(f"dataset_prefix: {path} does not exist; run the data preparation first "
                                        "(python -m trn_workloads.dataprep)")
        index = IndexedDataset(dataset_prefix)
        total = int(np.sum(index.sequence_lengths, dtype=np.int64))
        tokens = np.memmap(bin_path, dtype=index.index.dtype, mode="r", shape=(total,))
        samples = cls(tokens=tokens, seq_len=seq_len, seed=seed)
        if samples.num_samples < 1:
            raise ValueError(f"dataset_prefix: {dataset_prefix} holds {total} tokens, fewer than one sample of "
                             f"seq_len + 1 = {seq_len + 1}")
        # Data prep records its tokenizer's vocabulary in the manifest: no scan of the whole stream.
        manifest = manifest_path(dataset_prefix)
        if manifest.exists():
            tokenizer_vocab = int(json.loads(manifest.read_text())["vocab_size"])
            if tokenizer_vocab > vocab_size:
                raise ValueError(f"dataset_prefix: {dataset_prefix} was tokenized with a vocabulary of "
                                 f"{tokenizer_vocab}, larger than the model's {vocab_size}; tokenize with the "
                                 "model's tokenizer")
        return samples

    @property
    def num_samples(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:  # one permutation per epoch, computed once
            self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return self._orders[epoch]

    def batch(self, step: int, *, dp_rank: int, dp_size: int, batch_size: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int64 tokens of this data-parallel rank at `step`."""
        first = (step * dp_size + dp_rank) * batch_size
        rows = []
        for g in range(first, first + batch_size):
            epoch, position = divmod(g, self.num_samples)
            start = int(self._order(epoch)[position]) * self.seq_len
            rows.append(np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64))
        return np.stack(rows)
