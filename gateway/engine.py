"""Runs a plan: dependencies, strategy, deadline, cancellation.

Parallel: every call is a task in one `TaskGroup`; a call awaits only the
calls it needs, so it starts the moment they finish (never in waves). A
required failure raises, which cancels the siblings at once; nothing
outlives the request. Sequential: the same calls one after another in the
plan's order, to measure what parallelism saves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .context import RequestContext
from .envelope import CallRecord, dumps, failure_status
from .errors import CallError, UpstreamUnavailable
from .lifecycle import OnCall, timed_call, within
from .pipeline import Reply
from .plan import CallPlan, Plan
from .template import Inputs
from .upstream import Upstream

log = logging.getLogger("gateway")


class _RequiredFailed(Exception):
    """Internal: a required call failed; unwinds the TaskGroup."""


@dataclass(slots=True)
class Outcome:
    """Everything the envelope needs once the plan has run."""

    results: dict[str, Any]
    records: dict[str, CallRecord]
    # The JSON of results returned unchanged, when parsing produced it (Reply.encoded).
    encoded: dict[str, bytes] = field(default_factory=dict)
    status: int = 200
    error: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def complete(self) -> bool:
        return all(r.ok for r in self.records.values())


async def execute(
    plan: Plan,
    ctx: RequestContext,
    upstreams: Mapping[str, Upstream],
    *,
    deadline: float,
    on_call: OnCall | None = None,
) -> Outcome:
    """Run every call of `plan` for one request; never raises a `CallError`."""
    run = _Run(plan, ctx, upstreams, on_call)
    deadline_passed = False
    try:
        async with within(ctx, deadline):
            if ctx.strategy == "sequential":
                await run.sequential()
            else:
                await run.parallel()
    except TimeoutError:
        deadline_passed = True
    except Exception:  # a bug below (a layer, an observer): a 500 that still has its meta
        log.exception("plan %s failed (request id %s)", plan.route, ctx.request_id)
        return run.outcome(False, deadline, crashed=True)
    return run.outcome(deadline_passed, deadline)


class _Run:
    __slots__ = ("ctx", "encoded", "failed", "headers", "inputs", "on_call", "plan", "records",
                 "replies", "results", "tasks", "upstreams")

    def __init__(self, plan: Plan, ctx: RequestContext, upstreams: Mapping[str, Upstream],
                 on_call: OnCall | None) -> None:
        self.plan = plan
        self.ctx = ctx
        self.upstreams = upstreams
        self.on_call = on_call
        self.results: dict[str, Any] = {}  # shaped (select/rename...): what `data` holds
        # Dependents read the raw replies, so shaping a call's output never breaks a chain.
        self.replies: dict[str, Any] = {}
        self.encoded: dict[str, bytes] = {}
        self.records = {c.name: CallRecord(c.name, c.upstream) for c in plan.calls}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.failed: tuple[str, CallError] | None = None
        self.inputs = Inputs(ctx.params, ctx.query, ctx.headers, ctx.body, self.replies,
                             ctx.identity.claims, ctx.client)
        self.headers: dict[str, list[tuple[str, str]]] = {}  # per upstream, built once

    async def parallel(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for call in self.plan.order:  # dependencies first, so their tasks exist
                    self.tasks[call.name] = tg.create_task(self.call(call))
        except* _RequiredFailed:
            pass

    async def sequential(self) -> None:
        try:
            for call in self.plan.order:
                await self.call(call)
        except _RequiredFailed:
            pass

    async def call(self, call: CallPlan) -> None:
        record = self.records[call.name]
        if call.skip_unless and call.skipped(self.inputs):
            record.skip()  # an optional call without a request value it needs
            self.results[call.name] = self.replies[call.name] = call.default
            self._notify(record, call.default)
            return
        for dep in call.deps:
            task = self.tasks.get(dep)
            if task is not None:
                await task
        try:
            reply = await timed_call(record, self.ctx, call.label, partial(self._send, call))
        except CallError as error:
            if not call.optional:
                self.failed = (call.name, error)
                self._notify(record, None)
                raise _RequiredFailed from error
            result = raw = call.default
        else:
            raw = reply.data
            result = call.shape(raw)
            if reply.encoded is not None and result is raw:
                self.encoded[call.name] = reply.encoded
        self.replies[call.name] = raw
        self.results[call.name] = result
        self._notify(record, result)

    async def _send(self, call: CallPlan) -> Reply:
        upstream = self.upstreams.get(call.upstream)
        if upstream is None:  # a plan matched before a reload that removed the upstream
            raise UpstreamUnavailable(f"upstream '{call.upstream}' is no longer configured")
        headers = self.headers.get(call.upstream)
        if headers is None:  # the same for every call of this request to that upstream
            headers = self.headers[call.upstream] = upstream.outgoing_headers(
                self.ctx.headers, self.ctx.request_id)
        if call.batch_key is not None:
            key = call.batch_key.render(self.inputs, call.name, encode=False)
            return await upstream.load(key, headers)
        body = None
        if call.body is not None:
            body = dumps(call.body.render(self.inputs, call.name))
        return await upstream.call(call.method, call.render_url(self.inputs), headers, body,
                                   cache=self.ctx.cache, deadline=self.ctx.deadline)

    def _notify(self, record: CallRecord, data: Any) -> None:
        if self.on_call is not None:
            self.on_call(record, data)

    def outcome(self, deadline_passed: bool, deadline: float, *,
                crashed: bool = False) -> Outcome:
        out = Outcome(self.results, self.records, self.encoded)
        unfinished = [c for c in self.plan.calls if not self.records[c.name].finished]
        if crashed:
            out.status = 500
            out.error = f"internal error (request id {self.ctx.request_id})"
            reason = "internal error"
        elif self.failed is not None:
            name, error = self.failed
            out.status, out.extra_headers = failure_status(error)
            out.error = str(error)
            reason = f"required call '{name}' failed"
        elif deadline_passed:
            reason = f"deadline of {deadline:g}s passed"
            required = [c.name for c in unfinished if not c.optional]
            if required:
                out.status = 504
                late = ", ".join(required)
                out.error = f"deadline of {deadline:g}s passed before {late} finished"
            else:  # only optional calls were late: answer with their defaults
                for c in unfinished:
                    self.results[c.name] = c.default
        else:
            return out
        for c in unfinished:
            record = self.records[c.name]
            record.error = f"canceled: {reason}" if record.start_ms else f"not run: {reason}"
        return out
