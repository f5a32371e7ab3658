"""MicroBatcher: gathering, ordering, limits, failure isolation and cancellation.

The batcher batches any ``predict(list) -> list`` callable; these tests give it a plain
function that records the batches it sees (the real model is exercised in test_api.py).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from productvlm.serving.batcher import MicroBatcher, QueueFullError


class Recorder:
    """A predict function that doubles its inputs, remembers each batch and can be slow."""

    def __init__(self, delay_s: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.fail_on = fail_on

    def __call__(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in xs:
            raise RuntimeError(f"cannot predict {self.fail_on}")
        time.sleep(self.delay_s)
        return [x * 2 for x in xs]


async def _with(batcher: MicroBatcher, coro_fn):
    await batcher.start()
    try:
        return await coro_fn()
    finally:
        await batcher.stop()


def test_concurrent_requests_share_one_batch_and_keep_their_order():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=16, max_wait_ms=50)

    async def go():
        return await asyncio.gather(*(b.submit([i, 100 + i]) for i in range(5)))

    out = asyncio.run(_with(b, go))
    assert out == [[2 * i, 2 * (100 + i)] for i in range(5)]
    assert len(rec.batches) == 1 and sorted(rec.batches[0]) == sorted(
        [i for j in range(5) for i in (j, 100 + j)]
    )
    assert all(name.startswith("predict") for name in rec.threads)
    assert b.stats.batches == 1 and b.stats.largest_batch == 10


def test_batches_never_exceed_max_batch():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=3, max_wait_ms=20)

    async def go():
        return await asyncio.gather(*(b.submit([i]) for i in range(10)))

    out = asyncio.run(_with(b, go))
    assert out == [[2 * i] for i in range(10)]
    assert [len(x) for x in rec.batches] == [3, 3, 3, 1]


def test_max_batch_one_is_batching_off():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=1, max_wait_ms=50)

    async def go():
        return await asyncio.gather(*(b.submit([i]) for i in range(4)))

    t0 = time.perf_counter()
    asyncio.run(_with(b, go))
    assert rec.batches == [[0], [1], [2], [3]]
    assert time.perf_counter() - t0 < 1.0  # a full batch of one never waits max_wait


def test_full_queue_is_rejected_at_once():
    rec = Recorder(delay_s=0.3)
    b = MicroBatcher(rec, max_batch=1, max_wait_ms=0, max_queue=2)

    async def go():
        first = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.05)  # the worker has taken item 1; two may wait
        waiting = asyncio.create_task(b.submit([2, 3]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="max_queue=2"):
            await b.submit([4])
        return await first, await waiting

    assert asyncio.run(_with(b, go)) == ([2], [4, 6])
    assert b.stats.rejected == 1


def test_a_failing_batch_fails_only_its_callers_and_the_worker_survives():
    rec = Recorder(fail_on=13)
    b = MicroBatcher(rec, max_batch=1, max_wait_ms=0)

    async def go():
        with pytest.raises(RuntimeError, match="cannot predict 13"):
            await b.submit([13])
        return await b.submit([1])

    assert asyncio.run(_with(b, go)) == [2]


def test_results_of_the_wrong_length_are_an_error_not_a_misalignment():
    b = MicroBatcher(lambda xs: xs[:-1], max_batch=4, max_wait_ms=0)

    async def go():
        with pytest.raises(RuntimeError, match="1 results for 2 images"):
            await b.submit([1, 2])

    asyncio.run(_with(b, go))


def test_a_cancelled_caller_leaves_its_images_unpredicted():
    rec = Recorder(delay_s=0.2)
    b = MicroBatcher(rec, max_batch=1, max_wait_ms=0)

    async def go():
        busy = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.submit([2]), 0.05)  # times out while 1 is running
        assert await busy == [2]
        assert await b.submit([3]) == [6]

    asyncio.run(_with(b, go))
    assert [2] not in rec.batches


def test_event_loop_stays_responsive_while_predicting():
    rec = Recorder(delay_s=0.4)
    b = MicroBatcher(rec, max_batch=4, max_wait_ms=0)

    async def go():
        task = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)  # would block ~0.35 s if predict ran on the loop
        lag = time.perf_counter() - t0
        await task
        return lag

    assert asyncio.run(_with(b, go)) < 0.2


def test_submit_before_start_and_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda xs: xs, max_batch=0)
    b = MicroBatcher(lambda xs: xs)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(b.submit([1]))


def test_a_batcher_started_on_a_finished_loop_restarts_on_the_next():
    b = MicroBatcher(lambda xs: [x + 1 for x in xs], max_batch=2, max_wait_ms=0)

    async def once(x):
        await b.start()  # lazily, as a request handler does; no stop()
        return await b.submit([x])

    assert asyncio.run(once(1)) == [2]
    assert asyncio.run(once(2)) == [3]  # a fresh loop: the old worker is gone
