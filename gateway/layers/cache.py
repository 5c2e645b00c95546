"""The reply cache and the singleflight in front of an upstream's GETs (`cache_ttl`).

Both layers let through a call that is not `cacheable` (not a GET, or a request
that asked for no cache). Each request parses its own copy of cached or shared
bytes, so a hook mutating its data cannot touch another request's.
"""

from __future__ import annotations

import asyncio

from ..cache import ReplyCache, SingleFlight, vary_key
from ..metrics import UpstreamMetrics
from ..pipeline import Call, Next, Reply
from ..reader import BodyReader

Key = tuple[str, tuple[tuple[str, str], ...]]


def _key(call: Call) -> Key:
    if call.key is None:
        call.key = (call.target, vary_key(call.headers))
    return call.key


class CacheLayer:
    """A fresh cached reply answers at once; a reply fetched below is kept `cache_ttl`."""

    __slots__ = ("cache", "metrics", "reader")

    def __init__(self, cache: ReplyCache, reader: BodyReader,
                 metrics: UpstreamMetrics | None) -> None:
        self.cache = cache
        self.reader = reader
        self.metrics = metrics

    async def __call__(self, call: Call, next: Next) -> Reply:
        if not call.cacheable:
            return await next(call)
        key = _key(call)
        entry = self.cache.get(key, asyncio.get_running_loop().time())
        if entry is not None:
            if self.metrics is not None:
                self.metrics.cache(True)
            data, encoded = await self.reader.parse(entry.raw, entry.status)
            return Reply(entry.status, data, encoded=encoded,
                         attempts=0, cached=True)
        if self.metrics is not None:
            self.metrics.cache(False)
        reply = await next(call)
        if not reply.cached:  # a shared reply was stored by the call that led its flight
            self.cache.put(key, reply.status, call.raw, asyncio.get_running_loop().time())
        return reply


class SingleFlightLayer:
    """Identical GETs in flight at once share one upstream call (cache.SingleFlight)."""

    __slots__ = ("_flights", "metrics", "reader")

    def __init__(self, reader: BodyReader, metrics: UpstreamMetrics | None) -> None:
        self.reader = reader
        self.metrics = metrics
        self._flights: SingleFlight[tuple[Reply, bytes]] = SingleFlight()

    async def __call__(self, call: Call, next: Next) -> Reply:
        if not call.cacheable:
            return await next(call)

        async def lead() -> tuple[Reply, bytes]:
            reply = await next(call)
            return reply, call.raw

        (reply, raw), shared = await self._flights.run(_key(call), lead)
        if not shared:
            return reply
        if self.metrics is not None:
            self.metrics.shared()
        call.raw = raw
        data, encoded = await self.reader.parse(raw, reply.status)
        return Reply(reply.status, data, encoded=encoded, attempts=0,
                     cached=True)
