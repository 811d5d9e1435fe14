"""Which blocks each data-parallel rank reads at each step: a pure function of the step.

Every epoch is a permutation of all blocks drawn from (seed, epoch). Step `s` takes the
`global_batch_size` consecutive entries of its epoch's permutation; the blocks left at the
end of an epoch that do not fill a whole global batch are skipped (the same ones every time
for a given seed), so every step has the same number of samples of the same shape.

Because the order depends on nothing but (seed, step), the data position of a run is just
its step: a resumed run reads exactly what the uninterrupted run would have read.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    n_blocks: int
    global_batch_size: int
    micro_batch_size: int
    data_parallel_size: int
    seed: int

    def __post_init__(self) -> None:
        per_micro_step = self.micro_batch_size * self.data_parallel_size
        if self.global_batch_size % per_micro_step:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"micro_batch_size x data_parallel_size = {per_micro_step}")
        if self.n_blocks < self.global_batch_size:
            raise ValueError(f"the data has {self.n_blocks} blocks, fewer than global_batch_size "
                             f"{self.global_batch_size}: prepare more data or lower global_batch_size")

    @property
    def steps_per_epoch(self) -> int:
        return self.n_blocks // self.global_batch_size

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch(self, step: int) -> np.ndarray:
        """Block indices of the whole global batch at `step` (all ranks, all micro-batches)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start = (step % self.steps_per_epoch) * self.global_batch_size
        return _permutation(self.n_blocks, self.seed, self.epoch_of(step))[start:start + self.global_batch_size]

    def micro_batches(self, step: int, dp_rank: int) -> list[np.ndarray]:
        """This rank's micro-batches at `step`, in accumulation order; ranks never share a block."""
        if not 0 <= dp_rank < self.data_parallel_size:
            raise ValueError(f"dp_rank must be in [0, {self.data_parallel_size}), got {dp_rank}")
        # Row m of the reshaped batch is micro-step m; rank r takes its slice of every row.
        rows = self.global_batch(step).reshape(self.accumulation_steps, self.data_parallel_size,
                                               self.micro_batch_size)
        return [rows[m, dp_rank] for m in range(self.accumulation_steps)]


@functools.lru_cache(maxsize=2)  # the current epoch (and the previous one at a boundary)
def _permutation(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n_blocks)
    perm.flags.writeable = False
    return perm
