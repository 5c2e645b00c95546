"""`store = "memory"`: jobs in this process's memory, run by this process's event loop.

Serves one process only: with several Hypercorn workers each has its own jobs,
and a job's id is unknown to the others. Use a Redis store for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace

from ..config import JobsSettings
from ..errors import JobsBusy, JobsClosed
from .model import (
    CANCELED,
    CRASHED,
    JOB_SLACK,
    SHUTDOWN,
    SHUTDOWN_QUEUED,
    TIMED_OUT,
    JobRequest,
    JobState,
    JobView,
    Outcome,
    finished_view,
    new_job_id,
)
from .store import Execute, JobStore, Timing

log = logging.getLogger("gateway.jobs")


# What a finished job costs besides its result and error text: the view, its id, the
# map entry. Counted so that many tiny results are bounded too.
RECORD_BYTES = 512


@dataclass(slots=True)
class _Job:
    """A queued or running job."""

    id: str
    request: JobRequest
    created_at: float
    started_at: float | None = None
    task: asyncio.Task[None] | None = None
    finished: bool = False

    def current(self) -> JobView:
        state: JobState = "running" if self.started_at is not None else "queued"
        return JobView(self.id, state, self.created_at, self.started_at,
                       owner=self.request.owner)


@dataclass(frozen=True, slots=True)
class _Finished:
    view: JobView
    size: int  # bytes counted against jobs.max_finished_bytes
    expires: float


class MemoryStore(JobStore):
    """Unfinished jobs are bounded by the limits; finished ones by `ttl` and by
    `max_finished_bytes` (their serialized results), the oldest dropped first."""

    def __init__(self, settings: JobsSettings, timing: Timing) -> None:
        super().__init__(settings, timing)
        self._jobs: dict[str, _Job] = {}  # queued and running
        self._queue: deque[str] = deque()
        self._running: set[str] = set()
        self._finished: OrderedDict[str, _Finished] = OrderedDict()  # oldest first
        self._finished_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._execute: Execute | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def finished_bytes(self) -> int:
        """What finished jobs hold now, as counted against `max_finished_bytes`."""
        return self._finished_bytes

    async def start(self, execute: Execute | None) -> None:
        # Memory jobs can only run here, so a store without `execute` runs nothing.
        self._execute = execute

    async def submit(self, request: JobRequest) -> JobView:
        if self._closing:
            raise JobsClosed("the gateway is shutting down and accepts no new jobs")
        if len(self._queue) + len(self._running) >= self.capacity:
            raise JobsBusy(f"{self.settings.max_running} jobs running and "
                           f"{self.settings.max_queued} waiting: try again later")
        job = _Job(new_job_id(), request, time.time())
        self._jobs[job.id] = job
        self._queue.append(job.id)
        view = job.current()
        self._pump()
        return view

    async def get(self, job_id: str) -> JobView | None:
        return self._lookup(job_id)

    async def cancel(self, job_id: str) -> JobView | None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._finish(job, Outcome(None, None, CANCELED), "canceled")
        return self._lookup(job_id)

    async def counts(self) -> dict[JobState, int]:
        self._expire()
        counts: dict[JobState, int] = {}
        states = [j.current().state for j in self._jobs.values()]
        states += [f.view.state for f in self._finished.values()]
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        return counts

    async def close(self) -> None:
        self._closing = True
        for job_id in list(self._queue):
            self._finish(self._jobs[job_id], Outcome(None, None, SHUTDOWN_QUEUED))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timing.grace):
                await self._idle.wait()
        for job_id in list(self._running):
            self._finish(self._jobs[job_id], Outcome(None, None, SHUTDOWN))
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def _lookup(self, job_id: str) -> JobView | None:
        self._expire()
        job = self._jobs.get(job_id)
        if job is not None:
            return job.current()
        finished = self._finished.get(job_id)
        return None if finished is None else finished.view

    # -- running ------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Start queued jobs while fewer than `max_running` run."""
        if self._execute is None or self._closing:
            return
        while self._queue and len(self._running) < self.settings.max_running:
            job = self._jobs[self._queue.popleft()]
            job.started_at = time.time()
            self._running.add(job.id)
            self._idle.clear()
            job.task = task = asyncio.create_task(self._run(job, self._execute),
                                                  name=f"gateway-job-{job.id[:8]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Job, execute: Execute) -> None:
        try:
            async with asyncio.timeout(job.request.deadline + JOB_SLACK):
                outcome = await execute(job.request)
        except TimeoutError:
            outcome = Outcome(None, None, TIMED_OUT)
        except asyncio.CancelledError:
            if not job.finished:  # not canceled by us: the loop itself is going away
                raise
            return
        except Exception:  # `execute` never raises on purpose; keep the job from sticking
            log.exception("job %s crashed", job.id[:8])
            outcome = Outcome(None, None, CRASHED)
        if not job.finished:
            self._finish(job, outcome)

    def _finish(self, job: _Job, outcome: Outcome, state: JobState | None = None) -> None:
        now = time.time()
        view = finished_view(job.id, job.created_at, job.started_at, now, outcome)
        if state is not None:
            view = JobView(job.id, state, job.created_at, job.started_at, now, None, None,
                           outcome.error)
        view = replace(view, owner=job.request.owner)
        job.finished = True
        del self._jobs[job.id]
        with contextlib.suppress(ValueError):
            self._queue.remove(job.id)
        if job.id in self._running:
            self._running.discard(job.id)
            task = job.task
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()
        if not self._running:
            self._idle.set()
        self._keep(view, now + self.settings.ttl)
        self._pump()

    def _keep(self, view: JobView, expires: float) -> None:
        """Hold a finished job within `max_finished_bytes`, dropping the oldest ones."""
        size = RECORD_BYTES + len(view.result_json or b"") + len(view.error or "")
        self._finished[view.id] = _Finished(view, size, expires)
        self._finished_bytes += size
        while self._finished_bytes > self.settings.max_finished_bytes and len(self._finished) > 1:
            self._drop_oldest()
        self._expire()

    def _expire(self) -> None:
        now = time.time()
        while self._finished and next(iter(self._finished.values())).expires <= now:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, finished = self._finished.popitem(last=False)
        self._finished_bytes -= finished.size
