"""What `GatewayQueue` adds to SAQ: the races it closes, the running limit, lost-job sweeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis_support import RedisServer, running_redis
from saq.job import Job, Status

from gateway.config import JobsSettings
from gateway.jobs import JobRequest, JobStore, Timing, open_store
from gateway.jobs._saq import FUNCTION, GatewayQueue
from gateway.jobs.model import CANCELED, LOST, new_job_id

TIMING = Timing(heartbeat=0.2, grace=0.5, poll=0.05)


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
async def queue(redis: RedisServer) -> AsyncIterator[GatewayQueue]:
    q = GatewayQueue(Redis.from_url(redis.url), max_running=1, capacity=5, ttl=30,
                     timing=TIMING)
    await q.connect()
    yield q
    await q.disconnect()


@pytest.fixture
async def reader(redis: RedisServer) -> AsyncIterator[JobStore]:
    """A store that runs nothing: how the API process sees the jobs."""
    store = open_store(JobsSettings(store=redis.url), TIMING)
    await store.start(None)
    yield store
    await store.close()


async def enqueue(queue: GatewayQueue) -> Job:
    request = JobRequest("GET", "/x", "", (), b"", "rid", 5.0)
    job = await queue.enqueue(FUNCTION, key=new_job_id(), request=request.to_json(),
                              retries=1, timeout=20, heartbeat=1, ttl=30)
    assert job is not None
    return job


async def start(queue: GatewayQueue) -> Job:
    """Do what a SAQ worker does when it takes a job."""
    job = await asyncio.wait_for(queue.dequeue(), 2)
    assert job is not None
    await job.update(status=Status.ACTIVE)
    return job


async def stored(queue: GatewayQueue, job: Job) -> Job:
    fresh = await queue.job(job.key)
    assert fresh is not None
    return fresh


async def test_a_heartbeat_never_undoes_a_cancel(queue: GatewayQueue,
                                                 reader: JobStore) -> None:
    job = await _started(queue)
    await reader.cancel(job.key)
    assert (await stored(queue, job)).status == Status.ABORTING
    await job.update()  # the running worker's next heartbeat
    assert (await stored(queue, job)).status == Status.ABORTING
    await queue.finish(job, Status.COMPLETE, result={"http_status": 200, "body": {}})
    final = await stored(queue, job)
    assert final.status == Status.ABORTED
    assert final.error == CANCELED
    view = await reader.get(job.key)
    assert view is not None
    assert view.state == "canceled"


async def _started(queue: GatewayQueue) -> Job:
    await enqueue(queue)
    return await start(queue)


async def test_cancel_never_rewrites_a_finished_job(queue: GatewayQueue,
                                                    reader: JobStore) -> None:
    job = await _started(queue)
    await queue.finish(job, Status.COMPLETE, result={"http_status": 200, "body": {"a": 1}})
    view = await reader.cancel(job.key)
    assert view is not None
    assert view.state == "succeeded"
    assert (await stored(queue, job)).status == Status.COMPLETE
    assert 0 < await queue.redis.pttl(job.id) <= 30_000  # still expires


async def test_the_first_verdict_stands(queue: GatewayQueue) -> None:
    job = await _started(queue)
    await queue.finish(job, Status.ABORTED, error=LOST)
    await queue.finish(job, Status.COMPLETE, result={"http_status": 200, "body": {}})
    assert (await stored(queue, job)).error == LOST


async def test_running_limit_holds_across_queues(queue: GatewayQueue, redis: RedisServer) -> None:
    other = GatewayQueue(Redis.from_url(redis.url), max_running=1, capacity=5, ttl=30,
                         timing=TIMING)
    await other.connect()
    try:
        await enqueue(queue)
        waiting = await enqueue(queue)
        first = await start(queue)
        with pytest.raises(TimeoutError):  # one runs already: nobody takes the second
            await asyncio.wait_for(other.dequeue(), 0.5)
        await queue.finish(first, Status.COMPLETE, result={"http_status": 200, "body": {}})
        second = await asyncio.wait_for(other.dequeue(), 2)
        assert second is not None
        assert second.key == waiting.key
    finally:
        await other.disconnect()


async def test_sweep_spares_a_job_being_handed_over(queue: GatewayQueue,
                                                    reader: JobStore) -> None:
    job = await enqueue(queue)
    taken = await asyncio.wait_for(queue.dequeue(), 2)  # not yet marked active
    assert taken is not None
    assert taken.status == Status.QUEUED
    assert await queue.sweep(lock=1) == []
    await queue.redis.delete(queue._handoff + job.id)  # the taker died before starting it
    await queue.redis.delete(queue._sweep)
    assert await queue.sweep(lock=1) == [job.id]
    view = await reader.get(job.key)
    assert view is not None
    assert view.state == "failed"
    assert view.error == LOST


async def test_a_stale_heartbeat_is_lost_at_once_on_read_then_swept(
        queue: GatewayQueue, reader: JobStore) -> None:
    job = await _started(queue)
    assert await queue.sweep(lock=1) == []  # fresh heartbeat
    view = await reader.get(job.key)
    assert view is not None
    assert view.state == "running"
    await asyncio.sleep(TIMING.lost_after + 0.1)  # its process "died": no more heartbeats
    view = await reader.get(job.key)
    assert view is not None
    assert view.state == "failed"
    assert view.error == LOST
    assert (await reader.counts_by_state())["running"] == 1  # still holds its slot...
    await queue.redis.delete(queue._sweep)
    assert await queue.sweep(lock=1) == [job.id]
    counts = await reader.counts_by_state()
    assert counts["running"] == 0
    assert counts["failed"] == 1
