"""Micro-batching: concurrent requests' images gathered for a few milliseconds into one call.

Generation cost on a GPU (and, to a lesser degree, on a CPU) grows far slower than the batch:
sixteen photos in one ``predict`` call take a fraction of sixteen calls. A server answering
one request at a time wastes that, so requests put their images on a queue and a single
worker coroutine drains it: it waits for the first image, then keeps collecting until it has
``max_batch`` images or ``max_wait_ms`` has passed, and runs ``predict`` on all of them in a
worker thread (so the event loop keeps answering /healthz and accepting uploads meanwhile).

``max_batch=1`` turns batching off: every image is its own call, in arrival order, which is
the baseline the benchmark compares against.

    batcher = MicroBatcher(predictor.predict, max_batch=16, max_wait_ms=10, max_queue=64)
    await batcher.start()
    predictions = await batcher.submit([image1, image2])   # inside a request handler
    await batcher.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(RuntimeError):
    """More images are waiting than ``max_queue`` allows; the caller should answer 503."""


@dataclass
class _Item:
    image: Any
    future: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    """Counters for /v1/model and the benchmark: how full the batches actually were."""

    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    rejected: int = 0

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class MicroBatcher:
    """Gathers images from concurrent callers into batched calls of ``predict_fn``.

    ``predict_fn(images) -> results`` must return one result per image, in order; it runs
    in a single dedicated thread, so a model is never used by two batches at once.

    >>> b = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=4, max_wait_ms=5)
    >>> async def demo():
    ...     await b.start()
    ...     out = await asyncio.gather(b.submit([1]), b.submit([2, 3]))
    ...     await b.stop()
    ...     return out
    >>> asyncio.run(demo())
    [[2], [4, 6]]
    """

    def __init__(
        self,
        predict_fn: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.predict_fn = predict_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._waiting: deque[_Item] = deque()
        self._arrived = asyncio.Event()  # something was queued
        self._full = asyncio.Event()  # a whole batch is waiting: stop waiting for more
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Images waiting for a batch (not counting the batch being generated)."""
        return len(self._waiting)

    async def start(self) -> None:
        """Start the worker on the running event loop (e.g. in the app lifespan); idempotent.

        A worker left on another, finished event loop (test clients that run each request
        on a fresh loop) is replaced, so a lazily started batcher never hangs.
        """
        loop = asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done():
            if self._worker.get_loop() is loop:
                return
            if self._worker.get_loop().is_running():
                raise RuntimeError("MicroBatcher is already running on another event loop")
        self._waiting.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._arrived, self._full = asyncio.Event(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; callers still waiting get a RuntimeError."""
        if self._worker is None:
            return
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._executor = None

    async def submit(self, images: Sequence[Any]) -> list[Any]:
        """Queue ``images`` and wait for their results (in order).

        Raises QueueFullError at once when they would push the queue past ``max_queue``;
        the exception ``predict_fn`` raised for their batch otherwise. A caller that is
        cancelled (e.g. a request timeout) leaves its images behind: they are skipped.
        """
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(self._waiting) + len(images) > self.max_queue:
            # items whose caller gave up (timeout) still sit here: drop them first
            self._waiting = deque(i for i in self._waiting if not i.future.done())
        if len(self._waiting) + len(images) > self.max_queue:
            self.stats.rejected += 1
            raise QueueFullError(
                f"{len(self._waiting)} images are already waiting (max_queue={self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        self._waiting.extend(items)
        self._arrived.set()
        if len(self._waiting) >= self.max_batch:
            self._full.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:  # e.g. cancelled by a timeout: drop what has not run yet
                item.future.cancel()
            raise

    async def _collect(self) -> list[_Item]:
        # Events rather than Queue.get with a timeout: a timed-out get can lose an item.
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        if len(self._waiting) < self.max_batch and self.max_wait_s > 0:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.max_wait_s)
        n = min(self.max_batch, len(self._waiting))
        batch = [self._waiting.popleft() for _ in range(n)]
        return [item for item in batch if not item.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            images = [item.image for item in batch]
            try:
                results = await loop.run_in_executor(self._executor, self.predict_fn, images)
                if len(results) != len(images):
                    raise RuntimeError(
                        f"predict returned {len(results)} results for {len(images)} images"
                    )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one bad batch must not stop the server
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
