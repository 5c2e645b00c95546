"""One behaviour, two stores: every test here runs against `memory` and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer, eventually, running_redis
from support import contention

from gateway.config import JobsSettings
from gateway.jobs import JobRequest, JobsBusy, JobsClosed, JobStore, JobView, Outcome, Timing
from gateway.jobs.model import CANCELED, SHUTDOWN, SHUTDOWN_QUEUED
from gateway.jobs.store import open_store, redis_available

if redis_available():  # imported at start-up, as the app does: never on the event loop
    import gateway.jobs.redis_store  # noqa: F401

TIMING = Timing(heartbeat=0.2, grace=0.6, poll=0.05)


class Work:
    """The job executor the stores are given: `/sleep?0.5` sleeps, `/fail` answers 502."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.cancelled = 0
        self.done: list[str] = []

    async def __call__(self, job: JobRequest) -> Outcome:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(float(job.query or 0))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        self.done.append(job.path)
        if job.path == "/fail":
            return Outcome(502, {"data": None, "error": "upstream 'x' answered 500"})
        return Outcome(200, {"data": {"path": job.path}, "meta": {}})


def request(path: str = "/ok", sleep: float = 0.0) -> JobRequest:
    return JobRequest("GET", path, str(sleep) if sleep else "", (("x-a", "1"),), b"", "rid-1",
                      deadline=10.0)


StoreFactory = Callable[..., Awaitable[JobStore]]


class Backend:
    """Makes stores of one kind; `store(peer=True)` is another process's view of the same jobs."""

    def __init__(self, kind: str, redis: RedisServer | None) -> None:
        self.kind = kind
        self.redis = redis
        self.stores: list[JobStore] = []
        self.closed: set[int] = set()

    async def store(self, work: Work | None = None, *, peer: bool = False,
                    **settings: Any) -> JobStore:
        if peer and self.kind == "memory":
            return self.stores[0]  # memory has no other processes: the same store
        base = JobsSettings(store=self.redis.url if self.redis else "memory",
                            max_running=2, max_queued=2, ttl=30.0)
        store = open_store(replace(base, **settings), TIMING)
        await store.start(work)
        self.stores.append(store)
        return store

    async def close_all(self) -> None:
        for store in reversed(self.stores):
            await self.close(store)

    async def close(self, store: JobStore) -> None:
        if id(store) not in self.closed:
            self.closed.add(id(store))
            await store.close()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        b = Backend("memory", None)
        yield b
        await b.close_all()
    else:
        async with running_redis(tmp_path) as redis:
            b = Backend("redis", redis)
            yield b
            await b.close_all()


async def wait_for(store: JobStore, job_id: str, *states: str,
                   within: float = 5.0) -> JobView:
    give_up = time.monotonic() + within
    while True:
        view = await store.get(job_id)
        assert view is not None, f"job {job_id} vanished"
        if view.state in states:
            return view
        if time.monotonic() > give_up:
            raise AssertionError(f"job stayed {view.state}, wanted {states}")
        await asyncio.sleep(0.02)


async def test_job_runs_and_keeps_its_result(backend: Backend) -> None:
    store = await backend.store(Work())
    accepted = await store.submit(request("/ok"))
    assert accepted.state == "queued"
    view = await wait_for(store, accepted.id, "succeeded")
    assert view.http_status == 200
    assert view.result == {"data": {"path": "/ok"}, "meta": {}}
    assert view.error is None
    assert view.started_at is not None
    assert view.finished_at is not None
    assert view.created_at <= view.started_at <= view.finished_at
    body = view.to_json()
    assert body["status"] == "succeeded"
    assert body["finished_at"].endswith("Z")


async def test_failed_aggregate_is_a_failed_job_with_its_response(backend: Backend) -> None:
    store = await backend.store(Work())
    view = await wait_for(store, (await store.submit(request("/fail"))).id, "failed")
    assert view.http_status == 502
    assert view.result is not None
    assert view.result["error"] == "upstream 'x' answered 500"
    assert view.error == "upstream 'x' answered 500"


async def test_ids_are_long_random_and_distinct(backend: Backend) -> None:
    store = await backend.store(max_queued=20)
    ids = {(await store.submit(request())).id for _ in range(10)}
    assert len(ids) == 10
    assert all(len(i) >= 24 for i in ids)  # 144 bits, URL-safe base64


async def test_limits_running_and_waiting(backend: Backend) -> None:
    work = Work()
    store = await backend.store(work, max_running=1, max_queued=1)
    first = await store.submit(request("/a", sleep=0.6))
    second = await store.submit(request("/b", sleep=0.01))
    with pytest.raises(JobsBusy):
        await store.submit(request("/c"))
    await wait_for(store, first.id, "running")
    assert (await store.get(second.id)).state == "queued"  # type: ignore[union-attr]
    await wait_for(store, second.id, "succeeded")
    assert work.peak == 1
    assert work.done == ["/a", "/b"]
    assert (await store.get(first.id)).state == "succeeded"  # type: ignore[union-attr]


async def test_a_full_store_queues_nothing(backend: Backend) -> None:
    store = await backend.store(max_running=1, max_queued=1)  # no executor: nothing drains
    await store.submit(request())
    await store.submit(request())
    for _ in range(3):
        with pytest.raises(JobsBusy):
            await store.submit(request())
    assert (await store.counts_by_state())["queued"] == 2


async def test_admission_is_atomic_across_stores(backend: Backend) -> None:
    one = await backend.store(max_running=1, max_queued=2)
    other = await backend.store(peer=True, max_running=1, max_queued=2)

    async def try_submit(store: JobStore) -> bool:
        try:
            await store.submit(request())
        except JobsBusy:
            return False
        return True

    results = await asyncio.gather(*(try_submit(s) for s in [one, other] * 10))
    assert sum(results) == 3


async def test_cancel_queued_job(backend: Backend) -> None:
    store = await backend.store()  # nothing runs: the job stays queued
    job = await store.submit(request())
    view = await store.cancel(job.id)
    assert view is not None
    assert view.state == "canceled"
    assert view.error == CANCELED
    assert view.http_status is None
    assert view.result is None
    peer = await backend.store(peer=True)
    assert (await peer.get(job.id)).state == "canceled"  # type: ignore[union-attr]
    assert (await store.cancel(job.id)).state == "canceled"  # type: ignore[union-attr]
    assert (await store.counts_by_state())["queued"] == 0


async def test_cancel_running_job_stops_its_work(backend: Backend) -> None:
    work = Work()
    store = await backend.store(work)
    job = await store.submit(request("/slow", sleep=30))
    await wait_for(store, job.id, "running")
    await eventually(lambda: work.running > 0)
    peer = await backend.store(peer=True)  # cancel from "another process"
    view = await peer.cancel(job.id)
    assert view is not None
    assert view.state == "canceled"
    assert (await store.get(job.id)).state == "canceled"  # type: ignore[union-attr]
    await eventually(lambda: work.cancelled > 0, within=4)
    assert work.cancelled == 1
    assert work.running == 0
    await asyncio.sleep(0.2)
    assert (await store.get(job.id)).state == "canceled"  # type: ignore[union-attr]
    assert (await store.counts_by_state())["running"] == 0


async def test_cancel_finished_job_changes_nothing(backend: Backend) -> None:
    store = await backend.store(Work())
    job = await store.submit(request())
    await wait_for(store, job.id, "succeeded")
    view = await store.cancel(job.id)
    assert view is not None
    assert view.state == "succeeded"
    assert view.http_status == 200


async def test_unknown_ids(backend: Backend) -> None:
    store = await backend.store()
    assert await store.get("x" * 24) is None
    assert await store.cancel("x" * 24) is None


async def test_finished_jobs_expire_after_ttl(backend: Backend) -> None:
    store = await backend.store(Work(), ttl=1.0)
    job = await store.submit(request())
    await wait_for(store, job.id, "succeeded")
    assert (await store.counts_by_state())["succeeded"] == 1
    await asyncio.sleep(1.2)
    assert await store.get(job.id) is None
    assert (await store.counts_by_state())["succeeded"] == 0


async def test_counts_by_state(backend: Backend) -> None:
    store = await backend.store(Work(), max_running=1, max_queued=3)
    slow = await store.submit(request("/slow", sleep=30))
    waiting = await store.submit(request())
    await wait_for(store, slow.id, "running")
    counts = await store.counts_by_state()
    assert counts == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "canceled": 0}
    await store.cancel(waiting.id)
    await store.cancel(slow.id)
    give_up = time.monotonic() + 4  # a running job counts as running until its worker stopped it
    while (counts := await store.counts_by_state())["canceled"] < 2:
        assert time.monotonic() < give_up, counts
        await asyncio.sleep(0.05)
    assert counts["queued"] == 0
    assert counts["running"] == 0


async def test_close_lets_running_jobs_finish_within_grace(backend: Backend) -> None:
    work = Work()
    store = await backend.store(work, max_running=2, max_queued=1)
    quick = await store.submit(request("/quick", sleep=0.3))
    slow = await store.submit(request("/slow", sleep=30))
    await wait_for(store, quick.id, "running")
    await wait_for(store, slow.id, "running")
    started, contended = time.monotonic(), contention()
    await backend.close(store)
    # Less the time this thread waited for a CPU: the machine's load, not the store's.
    assert time.monotonic() - started - (contention() - contended) < TIMING.grace + 2.5
    with pytest.raises(JobsClosed):
        await store.submit(request())
    reader = await backend.store(peer=True) if backend.kind == "redis" else store
    assert (await reader.get(quick.id)).state == "succeeded"  # type: ignore[union-attr]
    failed = await reader.get(slow.id)
    assert failed is not None
    assert failed.state == "failed"
    assert failed.error == SHUTDOWN
    assert work.cancelled == 1


async def test_memory_close_fails_queued_jobs(backend: Backend) -> None:
    if backend.kind != "memory":
        pytest.skip("a Redis store leaves queued jobs to the other processes")
    store = await backend.store(Work(), max_running=1, max_queued=1)
    await store.submit(request(sleep=0.05))
    queued = await store.submit(request())
    await backend.close(store)
    view = await store.get(queued.id)
    assert view is not None
    assert view.state == "failed"
    assert view.error == SHUTDOWN_QUEUED
