"""The outermost layer: every call counted and timed in the metrics, by outcome."""

from __future__ import annotations

import time

from ..errors import CallError
from ..metrics import UpstreamMetrics, outcome
from ..pipeline import Call, Next, Reply


class MetricsLayer:
    """`gateway_upstream_calls` and their seconds, per outcome (cached, ok, timeout...)."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: UpstreamMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, call: Call, next: Next) -> Reply:
        started = time.perf_counter()
        try:
            reply = await next(call)
        except CallError as error:
            self.metrics.call(outcome(error), time.perf_counter() - started)
            raise
        self.metrics.call("cached" if reply.cached else "ok", time.perf_counter() - started)
        return reply
