"""`store = "redis://..."`: jobs shared by every worker process and machine of a deployment.

A job is accepted by whichever process got the request and run by whichever
process's SAQ worker takes it first (gateway processes and `gateway worker`
processes alike); any process reads and cancels it. See `_saq.py` for what
SAQ does and what we tighten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import replace
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from saq.job import Job, Status
from saq.types import Context, PartialTimersDict

from ..config import JobsSettings
from ..errors import JobsClosed, JobsUnavailable
from ._saq import FINISHED_STATES, FUNCTION, GatewayQueue, GatewayWorker
from .model import (
    CANCELED,
    CRASHED,
    JOB_SLACK,
    LOST,
    SHUTDOWN,
    SHUTDOWN_QUEUED,
    TIMED_OUT,
    JobRequest,
    JobState,
    JobView,
    Outcome,
    finished_view,
    new_job_id,
    owner_of,
)
from .store import SECONDS, Execute, JobStore, Timing

log = logging.getLogger("gateway.jobs")

SOCKET_TIMEOUT = 5 * SECONDS  # a Redis command that gets no answer fails after this long
# After `grace`, how long stopping SAQ's worker (which records the jobs it cuts off) and
# then saying goodbye to Redis may take together: with Redis unreachable every command
# waits for its socket timeout, and shutdown must not wait on that. A healthy Redis under
# load was seen to need over 5 s (one command waiting out its timeout after a cancel, then
# SAQ's 1 s cancel deadline), so the bound leaves room for one such wait.
STOP_TIMEOUT = SOCKET_TIMEOUT + 2 * SECONDS
CANCEL_WAIT = 1 * SECONDS  # then for what was cancelled again to end

_KNOWN_ERRORS = frozenset({CANCELED, LOST, SHUTDOWN, SHUTDOWN_QUEUED, TIMED_OUT})


class RedisStore(JobStore):
    def __init__(self, settings: JobsSettings, timing: Timing) -> None:
        super().__init__(settings, timing)
        # Fail fast while Redis is down (one immediate retry covers a connection that a
        # Redis restart broke), so job requests get their 503 quickly.
        self._redis: Redis = Redis.from_url(
            settings.store, socket_connect_timeout=2.0, socket_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1), health_check_interval=15)
        self._queue = GatewayQueue(self._redis, max_running=settings.max_running,
                                   capacity=self.capacity, ttl=settings.ttl, timing=timing)
        self._worker: GatewayWorker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._execute: Execute | None = None
        self._closing = False
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, execute: Execute | None) -> None:
        await self._queue.connect()
        if execute is None:
            return
        self._execute = execute
        timers = {"abort": 0.5, "sweep": max(1, round(self.timing.heartbeat)),
                  "schedule": 3600, "worker_info": 10}
        self._worker = GatewayWorker(
            self._queue, [(FUNCTION, self._run)], concurrency=self.settings.max_running,
            timers=cast(PartialTimersDict, timers),
            shutdown_grace_period_s=None,  # `close` waits for running jobs itself
            cancellation_hard_deadline_s=1.0)
        self._worker_task = asyncio.create_task(self._worker.start(), name="gateway-jobs-worker")

    async def submit(self, request: JobRequest) -> JobView:
        if self._closing:
            raise JobsClosed("the gateway is shutting down and accepts no new jobs")
        job_id = new_job_id()
        try:
            job = await self._queue.enqueue(
                FUNCTION, key=job_id, request=request.to_json(), retries=1,
                timeout=math.ceil(request.deadline + JOB_SLACK),
                heartbeat=math.ceil(self.timing.lost_after), ttl=math.ceil(self.settings.ttl))
        except RedisError as exc:
            raise _unavailable(exc) from None
        if job is None:  # 144 random bits collided: astronomically unlikely, still not ours
            raise JobsUnavailable("could not allocate a job id; try again")
        return JobView(job_id, "queued", job.queued / 1000, owner=request.owner)

    async def get(self, job_id: str) -> JobView | None:
        try:
            job, body = await self._queue.job_and_body(job_id)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return None if job is None else self._view(job, body)

    async def cancel(self, job_id: str) -> JobView | None:
        try:
            job = await self._queue.cancel(job_id, CANCELED)
            if job is not None and job.status == Status.COMPLETE:  # finished meanwhile
                job, body = await self._queue.job_and_body(job_id)
                return None if job is None else self._view(job, body)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return None if job is None else self._view(job)

    async def counts(self) -> dict[JobState, int]:
        q = self._queue
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.llen(q._queued)
                pipe.llen(q._active)
                for state in FINISHED_STATES:
                    pipe.zremrangebyscore(q.finished_keys[state], "-inf", time.time())
                    pipe.zcard(q.finished_keys[state])
                replies = await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from None
        counts: dict[JobState, int] = {"queued": replies[0], "running": replies[1]}
        for i, state in enumerate(FINISHED_STATES):
            counts[cast(JobState, state)] = replies[3 + 2 * i]
        return counts

    async def close(self) -> None:
        self._closing = True
        self._queue.closing = True  # idle workers stop taking jobs
        if self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.grace):
                    await self._idle.wait()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + STOP_TIMEOUT
        if self._worker is not None and self._worker_task is not None:
            await self._stop_worker(self._worker, self._worker_task, give_up)
        try:
            async with asyncio.timeout_at(give_up):
                await self._queue.disconnect()
        except (RedisError, TimeoutError) as exc:  # Redis is down: no goodbyes, close sockets
            log.warning("jobs: closing the Redis connection: %s",
                        str(exc) or f"no answer within {STOP_TIMEOUT:g} s")
            await self._redis.aclose()

    async def _stop_worker(self, worker: GatewayWorker, task: asyncio.Task[None],
                           give_up: float) -> None:
        """SAQ cancels what still runs and `GatewayQueue._retry` records it as shut down.

        SAQ waits for its tasks with no limit; at `give_up` (loop time) the ones left (stuck
        on an unreachable Redis) are cancelled again, so its stop completes, and are logged.
        """
        tasks = {*worker.tasks, task}
        stopping = asyncio.create_task(worker.stop(), name="gateway-jobs-worker-stop")
        await asyncio.wait([stopping], timeout=give_up - asyncio.get_running_loop().time())
        if not stopping.done():
            cut_off = sorted(job.key[:8] for job in worker.job_task_contexts)
            left = [t for t in tasks if not t.done()]
            for t in left:
                t.cancel()
            log.error("jobs: the job worker did not stop within %g s (is Redis reachable?): "
                      "cancelled %d task(s) still waiting on it; %d job(s)%s keep no "
                      "verdict, another process reports them failed once their heartbeat "
                      "is stale",
                      STOP_TIMEOUT, len(left), len(cut_off),
                      f" ({', '.join(cut_off)})" if cut_off else "")
        done, pending = await asyncio.wait([stopping, task], timeout=CANCEL_WAIT)
        for t in pending:  # SAQ ignored a second cancel: nothing more to wait for
            t.cancel()
        for t in done:
            if not t.cancelled() and (error := t.exception()) is not None:
                log.error("jobs: stopping the job worker failed: %r", error)

    async def _run(self, ctx: Context, *, request: dict[str, Any]) -> dict[str, Any]:
        """The SAQ job function: replay the request here, heartbeat while it runs."""
        assert self._execute is not None
        job = ctx["job"]
        self._running += 1
        self._idle.clear()
        try:
            async with asyncio.TaskGroup() as tasks:
                beat = tasks.create_task(self._beat(job))
                try:
                    outcome = await self._execute(JobRequest.from_json(request))
                finally:
                    beat.cancel()
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()
        return outcome.to_redis()

    async def _beat(self, job: Job) -> None:
        me = asyncio.current_task()
        while True:
            await asyncio.sleep(self.timing.heartbeat)
            try:
                await job.update()  # renews `touched`; see GatewayQueue._update
            except RedisError as exc:
                self._queue._redis_down(exc)
            # A cancel that lands inside the update is at times swallowed below us (the task
            # stays "cancelling" and beat on): the job then never ended and the worker's stop
            # waited for it until STOP_TIMEOUT. Honour it here.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError

    def _view(self, job: Job, body: bytes | None = None) -> JobView:
        request = job.kwargs.get("request") if job.kwargs else None
        identity = request.get("identity") if isinstance(request, dict) else None
        return replace(self._state_view(job, body), owner=owner_of(identity))

    def _state_view(self, job: Job, body: bytes | None) -> JobView:
        created = job.queued / 1000
        started = job.started / 1000 if job.started else None
        finished = job.completed / 1000 if job.completed else None
        status = job.status
        if status in (Status.NEW, Status.QUEUED):
            return JobView(job.key, "queued", created, started)
        if status == Status.ABORTING or (status == Status.ACTIVE and self._queue.is_lost(job)):
            if job.error == CANCELED:
                return JobView(job.key, "canceled", created, started, finished, error=CANCELED)
            return JobView(job.key, "failed", created, started,
                           job.touched / 1000 + self.timing.lost_after, error=LOST)
        if status == Status.ACTIVE:
            return JobView(job.key, "running", created, started)
        if status == Status.COMPLETE:
            return finished_view(job.key, created, started, finished,
                                 Outcome.from_record(job.result, body))
        error = job.error if job.error in _KNOWN_ERRORS else CRASHED
        state: JobState = "canceled" if error == CANCELED else "failed"
        return JobView(job.key, state, created, started, finished, error=error)


def _unavailable(exc: RedisError) -> JobsUnavailable:
    log.warning("jobs: Redis unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
    return JobsUnavailable("the job store (Redis) is unavailable; jobs cannot be "
                           "accepted or read right now")
