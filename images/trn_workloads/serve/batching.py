"""Dynamic batching: concurrent requests share one model call.

One worker task takes the first waiting request, then gathers more until the batch holds
`max_batch_size` rows or `max_wait_ms` has passed since that first request, runs the model
once in a worker thread (so the event loop keeps accepting requests meanwhile), and hands
each request its own rows of the result.

At most `max_queued` requests wait for a model call (the batch being run is not counted);
`submit` refuses one more with `QueueFull` at once instead of letting latency grow.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

RunBatch = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclasses.dataclass
class _Pending:
    inputs: list[np.ndarray]
    future: asyncio.Future

    @property
    def rows(self) -> int:
        return self.inputs[0].shape[0]


class QueueFull(Exception):
    """The batcher already holds max_queued waiting requests."""


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_wait_ms: float, max_queued: int = 64):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self._max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queued)
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0
        self.rejected = 0  # refused with QueueFull

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("server is shutting down"))

    async def submit(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Queue rows (at most max_batch_size) and wait for their outputs; QueueFull if max_queued wait already."""
        if inputs[0].shape[0] > self.max_batch_size:
            raise ValueError(f"{inputs[0].shape[0]} rows exceed max_batch_size {self.max_batch_size}")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(inputs, future))
        except asyncio.QueueFull:
            self.rejected += 1
            raise QueueFull(f"{self.max_queued} requests are already waiting for the model") from None
        return await future

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        held: _Pending | None = None  # a request that did not fit the previous batch
        while True:
            first = held or await self._queue.get()
            held = None
            batch, rows = [first], first.rows
            deadline = loop.time() + self._max_wait_s
            while rows < self.max_batch_size:
                try:
                    following = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        following = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if rows + following.rows > self.max_batch_size:
                    held = following
                    break
                batch.append(following)
                rows += following.rows
            await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # clients that gave up are skipped
        if not live:
            return
        inputs = [np.concatenate(parts) for parts in zip(*(p.inputs for p in live))]
        try:
            outputs = await asyncio.to_thread(self._run_batch, inputs)
        except Exception as err:  # one failing batch must not stop the worker
            log.exception("model call failed for a batch of %d requests", len(live))
            for p in live:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        self.batches += 1
        self.requests += len(live)
        offset = 0
        for p in live:
            if not p.future.done():
                p.future.set_result([o[offset:offset + p.rows] for o in outputs])
            offset += p.rows
