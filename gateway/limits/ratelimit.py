"""Per-client rate limits (the `limits` library's sliding-window counter) and concurrency.

The store is `limits`' memory storage in one process, or its Redis storage (redis-py
asyncio) so every worker and machine counts together. A Redis that fails does not take
the gateway down: the request is let through (fail open), `on_store_error` is called
(a metric) and one log line is written per `STORE_ERROR_LOG_INTERVAL`.

A `Rate` of N per period with a burst B is counted as B requests per B/N periods: the
average is N per period and at most B pass at once (a window under one second is
rounded up to one second, so the burst is then at least the per-second count).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from .headers import Window

log = logging.getLogger("gateway.limits")

MAX_CLIENTS = 100_000  # client keys the memory store tracks; the least recent is dropped
STORE_ERROR_LOG_INTERVAL = 60.0  # seconds between two "store unavailable" log lines
_PERIODS = {"second": 1, "minute": 60, "hour": 3600}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(second|minute|hour)\s*")


@dataclass(frozen=True)
class Rate:
    count: int
    period: float  # seconds
    burst: int | None = None  # None = count

    def item(self, namespace: str) -> RateLimitItemPerSecond:
        burst = self.burst or self.count
        window = max(1, math.ceil(burst * self.period / self.count))
        amount = max(burst, round(self.count * window / self.period))
        return RateLimitItemPerSecond(amount, window, namespace=namespace)


def parse_rate(text: str) -> Rate:
    """`N/second|minute|hour` -> Rate; raises ValueError with a one-line reason."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not N/second, N/minute or N/hour")
    count = int(match[1])
    if count < 1:
        raise ValueError(f"{text!r}: N must be at least 1")
    return Rate(count, _PERIODS[match[2]])


@dataclass(frozen=True)
class Decision:
    allowed: bool
    windows: list[Window]
    reason: str | None = None  # "rate" or "concurrency" when refused


class RateLimiter:
    """Counts hits per (policy, client key) in the configured store."""

    def __init__(self, store: str = "memory", *,
                 on_store_error: Callable[[], None] | None = None,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.storage: Storage
        if store == "memory":
            self.storage = MemoryStorage()
        else:
            # `limits` reads async+unix:// as Valkey's: a unix socket URL is named as redis'.
            scheme = "async+redis+" if store.startswith("unix://") else "async+"
            self.storage = RedisStorage(scheme + store, implementation="redispy",
                                        wrap_exceptions=True)
        self._memory = store == "memory"
        self._limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._on_store_error = on_store_error
        self._max_clients = max_clients
        self._clients: OrderedDict[tuple[str, str], RateLimitItemPerSecond] = OrderedDict()
        self._last_error_log: float | None = None

    @property
    def tracked(self) -> int:
        return len(self._clients)

    async def hit(self, policy: str, rate: Rate, client: str,
                  bucket: str | None = None) -> Window | None:
        """Count one request; its window afterwards (`remaining` < 0 = refused).

        `policy` names the window in the headers; `bucket` (default: the policy) keeps
        the counters apart, e.g. one per endpoint. None when the store is unavailable:
        the request passes (fail open).
        """
        bucket = bucket or policy
        item = rate.item(f"gw-{bucket}")
        try:
            if self._memory:
                await self._track(bucket, client, item)
            allowed = await self._limiter.hit(item, client)
            stats = await self._limiter.get_window_stats(item, client)
        except (StorageError, OSError, ConnectionError) as exc:
            self.store_failed(exc)
            return None
        return Window(policy, item.amount, item.get_expiry(),
                      stats.remaining if allowed else -1,
                      max(0.0, stats.reset_time - time.time()))

    async def _track(self, policy: str, client: str, item: RateLimitItemPerSecond) -> None:
        key = (policy, client)
        if key in self._clients:
            self._clients.move_to_end(key)
            return
        self._clients[key] = item
        while len(self._clients) > self._max_clients:
            (_, old_client), old_item = self._clients.popitem(last=False)
            await self._limiter.clear(old_item, old_client)

    def store_failed(self, exc: BaseException) -> None:
        """Count a store failure; log it, at most once per `STORE_ERROR_LOG_INTERVAL`."""
        if self._on_store_error is not None:
            self._on_store_error()
        now = time.monotonic()
        if self._last_error_log is None or now - self._last_error_log >= STORE_ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.warning("rate-limit store unavailable, letting requests through: %s",
                        " ".join(str(exc).split()) or type(exc).__name__)

    async def close(self) -> None:
        """Stop the memory storage's expiry timer (the library starts one); close Redis."""
        timer = getattr(self.storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()
            await asyncio.wait([timer])
        if self._memory:
            await self.storage.reset()
            return
        # limits' Redis storage has no close of its own: close the redis-py client it made.
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()


class Concurrency:
    """Requests in flight per client key, in this process; an idle key holds no entry."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def acquire(self, client: str) -> bool:
        held = self._in_flight.get(client, 0)
        if held >= self.limit:
            return False
        self._in_flight[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self._in_flight.get(client, 0) - 1
        if held > 0:
            self._in_flight[client] = held
        else:
            self._in_flight.pop(client, None)

    def window(self, client: str) -> Window:
        held = self._in_flight.get(client, 0)
        return Window("concurrency", self.limit, 1, self.limit - held, 1)

    @property
    def tracked(self) -> int:
        return len(self._in_flight)
