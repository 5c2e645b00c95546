"""The job store interface: one per process, `memory` or Redis, with identical behaviour.

A store raises the `JobsError` family (gateway/errors.py), all answered with 503 and
`Retry-After`.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import JobsSettings
from .model import STATES, JobRequest, JobState, JobView, Outcome

Execute = Callable[[JobRequest], Awaitable[Outcome]]

SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Timing:
    """How often a store checks on its jobs; defaults suit production, tests shorten them."""

    heartbeat: float = 2 * SECONDS  # a running job's process renews its claim this often
    missed_beats: int = 3  # claims older than this many beats belong to a dead process
    grace: float = 10 * SECONDS  # at shutdown, how long running jobs may still finish
    poll: float = 0.5 * SECONDS  # longest wait of an idle worker before it looks again

    @property
    def lost_after(self) -> float:
        """A running job whose claim is this old is reported `failed` (its process died)."""
        return self.heartbeat * self.missed_beats


class JobStore(ABC):
    """Keeps jobs, enforces the limits, and runs jobs through `execute` once started."""

    def __init__(self, settings: JobsSettings, timing: Timing) -> None:
        self.settings = settings
        self.timing = timing

    @property
    def capacity(self) -> int:
        return self.settings.max_running + self.settings.max_queued

    @abstractmethod
    async def start(self, execute: Execute | None) -> None:
        """Open the store; with `execute`, this process also runs jobs (up to the limits)."""

    @abstractmethod
    async def submit(self, request: JobRequest) -> JobView:
        """Queue a job atomically within the limits, or raise a `JobsError`; never both."""

    @abstractmethod
    async def get(self, job_id: str) -> JobView | None:
        """The job, or None if it is unknown or expired."""

    @abstractmethod
    async def cancel(self, job_id: str) -> JobView | None:
        """Cancel a queued or running job (a finished one is left as it is); None if unknown."""

    @abstractmethod
    async def counts(self) -> dict[JobState, int]:
        """Jobs per state, over the whole store (every process sharing it)."""

    @abstractmethod
    async def close(self) -> None:
        """Accept nothing more, let running jobs finish within `timing.grace`, fail the rest."""

    async def counts_by_state(self) -> dict[str, int]:
        """`counts` with every state present, for metrics."""
        counts = await self.counts()
        return {state: counts.get(state, 0) for state in STATES}


def open_store(settings: JobsSettings, timing: Timing) -> JobStore:
    """The store `jobs.store` names: "memory", or a Redis URL (needs the `redis` extra)."""
    if settings.store == "memory":
        from .memory import MemoryStore

        return MemoryStore(settings, timing)
    if not redis_available():
        raise RuntimeError(REDIS_MISSING)
    from .redis_store import RedisStore

    return RedisStore(settings, timing)


REDIS_MISSING = ("a redis store needs the redis extra: "
                 "pip install 'quart-aggregation-gateway[redis]'")


def redis_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("redis", "saq"))
