"""Reading one upstream reply's body: capped, on the memory budget, parsed, and let go.

The body streams into a `CappedBody` (body.py) that takes every decoded byte
from the call's budget lease (a declared length all at once, before reading);
compressed bodies are inflated a slice at a time with the event loop running
in between. A body that fails (too large,
over the budget, undecodable, not JSON, broken off) is reported as a
`CallError` that holds no part of it: failures are returned from the
`except` blocks rather than raised there, so the new error carries no
`__context__`, and with it no low-level exception, traceback or frame that
still points at the buffer (orjson's `JSONDecodeError.doc` is a copy of the
whole document). The caller empties the holder when the call fails.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from .body import CappedBody, _BodyTooLarge, _BodyUndecodable
from .budget import Lease, _BudgetExhausted
from .errors import (
    CallError,
    MemoryBudgetExhausted,
    UpstreamBadReply,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .guard import (
    REPLY_PREFIX,
    REPLY_SUFFIX,
    _TooDeep,
    frame_reply,
    loads_framed_reply,
    loads_reply_encoded,
)

# Bodies above this are parsed off the event loop so one big reply cannot stall every request.
THREAD_PARSE_BYTES = 256 * 1024
# Compressed replies decompressed at once, process-wide (the others wait, holding no budget).
INFLATING = 2

# A parsed reply: its value, and its JSON as the envelope writes it when parsing produced it
# (a depth check on the loop that had to encode it; every reply parsed off the loop, where
# it is encoded too so that the envelope only embeds it), else None.
Parsed = tuple[Any, bytes | None]
_FRAME = (REPLY_PREFIX, REPLY_SUFFIX)


class GcPause:
    """The cyclic garbage collector held off while orjson builds a parsed reply.

    A parsed JSON document holds no reference cycle, yet building one allocates tens of
    thousands of containers, each pass of the collector it triggers walks the server's
    whole heap, and most of a big reply's cost was that (BENCHMARKS.md, payload curve:
    ~37 ms per MB with the collector running, ~14 without). Taken only on the event
    loop's thread, for replies parsed there (up to THREAD_PARSE_BYTES): the collector is
    process-wide, so parses overlapping in worker threads would keep it off most of the
    time (and a cancelled call's parse would keep it off after the call), letting the
    loop's cyclic garbage pile up. Nesting counts all the same, and a collector someone
    else turned off stays off.
    """

    __slots__ = ("_depth", "_paused")

    def __init__(self) -> None:
        self._depth = 0
        self._paused = False

    def __enter__(self) -> None:
        if self._depth == 0 and gc.isenabled():  # a collector someone else turned off stays off
            gc.disable()
            self._paused = True
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._paused:
            self._paused = False
            gc.enable()


class BodyReader:
    """The body policy of one upstream: its name (for messages), cap and timeout.

    `inflating` is shared by the process's upstreams: the calls that may decompress at
    the same time past a chunk's first slice. Each loop iteration then runs few slices,
    whatever the number of compressed replies in flight, and a burst of bombs is worked
    off a few at a time instead of every call inflating a little and all of them hitting
    the budget together.
    """

    __slots__ = ("gc_pause", "inflating", "max_bytes", "name", "timeout")

    def __init__(self, name: str, max_bytes: int, timeout: float,
                 inflating: asyncio.Semaphore | None = None,
                 gc_pause: GcPause | None = None) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.inflating = inflating or asyncio.Semaphore(INFLATING)
        self.gc_pause = gc_pause or GcPause()

    async def read(self, status: int, headers: Mapping[str, str], chunks: AsyncIterator[bytes],
                   lease: Lease) -> CappedBody | CallError:
        """The decoded body, or why not: refused as soon as it passes the cap or the budget.

        `headers` are the reply's (httpx's or aiohttp's: looked up by lower-case name);
        `chunks` its raw body, raising httpx's errors.
        """
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return self._too_large(status)
        try:
            # Bodies parsed off the loop come framed from their join: orjson then checks the
            # depth as it parses (guard.loads_framed_reply), with no encode or copy for it.
            body = CappedBody(headers.get("content-encoding") or "", self.max_bytes, lease,
                              _FRAME, THREAD_PARSE_BYTES)
        except _BodyUndecodable as exc:
            return self._undecodable(status, f" ({exc})")
        received = False
        try:
            if declared is not None and declared.isdigit() and not body.compressed:
                body.expect(int(declared))
            await _receive(chunks, body, self.inflating)
            received = True
            return body
        except _BodyTooLarge:
            return self._too_large(status)
        except _BudgetExhausted:
            return MemoryBudgetExhausted(status)
        except _BodyUndecodable as exc:
            return self._undecodable(status, f" ({exc})")
        except httpx.TimeoutException:
            return UpstreamTimeout(f"upstream '{self.name}' timed out after {self.timeout:g}s")
        except httpx.DecodingError:
            return self._undecodable(status, "")
        except httpx.HTTPError as exc:
            return UpstreamUnavailable(
                f"upstream '{self.name}' broke off its reply ({type(exc).__name__})", status)
        finally:
            if not received:  # failed or cancelled: drop what was read at once
                body.discard()

    async def parse_held(self, body: CappedBody, status: int,
                         lease: Lease | None = None) -> Parsed:
        """Parse a body still in its holder (bigger ones off the event loop).

        A call cancelled during a thread parse hands `lease` (the body's bytes) to the
        parse, released once the thread is done with the body rather than at once.
        """
        if body.framed or len(body.value) > THREAD_PARSE_BYTES:
            # The worker reads the holder, so a call cancelled meanwhile leaves no copy here.
            # No GC pause off the loop (GcPause): the collector is the whole process's.
            parse = asyncio.get_running_loop().run_in_executor(None, _parse_body, body)
            try:
                result = await asyncio.shield(parse)
            except asyncio.CancelledError:
                if lease is not None:
                    parse.add_done_callback(_Release(lease.hand_over()))
                raise
        else:
            result = _parse_json(body.value, self.gc_pause)
        if isinstance(result, _NotJson):
            raise self._not_json(result, status)
        return result

    async def parse(self, raw: bytes, status: int) -> Parsed:
        """Parse bytes the cache holds anyway (a hit, or a reply shared by a flight)."""
        if len(raw) > THREAD_PARSE_BYTES:
            result = await asyncio.to_thread(_parse_raw_framed, raw)
        else:
            result = _parse_json(raw, self.gc_pause)
        if isinstance(result, _NotJson):
            raise self._not_json(result, status)
        return result

    def _too_large(self, status: int) -> CallError:
        return UpstreamBadReply(
            f"upstream '{self.name}' sent a body over {self.max_bytes} bytes", status)

    def _undecodable(self, status: int, detail: str) -> CallError:
        return UpstreamBadReply(
            f"upstream '{self.name}' sent a body that cannot be decoded{detail}", status)

    def _not_json(self, result: _NotJson, status: int) -> CallError:
        return UpstreamBadReply(
            f"upstream '{self.name}' answered {status} with {result.problem}", status)


class _Release:
    """A cancelled call's body lease, released when its thread parse is done (on the loop)."""

    __slots__ = ("lease",)

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def __call__(self, parse: asyncio.Future[Parsed | _NotJson]) -> None:
        self.lease.release()
        if not parse.cancelled():
            parse.exception()  # retrieved: nobody awaits it any more


class _NotJson:
    """Why a body did not parse: returned, not raised, so no exception holds the body."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _parse_json(raw: bytes, gc_pause: GcPause) -> Parsed | _NotJson:
    """Parse `raw` on the event loop's thread, with the collector paused (GcPause)."""
    if not raw or raw.isspace():  # without `strip()`, which would copy the whole body
        return None, None
    try:
        with gc_pause:
            return loads_reply_encoded(raw)
    except orjson.JSONDecodeError:  # its `doc` is a copy of the whole body: dropped here
        return _NotJson("a body that is not JSON")
    except _TooDeep as exc:  # the envelope could not carry it (guard.py)
        return _NotJson(f"JSON {exc}")


def _parse_framed(framed: bytes) -> Parsed | _NotJson:
    """Parse a framed body in a worker thread, and encode it for the envelope there too.

    A framed parse costs ~0.1 ms more than a plain one (the frame's lists), but needs no
    count, no encode and no copy for the depth check: only big bodies come this way.
    """
    try:
        return loads_framed_reply(framed, True)
    except orjson.JSONDecodeError:  # its `doc` is a copy of the whole body: dropped here
        return _NotJson("a body that is not JSON")
    except _TooDeep as exc:  # the envelope could not carry it (guard.py)
        return _NotJson(f"JSON {exc}")


def _parse_body(body: CappedBody) -> Parsed | _NotJson:
    return _parse_framed(body.value if body.framed else frame_reply(body.value))


def _parse_raw_framed(raw: bytes) -> Parsed | _NotJson:
    return _parse_framed(frame_reply(raw))


async def _receive(chunks: AsyncIterator[bytes], body: CappedBody,
                   inflating: asyncio.Semaphore) -> None:
    """Feed the raw chunks to `body`, yielding to the loop between decoded slices."""
    async for chunk in chunks:
        if not body.compressed:
            body.feed(chunk)
            continue
        if body.push(chunk):  # the first slice is free: small replies never wait
            async with inflating:  # held per chunk: an upstream that drips holds no slot
                pending = True
                while pending:
                    await asyncio.sleep(0)  # the loop runs between any two slices
                    pending = body.more()
    body.finish()
