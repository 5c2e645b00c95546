"""Runs one admitted request's target, a config plan or a code view, to a `Result`.

Whatever brought the request (HTTP, `/ws`, the run API, a job), it is run
here, under one deadline (the endpoint's `deadline`, else `gateway.deadline`,
counted from the request's arrival: `lifecycle.within`) and with one error ->
status mapping:

- a required call's `CallError`: `envelope.failure_status` (502/504, 503 with
  `Retry-After` for an open breaker), its message as the error line;
- the deadline: 504;
- a `RequestError` a view raises: its own status (a bad path segment: 400);
- anything else a view or a `combine` hook raises, or that escapes a plan's
  calls (the engine catches it): 500, logged with the request id, which the
  error line names (no traceback reaches the client), and `meta` kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from .config import GatewaySettings
from .context import RequestContext
from .engine import execute
from .envelope import CallRecord, failure_status
from .errors import CallError, RequestError
from .fan import Fan
from .lifecycle import OnCall, within
from .plan import Plan
from .result import Result, result
from .routing import CodeView, Target
from .upstream import Upstream

log = logging.getLogger("gateway")


async def run(target: Target, ctx: RequestContext, upstreams: Mapping[str, Upstream],
              settings: GatewaySettings, on_call: OnCall | None = None) -> Result:
    """`target` run for `ctx`; never raises for a call's failure, a view's or a hook's."""
    deadline = target.deadline or settings.deadline
    if isinstance(target, Plan):
        return await _plan(target, ctx, upstreams, deadline, on_call)
    return await _view(target, ctx, upstreams, deadline, on_call)


async def _plan(plan: Plan, ctx: RequestContext, upstreams: Mapping[str, Upstream],
                deadline: float, on_call: OnCall | None) -> Result:
    outcome = await execute(plan, ctx, upstreams, deadline=deadline, on_call=on_call)
    records = list(outcome.records.values())
    if not outcome.ok:
        return _answer(ctx, outcome.status, None, records, outcome.error, outcome.extra_headers)
    data: Any = {c.name: outcome.results.get(c.name) for c in plan.calls}
    if plan.combine is None:
        # A big reply returned unchanged was encoded when it was parsed (its depth check):
        # the envelope embeds those bytes instead of encoding the value again.
        for name, encoded in outcome.encoded.items():
            data[name] = orjson.Fragment(encoded)
    else:
        # The hook shares the request's deadline: a hanging hook is a 504, not a hang.
        try:
            async with within(ctx, deadline):
                if plan.combine_is_async:
                    data = await plan.combine(data, ctx)
                else:  # a sync hook runs in a thread so it can never stall the loop
                    data = await asyncio.to_thread(plan.combine, data, ctx)
        except TimeoutError:
            return _answer(ctx, 504, None, records,
                           f"deadline of {deadline:g}s passed in the combine hook")
        except Exception:
            log.exception("combine hook failed (request id %s)", ctx.request_id)
            return _answer(ctx, 500, None, records,
                           f"the endpoint's combine hook failed (request id {ctx.request_id})")
    return _answer(ctx, 200, data, records, complete=outcome.complete)


async def _view(view: CodeView, ctx: RequestContext, upstreams: Mapping[str, Upstream],
                deadline: float, on_call: OnCall | None) -> Result:
    fan = Fan(ctx, upstreams, on_call, route=f"{ctx.method} {view.route}")

    def failed(status: int, error: str, reason: str,
               extra: Mapping[str, str] | None = None) -> Result:
        fan.settle(reason)
        return _answer(ctx, status, None, list(fan.records.values()), error, extra)

    try:
        async with within(ctx, deadline):
            data = await view(fan, dict(ctx.params))
    except CallError as error:
        status, extra = failure_status(error)
        return failed(status, str(error), "a required call failed", extra)
    except TimeoutError:
        reason = f"deadline of {deadline:g}s passed"
        return failed(504, reason, reason)
    except RequestError as error:
        return failed(error.status, str(error), "the view refused the request")
    except Exception:
        log.exception("view %s failed (request id %s)", view.func.__name__, ctx.request_id)
        return failed(500, f"the endpoint failed (request id {ctx.request_id})",
                      "the view failed")
    fan.settle()
    records = list(fan.records.values())
    return _answer(ctx, 200, data, records, complete=all(r.ok for r in records))


def _answer(ctx: RequestContext, status: int, data: Any, records: list[CallRecord],
            error: str | None = None, extra: Mapping[str, str] | None = None,
            complete: bool = False) -> Result:
    return result(status, data, request_id=ctx.request_id, strategy=ctx.strategy,
                  started=ctx.started, records=records, error=error, extra=extra,
                  complete=complete)
