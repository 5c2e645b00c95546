"""One call's lifecycle, the same whether a config plan (`engine.py`) or a view (`fan.py`) makes it.

A call is stamped with its start (offset from the request's arrival), counted
by the retry layer (`context.counting`, so a call cut off mid-retry still says
how many attempts it made), timed, and recorded as succeeded or failed; the
caller then decides what a failure means (a required call raises, an
optional one takes its default) and reports the record (`OnCall`: `/ws`
sends a message per call as it finishes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .context import RequestContext, counting
from .envelope import CallRecord
from .errors import CallError
from .pipeline import Reply

# Told about each call as it finishes: its record and its result (None if it failed).
OnCall = Callable[[CallRecord, Any], None]


async def timed_call(record: CallRecord, ctx: RequestContext, label: str,
                     send: Callable[[], Awaitable[Reply]]) -> Reply:
    """`send()`'s reply, with `record` filled in; re-raises its `CallError` or cancellation.

    `label` names the call in the breaker's messages ("call 'orders' of GET /x").
    """
    started = time.perf_counter()
    record.start_ms = (started - ctx.started) * 1000.0
    try:
        with counting(label) as tally:
            reply = await send()
    except CallError as error:
        record.finish_failed(error, (time.perf_counter() - started) * 1000.0)
        raise
    except asyncio.CancelledError:  # cut off: the deadline, or a required sibling failed
        record.elapsed_ms = (time.perf_counter() - started) * 1000.0
        record.attempts = tally.attempts
        raise
    record.finish_ok(reply, (time.perf_counter() - started) * 1000.0)
    return reply


def within(ctx: RequestContext, deadline: float) -> asyncio.Timeout:
    """The request's deadline as a timeout, counted from its arrival; `ctx` is told too.

    The engine, a code view and a `combine` hook all run under it: one clock per request.
    Its calls pass `ctx.deadline` down, so retries never start what it would cut short.
    """
    left = ctx.remaining(deadline)
    ctx.deadline = asyncio.get_running_loop().time() + left
    return asyncio.timeout(left)
