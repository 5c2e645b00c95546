"""Background jobs (SPEC section 6): `Prefer: respond-async`, `/jobs/{id}`, limits, stores.

    api.py          the routes, the `Prefer` hook, the store the runtime opens (`new_store`)
    runner.py       a job's request captured when accepted, replayed where it runs
    model.py        JobRequest, Outcome, JobView: what a job is (pure)
    store.py        the JobStore interface, `open_store` (its errors are in gateway/errors.py)
    memory.py       store = "memory": one process
    redis_store.py  store = "redis://...": every process, on SAQ (see _saq.py)
"""

from ..errors import JobsBusy, JobsClosed, JobsError, JobsUnavailable
from .api import publish_counts, register, respond_async
from .model import STATES, JobRequest, JobState, JobView, Outcome
from .store import JobStore, Timing, open_store

__all__ = [
    "STATES",
    "JobRequest",
    "JobState",
    "JobStore",
    "JobView",
    "JobsBusy",
    "JobsClosed",
    "JobsError",
    "JobsUnavailable",
    "Outcome",
    "Timing",
    "open_store",
    "publish_counts",
    "register",
    "respond_async",
]
