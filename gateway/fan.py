"""The fan-out helper handed to code-defined views.

`fan.get(...)` describes a call; awaiting it runs it, and `fan.gather(...)`
runs several concurrently, or one after another when the request's strategy
is sequential, so one view serves both. Calls go through the same
`Upstream` objects as config calls (timeouts, body caps, header rules) and
fill the same `meta`. A call described but never awaited is reported as a
config call that was skipped: `{"skipped": true, "ok": true}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote, unquote, urlencode

from .context import RequestContext
from .envelope import CallRecord, dumps
from .errors import CallError, RequestError
from .lifecycle import OnCall, timed_call
from .template import path_value_problem
from .upstream import Upstream


@dataclass(slots=True)
class FanCall:
    """One upstream call, described but not started; await it or pass it to `gather`."""

    fan: Fan
    method: str
    upstream: str
    path: str
    params: Mapping[str, Any] | None
    json: Any
    optional: bool
    default: Any
    name: str

    def __await__(self) -> Generator[Any, None, Any]:
        return self.fan.run(self).__await__()


class Fan:
    """Makes upstream calls by upstream name for one request."""

    def __init__(self, ctx: RequestContext, upstreams: Mapping[str, Upstream],
                 on_call: OnCall | None = None, route: str = "a code view") -> None:
        self.ctx = ctx
        self.records: dict[str, CallRecord] = {}
        self._upstreams = upstreams
        self._on_call = on_call
        self._route = route  # "GET /summary/<int:user_id>", for the breaker's messages
        self._headers: dict[str, list[tuple[str, str]]] = {}  # per upstream, built once

    @property
    def strategy(self) -> str:
        return self.ctx.strategy

    def get(self, upstream: str, path: str, *, params: Mapping[str, Any] | None = None,
            optional: bool = False, default: Any = None, name: str | None = None) -> FanCall:
        return self.call("GET", upstream, path, params=params, optional=optional,
                         default=default, name=name)

    def post(self, upstream: str, path: str, *, json: Any = None,
             params: Mapping[str, Any] | None = None, optional: bool = False,
             default: Any = None, name: str | None = None) -> FanCall:
        return self.call("POST", upstream, path, params=params, json=json, optional=optional,
                         default=default, name=name)

    def call(self, method: str, upstream: str, path: str, *,
             params: Mapping[str, Any] | None = None, json: Any = None,
             optional: bool = False, default: Any = None, name: str | None = None) -> FanCall:
        if upstream not in self._upstreams:
            raise KeyError(f"unknown upstream '{upstream}'")
        unique = self._unique(name or upstream)
        self.records[unique] = CallRecord(unique, upstream)
        return FanCall(self, method.upper(), upstream, path, params, json, optional, default,
                       unique)

    def segment(self, value: Any) -> str:
        """`value` percent-encoded as one path segment, for paths built from input.

        Refused as a config placeholder's value would be: empty, a `.` or `..` segment
        between its slashes, or CR/LF/NUL.
        """
        text = str(value)
        if path_value_problem(text) is not None or any(ch in text for ch in "\r\n\0"):
            raise RequestError(f"'{text[:40]}' cannot be used as a path segment")
        return quote(text, safe="")

    async def gather(self, *calls: FanCall) -> list[Any]:
        """Run calls concurrently (sequentially under that strategy); results in order.

        A required call's failure raises its `CallError` and cancels the others.
        """
        if self.ctx.strategy == "sequential" or len(calls) < 2:
            return [await self.run(c) for c in calls]
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.run(c)) for c in calls]
        except ExceptionGroup as group:
            # A bad path (RequestError) is the client's 400 here too, as it is when awaited alone.
            first = next((e for e in group.exceptions
                          if isinstance(e, CallError | RequestError)), None)
            if first is None:
                raise
            raise first from None
        return [t.result() for t in tasks]

    async def run(self, call: FanCall) -> Any:
        record = self.records[call.name]
        upstream = self._upstreams[call.upstream]
        url = _safe_path(call.path)
        if call.params:
            url += ("&" if "?" in url else "?") + urlencode(call.params, doseq=True,
                                                               quote_via=quote)
        body = None if call.json is None else dumps(call.json)
        headers = self._headers.get(call.upstream)
        if headers is None:  # the same for every call of this request to that upstream
            headers = self._headers[call.upstream] = upstream.outgoing_headers(
                self.ctx.headers, self.ctx.request_id)
        label = f"{'optional ' if call.optional else ''}call '{call.name}' of {self._route}"
        try:
            reply = await timed_call(record, self.ctx, label, partial(
                upstream.call, call.method, url, headers, body, cache=self.ctx.cache,
                deadline=self.ctx.deadline))
        except CallError:
            self._notify(record, None)
            if not call.optional:
                raise
            return call.default
        except asyncio.CancelledError:  # cut off: the deadline, or a required sibling failed
            record.error = "canceled"
            raise
        self._notify(record, reply.data)
        return reply.data

    def settle(self, failure: str | None = None) -> None:
        """Once the view is done, a call it described but never ran: skipped if the view
        answered, else `not run` with the `failure` that ended it (as a plan says it)."""
        for record in self.records.values():
            if not (record.finished or record.start_ms or record.error is not None):
                if failure is None:
                    record.skip()
                else:
                    record.error = f"not run: {failure}"
                self._notify(record, None)

    def _notify(self, record: CallRecord, data: Any) -> None:
        if self._on_call is not None:
            self._on_call(record, data)

    def _unique(self, name: str) -> str:
        """Calls are keyed by name in `meta`; a repeated name gets `_2`, `_3`..."""
        if name not in self.records:
            return name
        n = 2
        while f"{name}_{n}" in self.records:
            n += 1
        return f"{name}_{n}"


def _safe_path(path: str) -> str:
    """Refuse a path that could leave the upstream's base: dot segments, fragments, controls."""
    if not path.startswith("/") or path.startswith("//"):
        raise RequestError(f"upstream path must start with a single '/': '{path[:60]}'")
    if any(ch in path for ch in "#\r\n\0 "):
        raise RequestError("upstream path holds a character that is not allowed")
    raw_path = path.split("?", 1)[0]
    if any(unquote(seg) in (".", "..") for seg in raw_path.split("/")):
        raise RequestError("upstream path holds a '.' or '..' segment")
    return path

