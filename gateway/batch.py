"""Cross-request batching (the dataloader pattern) for an upstream with a batch endpoint.

Every keyed call waiting at the same time, from any request in the process, joins the
open batch; it goes out as one `GET {path}?{param}=k1,k2,...` (keys deduplicated, each
percent-encoded) through the upstream's usual call (breaker, retries, timeout, pool cap)
as soon as it holds `max_size` keys, or once `window_ms` has passed and the event loop
is idle: a burst of requests that keeps the worker busy past the window still has keys
on their way to the batcher, so the batch waits for a few loop passes in a row that ran
nothing else (the loop drained its ready queue), up to `max_wait_ms` after it opened.
Each caller then gets the item whose `key` field equals its key, compared as text; a key
without an item is a failed call with status 404, and a failed batch call fails every
call in it.

Calls are only batched with calls that send the same headers, request id and trace
headers aside (an `authorization` allowlisted in `forward_headers` must never be sent on
another user's behalf); the batch goes out with the headers of the call that opened it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson

from .cache import Headers, vary_key
from .config import Batch
from .context import Tally, counting, current_call
from .errors import CallError, UpstreamBadReply, UpstreamStatus, UpstreamUnavailable
from .pipeline import Reply

Send = Callable[[str, Headers], Awaitable[Reply]]

# A loop pass (call_soon to its callback) shorter than this ran little but the batcher's
# check: no request is being parsed or handled, so no key is on its way. Busy passes of a
# burst take far longer (each request's steps cost 50+ us); a pass that is slow for
# another reason only makes the batch wait longer, up to max_wait_ms.
IDLE_PASS_S = 0.0002
# Passes in a row that must be that short: a request just read from its socket first goes
# through tiny hops (task wake-ups from Hypercorn's reader to its protocol), each pass as
# short as an idle one (measured: 15 us), before its first real step.
IDLE_PASSES = 3
# max_wait_ms, when not configured: this many windows.
WAIT_WINDOWS = 4


class _Open:
    """A batch still taking keys: each key's waiters, in arrival order."""

    __slots__ = ("deadline", "headers", "tally", "timer", "waiters")

    def __init__(self, headers: Headers, deadline: float) -> None:
        self.headers = headers
        self.deadline = deadline  # perf_counter() after which it goes, busy loop or not
        self.waiters: dict[str, list[asyncio.Future[Reply]]] = {}
        self.timer: asyncio.Handle | None = None  # the window's timer, then the idle check
        self.tally: Tally | None = None  # the batch call's attempts, once it is sent


class Batcher:
    """Coalesces `load(key)` calls to one upstream; owns the tasks of the batches it sends."""

    def __init__(self, upstream: str, config: Batch, send: Send,
                 observe: Callable[[int], None] | None = None) -> None:
        self.upstream = upstream
        self.max_size = config.max_size
        self.window = config.window_ms / 1000.0
        max_wait = config.max_wait_ms
        self.max_wait = WAIT_WINDOWS * self.window if max_wait is None else max_wait / 1000.0
        self._prefix = f"{config.path}?{quote(config.param, safe='')}="
        self._key_field = config.key
        self._send = send
        self._observe = observe
        self._open: dict[tuple[tuple[str, str], ...], _Open] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, key: str, headers: Headers) -> Reply:
        """The item for `key`, from whichever batch call serves it."""
        group = vary_key(headers)
        loop = asyncio.get_running_loop()
        batch = self._open.get(group)
        if batch is None:
            batch = self._open[group] = _Open(headers, time.perf_counter() + self.max_wait)
            batch.timer = loop.call_later(self.window, self._settle, group, batch, None)
        waiter: asyncio.Future[Reply] = loop.create_future()
        batch.waiters.setdefault(key, []).append(waiter)
        if len(batch.waiters) >= self.max_size:
            self._flush(group, batch)
        try:
            return await waiter
        except asyncio.CancelledError:  # cut off: the attempts made on its behalf still count
            caller = current_call()
            if caller is not None and batch.tally is not None:
                caller.attempts = batch.tally.attempts
            raise

    def _settle(self, group: tuple[tuple[str, str], ...], batch: _Open,
                asked: float | None, quiet: int = 0) -> None:
        """The window is over (`asked` None) or a loop pass asked at `asked` has run:
        send the batch once `IDLE_PASSES` passes in a row were idle or the batch has
        waited `max_wait`, else look again after the next pass."""
        now = time.perf_counter()
        quiet = quiet + 1 if asked is not None and now - asked < IDLE_PASS_S else 0
        if now >= batch.deadline or quiet >= IDLE_PASSES:
            self._flush(group, batch)
        elif self._open.get(group) is batch:
            batch.timer = asyncio.get_running_loop().call_soon(
                self._settle, group, batch, now, quiet)

    def _flush(self, group: tuple[tuple[str, str], ...], batch: _Open) -> None:
        if self._open.get(group) is not batch:
            return
        del self._open[group]
        if batch.timer is not None:
            batch.timer.cancel()
        # A fresh context: the batch serves many requests, so no one request's call tally
        # (a context variable of whoever opened the batch) may count its attempts.
        task = asyncio.get_running_loop().create_task(self._run(batch),
                                                      context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Open) -> None:
        keys = list(batch.waiters)
        url = self._prefix + ",".join(quote(k, safe="") for k in keys)
        if self._observe is not None:
            self._observe(len(keys))
        try:
            with counting("a batch call") as batch.tally:  # it serves many: the breaker is told so
                reply = await self._send(url, batch.headers)
            items = self._index(reply.data)
        except CallError as error:
            for waiters in batch.waiters.values():
                _fail(waiters, error)
            return
        except BaseException:
            _abandon(batch)
            raise
        for key, waiters in batch.waiters.items():
            item = items.get(key, _MISSING)
            if item is _MISSING:
                _fail(waiters, UpstreamStatus(
                    f"upstream '{self.upstream}' returned no item with "
                    f"{self._key_field} '{key}'", 404))
                continue
            first = True
            for waiter in waiters:
                if waiter.done():
                    continue  # its request is gone
                # Duplicates get their own copy: one request's hook must not change another's.
                data = item if first else orjson.loads(orjson.dumps(item))
                first = False
                # `encoded` was the whole list's JSON: not this item's
                waiter.set_result(replace(reply, data=data, batch=len(keys), encoded=None))

    def _index(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, list):
            raise UpstreamBadReply(
                f"upstream '{self.upstream}' batch endpoint did not answer a JSON list", 200)
        out: dict[str, Any] = {}
        field = self._key_field
        for item in data:
            if isinstance(item, dict) and field in item:
                out.setdefault(_text(item[field]), item)
        return out

    async def close(self) -> None:
        """Fail calls still waiting for a batch, stop batches in flight."""
        for batch in list(self._open.values()):
            if batch.timer is not None:
                batch.timer.cancel()
            _abandon(batch)
        self._open.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


_MISSING: Any = object()


def _text(value: Any) -> str:
    """Keys are compared as text: 7 and "7" are the same key."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _fail(waiters: list[asyncio.Future[Reply]], error: CallError) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)


def _abandon(batch: _Open) -> None:
    error = UpstreamUnavailable("the gateway is shutting down; the batch call was not sent")
    for waiters in batch.waiters.values():
        _fail(waiters, error)
