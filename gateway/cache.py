"""What an upstream may put in front of its GET calls: a reply cache and a singleflight.

`ReplyCache` keeps successful replies for `cache_ttl` seconds in a bounded LRU (entries
and bytes). It stores the reply's raw JSON bytes, not the parsed object: every hit parses
its own copy, so a `combine` hook that mutates its input can never change what the next
request gets (and parsing is cheaper than a deep copy). `SingleFlight` lets identical
calls that are in flight at the same time share one upstream call.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

SECONDS = 1.0
MiB = 1024 * 1024
# Headers that differ per request but never change what an upstream answers.
PER_REQUEST_HEADERS = frozenset({"x-request-id", "traceparent", "tracestate"})

T = TypeVar("T")
Headers = list[tuple[str, str]]


def vary_key(headers: Headers) -> tuple[tuple[str, str], ...]:
    """The headers that make two calls to the same URL different calls (forwarded ones)."""
    return tuple(h for h in headers if h[0] not in PER_REQUEST_HEADERS)


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    raw: bytes
    expires: float  # monotonic (loop) time


class ReplyCache:
    """A TTL cache with LRU eviction, bounded by entry count and by total body bytes."""

    max_entries = 1024
    max_bytes = 32 * MiB

    def __init__(self, ttl: float, max_entries: int | None = None,
                 max_bytes: int | None = None) -> None:
        self.ttl = ttl
        if max_entries is not None:
            self.max_entries = max_entries
        if max_bytes is not None:
            self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self._drop(key, entry)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, status: int, raw: bytes, now: float) -> None:
        size = len(raw)
        if size > self.max_bytes // 4:  # one huge reply must not flush everything else
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.raw)
        self._entries[key] = Entry(status, raw, now + self.ttl)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.raw)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: Hashable, entry: Entry) -> None:
        del self._entries[key]
        self._bytes -= len(entry.raw)


class SingleFlight(Generic[T]):
    """Identical calls in flight at once share one: the first leads, the others wait.

    If the leader is canceled (its own request ended), a waiter that was not canceled
    takes over and leads a new call, so one request's cancellation never fails another.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, lead: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`lead()`'s result, and whether it was shared (this caller did not lead)."""
        while (flight := self._flights.get(key)) is not None:
            try:
                return await asyncio.shield(flight), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not flight.cancelled() or (task is not None and task.cancelling()):
                    raise  # we were canceled ourselves
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            result = await lead()
        except Exception as exc:
            flight.set_exception(exc)
            flight.exception()  # marks it retrieved: no "never retrieved" log without waiters
            raise
        except BaseException:  # canceled (or the process is stopping): a waiter takes over
            flight.cancel()
            raise
        else:
            flight.set_result(result)
            return result, False
        finally:
            del self._flights[key]
