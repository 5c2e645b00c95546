"""SAQ's Redis queue, tightened where SPEC section 6 needs more than SAQ promises.

SAQ (https://github.com/tobymao/saq) does the queue work: job records and key
layout, the worker loop, per-job timeouts, cancelling a job's task in the
process that runs it, graceful worker stop. This subclass changes six methods:

- `_enqueue`: one Lua script checks the deployment-wide limit and queues the
  job, so two processes can never both take the last slot.
- `dequeue`: one Lua script takes a job only while fewer than `max_running`
  are active anywhere (SAQ's own limit is per worker), and leaves a short
  hand-off marker so the sweep cannot mistake a job being started for a lost
  one (SAQ issues #124, #277).
- `_update`, `_finish`, `cancel` (and `abort`): read-modify-write under
  WATCH, so a heartbeat can never undo a cancel, a cancel can never rewrite a
  finished job (which would leave it `aborting` forever), and the first
  verdict on a job is final.
- `sweep`: a job is lost only when its heartbeat is stale, and is finished at
  once as failed (SAQ waits on pub/sub for a worker that is gone).
- `_retry` never re-runs a job (an aggregate may POST): a job cut off by a
  worker stopping is failed as shut down.

A finished job's result body is not in its JSON record but in a key of its own, as the
bytes the runner made (`body_key`, same TTL, written in the same MULTI): inside the record
it was a 2 MB JSON string, escaped on write, unescaped, copied and re-encoded on every
read, and parsing the record reserved ~12 times its size (orjson).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, WatchError
from saq.job import TERMINAL_STATUSES, Job, Status
from saq.queue.redis import RedisQueue
from saq.types import WorkerInfo
from saq.utils import now
from saq.worker import Worker

from ..errors import JobsBusy
from .model import CANCELED, CRASHED, LOST, OWN_KEY, RAW_BODY, SHUTDOWN, TIMED_OUT, Outcome
from .store import Timing

log = logging.getLogger("gateway.jobs")

QUEUE_NAME = "gateway"
FUNCTION = "gateway.aggregate"
HANDOFF_MS = 10_000  # a dequeued job must be marked active within this long

# Finished jobs are counted per state in sorted sets scored by their expiry time.
FINISHED_STATES = ("succeeded", "failed", "canceled")

_ENQUEUE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], 0, KEYS[2])
redis.call('RPUSH', KEYS[3], KEYS[2])
return 1
"""

_DEQUEUE = """
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[1]) then return false end
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if id then redis.call('SET', ARGV[2] .. id, '1', 'PX', ARGV[3]) end
return id
"""


def state_of(job: Job) -> str:
    """The SPEC state a finished SAQ job ends in."""
    if job.status == Status.COMPLETE:
        return Outcome.from_record(job.result).state
    if job.status in (Status.ABORTED, Status.ABORTING) and job.error == CANCELED:
        return "canceled"
    return "failed"


T = TypeVar("T")
_Write = Callable[[Pipeline], Any]
_Plan = Callable[[Job | None, Pipeline], Awaitable[_Write | None]]


def dump(obj: Any) -> bytes:
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)


class GatewayQueue(RedisQueue):
    def __init__(self, redis: Redis, *, max_running: int, capacity: int, ttl: float,
                 timing: Timing) -> None:
        super().__init__(redis, name=QUEUE_NAME, dump=dump, load=orjson.loads,
                         swept_error_message=LOST)
        self.max_running = max_running
        self.capacity = capacity
        self.ttl_ms = max(1, round(ttl * 1000))
        self.timing = timing
        self.closing = False
        self.finished_keys = {s: self.namespace(f"finished:{s}") for s in FINISHED_STATES}
        self._handoff = self.namespace("handoff:")
        self._body = self.namespace("body:")
        self._enqueue_limited: AsyncScript = redis.register_script(_ENQUEUE)
        self._dequeue_limited: AsyncScript = redis.register_script(_DEQUEUE)
        self._outage_logged = False

    # -- admission and hand-out ---------------------------------------------------------------

    async def _enqueue(self, job: Job) -> Job | None:
        added = await self._enqueue_limited(
            keys=[self._incomplete, job.id, self._queued],
            args=[self.serialize(job), self.capacity])
        if added == 0:
            raise JobsBusy("the deployment's job limits are reached "
                           f"({self.max_running} running, "
                           f"{self.capacity - self.max_running} waiting): try again later")
        return job if added == 1 else None

    async def dequeue(self, timeout: float = 0.0,  # noqa: ASYNC109 (SAQ's signature)
                      poll_interval: float = 0.0) -> Job | None:
        delay = 0.02
        while not self.closing:
            try:
                job_id = await self._dequeue_limited(
                    keys=[self._queued, self._active],
                    args=[self.max_running, self._handoff, HANDOFF_MS])
                self._redis_back()
            except RedisError as exc:
                self._redis_down(exc)
                await asyncio.sleep(self.timing.poll)
                continue
            if job_id is not None:
                job = await self._get_job_by_id(job_id)
                if job is not None:
                    return job
                continue  # its record is gone; the sweep drops the id
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.timing.poll)
        return None

    async def schedule(self, lock: int = 1) -> list[str]:
        return []  # jobs are never scheduled for later: spare Redis a script call a second

    # -- every write to a job record ----------------------------------------------------------

    async def _transact(self, job_id: str, plan: _Plan, *also_watch: str
                        ) -> tuple[Job | None, list[Any] | None]:
        """WATCH the record (and `also_watch`), let `plan` decide from what is stored, EXEC;
        again if anything watched changed meanwhile.

        `plan` may read more through the pipe (it is in immediate mode) and returns the
        writes to make, or None for none. Returns the job as `plan` saw it and the EXEC
        results (None if nothing was written).
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(job_id, *also_watch)
                    stored = self.deserialize(await pipe.get(job_id))
                    write = await plan(stored, pipe)
                    if write is None:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return stored, None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    write(pipe)
                    return stored, await pipe.execute()
                except WatchError:
                    continue

    async def _update(self, job: Job, status: Status | None = None, **kwargs: Any) -> None:
        async def plan(stored: Job | None, pipe: Pipeline) -> _Write | None:
            if stored is None or stored.status in TERMINAL_STATUSES:
                return None  # finished (or expired): a late heartbeat changes nothing
            if stored.status == Status.ABORTING:  # keep the cancel, renew the heartbeat
                job.status, job.error, job.completed = stored.status, stored.error, stored.completed
            else:
                job.status = status or stored.status
            return lambda p: p.set(job.id, self.serialize(job))

        await self._transact(job.id, plan)

    async def _finish(self, job: Job, status: Status, *, result: Any = None,
                      error: str | None = None) -> None:
        async def plan(stored: Job | None, pipe: Pipeline) -> _Write | None:
            if stored is not None and stored.status in TERMINAL_STATUSES:
                return None  # the first verdict stands
            if stored is not None:
                job.started = job.started or stored.started  # SAQ's retry path zeroes it
            if stored is not None and stored.status == Status.ABORTING:
                job.status, job.error, job.result = Status.ABORTED, stored.error, None
            elif job.status == Status.FAILED:  # SAQ's error is a traceback: never shown
                job.error = _failure_reason(job.error)
            return lambda p: self._finish_ops(p, job)

        await self._with_retry(lambda: self._transact(job.id, plan))

    def _finish_ops(self, pipe: Pipeline, job: Job) -> None:
        job.completed = job.completed or now()
        expires = time.time() + self.ttl_ms / 1000
        pipe.lrem(self._active, 1, job.id)
        pipe.lrem(self._queued, 1, job.id)
        pipe.zrem(self._incomplete, job.id)
        record, body = self._split(job)
        pipe.psetex(job.id, self.ttl_ms, record)
        if body is not None:
            pipe.psetex(self.body_key(job.key), self.ttl_ms, body)
        pipe.zadd(self.finished_keys[state_of(job)], {job.id: expires})

    def body_key(self, job_key: str) -> str:
        return self._body + job_key

    def _split(self, job: Job) -> tuple[bytes | str, bytes | None]:
        """The job's record, and the result body it leaves to `body_key` (see the top)."""
        result = job.result
        body = result.get(RAW_BODY) if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(body, bytes):
            return self.serialize(job), None
        record = job.to_dict()
        record["result"] = {k: v for k, v in result.items() if k != RAW_BODY} | {
            "body": OWN_KEY}
        return self._dump(record), body

    async def job_and_body(self, job_key: str) -> tuple[Job | None, bytes | None]:
        """A job and its result body (None until it finished with one), in one round trip."""
        async with self._op_sem:
            record, body = await self.redis.mget([self.job_id(job_key),
                                                  self.body_key(job_key)])
        return self.deserialize(record), body

    async def cancel(self, job_key: str, error: str) -> Job | None:
        """Cancel by key: a queued job finishes at once, a running one is flagged `aborting`
        for its worker to stop; a finished job is left as it is. None if unknown."""
        job_id = self.job_id(job_key)

        async def plan(stored: Job | None, pipe: Pipeline) -> _Write | None:
            if stored is None or stored.status in (*TERMINAL_STATUSES, Status.ABORTING):
                return None
            stored.error = error
            stored.completed = now()
            if await _aw(pipe.lpos(self._queued, job_id)) is not None:
                stored.status = Status.ABORTED
                return lambda p: self._finish_ops(p, stored)
            # running, or between dequeue and start: its worker cancels the task
            stored.status = Status.ABORTING
            return lambda p: p.set(job_id, self.serialize(stored))

        # The queued list is watched too: a dequeue in between means "look again".
        stored, _ = await self._transact(job_id, plan, self._queued)
        return stored

    async def abort(self, job: Job, error: str, ttl: float = 5) -> None:
        await self.cancel(job.key, error)

    async def _retry(self, job: Job, error: str | None) -> None:
        # A worker stopped under this job; running it again could repeat its upstream calls.
        await self.finish(job, Status.ABORTED, error=SHUTDOWN)

    # -- lost jobs ----------------------------------------------------------------------------

    def is_lost(self, job: Job) -> bool:
        """Running (or being canceled) with a heartbeat older than `timing.lost_after`."""
        return (job.status in (Status.ACTIVE, Status.ABORTING)
                and now() - job.touched > self.timing.lost_after * 1000)

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        try:
            if not await self.redis.set(self._sweep, 1, nx=True, px=int(lock * 1000)):
                return []  # another process swept within the last `lock` seconds
            ids: list[bytes] = await _aw(self.redis.lrange(self._active, 0, -1))
            if not ids:
                return []
            blobs = await self.redis.mget(ids)
            handoffs = await self.redis.mget([self._handoff + i.decode() for i in ids])
        except RedisError as exc:
            self._redis_down(exc)
            return []
        swept = []
        for raw_id, blob, handoff in zip(ids, blobs, handoffs, strict=True):
            job_id = raw_id.decode()
            job = self.deserialize(blob)
            if job is None:
                await _aw(self.redis.lrem(self._active, 0, job_id))
                await self.redis.zrem(self._incomplete, job_id)
            elif self.is_lost(job) or (job.status in (Status.NEW, Status.QUEUED)
                                       and handoff is None):
                error = job.error if job.status == Status.ABORTING else LOST
                log.warning("job %s: its process stopped; marking it %s", job.key[:8],
                            "canceled" if error == CANCELED else "failed")
                await self.finish(job, Status.ABORTED, error=error)
                swept.append(job_id)
        return swept

    # -- Redis outages ------------------------------------------------------------------------

    async def write_worker_info(self, worker_id: str, info: WorkerInfo, ttl: int) -> None:
        try:
            await super().write_worker_info(worker_id, info, ttl)
        except RedisError as exc:
            self._redis_down(exc)

    async def _with_retry(self, write: Callable[[], Awaitable[Any]]) -> None:
        """Keep a finished job's verdict through a short Redis outage (up to `lost_after`)."""
        give_up = time.monotonic() + self.timing.lost_after
        while True:
            try:
                await write()
                return
            except RedisError as exc:
                if time.monotonic() > give_up:
                    raise
                self._redis_down(exc)
                await asyncio.sleep(self.timing.poll)

    def _redis_down(self, exc: RedisError) -> None:
        if not self._outage_logged:
            log.error("jobs: cannot reach Redis (%s); retrying", str(exc).splitlines()[0])
            self._outage_logged = True

    def _redis_back(self) -> None:
        if self._outage_logged:
            log.warning("jobs: Redis is reachable again")
            self._outage_logged = False


def _aw(value: Awaitable[T] | T) -> Awaitable[T]:
    """redis-py types commands as sync-or-async; on the asyncio client they are awaitable."""
    return cast(Awaitable[T], value)


def _failure_reason(error: str | None) -> str:
    return TIMED_OUT if error and "TimeoutError" in error else CRASHED


class GatewayWorker(Worker[Any]):
    """SAQ's worker, minus its signal handlers: Hypercorn (or `gateway worker`) owns those."""

    SIGNALS = []  # noqa: RUF012
