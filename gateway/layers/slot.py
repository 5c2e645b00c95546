"""An upstream's `max_connections`: one slot per attempt on the wire."""

from __future__ import annotations

import asyncio
import time

from ..metrics import UpstreamMetrics
from ..pipeline import Call, Next, Reply


class SlotLayer:
    """Waits for a free slot (the wait is the reply's `queued_ms`) and holds it on the wire."""

    __slots__ = ("_slots", "metrics")

    def __init__(self, max_connections: int, metrics: UpstreamMetrics | None) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self.metrics = metrics

    async def __call__(self, call: Call, next: Next) -> Reply:
        slots = self._slots
        queued = None
        if slots.locked():
            waited = time.perf_counter()
            await slots.acquire()
            queued = time.perf_counter() - waited
            if self.metrics is not None:
                self.metrics.queued(queued)
        else:
            await slots.acquire()
        try:
            reply = await next(call)
        finally:
            slots.release()
        if queued is not None:
            reply.queued_ms = queued * 1000.0
        return reply
