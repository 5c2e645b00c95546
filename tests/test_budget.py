"""The process-wide memory budget: leases that share one limit and give everything back."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from gateway.body import CappedBody
from gateway.budget import MemoryBudget, _BudgetExhausted
from gateway.layers.budget import BodyLayer
from gateway.pipeline import Call, Reply
from gateway.reader import THREAD_PARSE_BYTES, BodyReader


def test_leases_share_one_limit() -> None:
    budget = MemoryBudget(1000)
    one, two = budget.lease(), budget.lease()
    one.take(600)
    two.take(400)
    assert budget.held == 1000
    with pytest.raises(_BudgetExhausted):
        two.take(1)


def test_a_refused_take_changes_nothing_and_is_heard() -> None:
    refused: list[int] = []
    budget = MemoryBudget(100, on_exhausted=lambda: refused.append(1))
    lease = budget.lease()
    lease.take(60)
    with pytest.raises(_BudgetExhausted):
        lease.take(41)
    assert (lease.size, budget.held, refused) == (60, 60, [1])


def test_release_gives_back_the_whole_lease_once() -> None:
    budget = MemoryBudget(100)
    lease, other = budget.lease(), budget.lease()
    lease.take(30)
    lease.take(30)
    other.take(10)
    lease.release()
    lease.release()
    assert (lease.size, budget.held) == (0, 10)
    budget.lease().take(90)  # the room is really free again


def test_a_lower_limit_refuses_new_bytes_but_keeps_what_is_held() -> None:
    budget = MemoryBudget(100)
    lease = budget.lease()
    lease.take(80)
    budget.limit = 50  # a reload
    with pytest.raises(_BudgetExhausted):
        budget.lease().take(1)
    lease.release()
    assert budget.held == 0


def test_draining_after_a_burst_is_heard_once_per_burst() -> None:
    drained: list[int] = []
    budget = MemoryBudget(1000, on_drained=lambda: drained.append(budget.takes),
                          drained_after=500)
    small = budget.lease()
    small.take(100)
    small.release()
    assert drained == []  # never held enough to matter
    one, two = budget.lease(), budget.lease()
    one.take(300)
    two.take(300)
    one.release()
    assert drained == []  # not empty yet
    two.release()
    two.release()
    assert drained == [3]
    budget.lease().take(10)
    assert budget.takes == 4


async def test_a_call_cancelled_during_a_thread_parse_keeps_its_bytes_until_the_thread_is_done(
) -> None:
    """The worker still holds the body: the budget must count it until the parse ends."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)  # one worker, held busy: the parse waits
    loop.set_default_executor(pool)
    gate = threading.Event()
    blocker = loop.run_in_executor(None, gate.wait, 10.0)
    drained = asyncio.Event()
    budget = MemoryBudget(50_000_000, on_drained=drained.set, drained_after=1)
    reader = BodyReader("u", 50_000_000, 5.0)
    raw = orjson.dumps(list(range(100_000)))
    assert len(raw) > THREAD_PARSE_BYTES

    async def wire(call: Call) -> Reply:
        assert call.lease is not None
        body = call.received = CappedBody("", 50_000_000, call.lease)
        body.feed(raw)
        body.finish()
        return Reply(200, None)

    layer = BodyLayer(budget, reader)
    task = asyncio.create_task(layer(Call("GET", "/", []), wire))
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert budget.held == len(raw)  # read, now parsing (queued behind the blocker)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.held == len(raw)  # the call is gone, the thread not yet
        gate.set()
        await blocker
        async with asyncio.timeout(10):
            await drained.wait()  # the thread's done-callback released the lease
        assert budget.held == 0
    finally:
        gate.set()
        pool.shutdown(wait=False)
