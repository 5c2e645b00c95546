"""Requests in flight per client key across every process sharing one Redis.

`limits.concurrency` with `limits.store = "redis://..."`: each request holds a lease, a
member of the client's sorted set scored with its expiry (Redis's own clock, so machines
need not agree on the time). Taking one (a Lua script, atomic) drops the expired leases
first, so a process killed mid-request costs its clients their slot only until the lease
expires (the request's deadline plus `LEASE_SLACK`); the set's TTL is only ever lengthened,
so a short lease cannot cut a longer one short. Like the rate counters, a Redis
that does not answer lets the request through (fail open) and calls `on_store_error`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from .headers import Window

try:  # the `redis` extra; config refuses a redis store without it
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - the extra is installed wherever the store is used
    aioredis = None  # type: ignore[assignment]
    RedisError = OSError  # type: ignore[assignment,misc]

LEASE_SLACK = 10.0  # seconds a lease outlives its request's deadline
RELEASE_TIMEOUT = 5.0  # seconds `close()` waits for the releases under way
KEY_PREFIX = "gw-concurrency:"
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
local ttl = math.ceil(tonumber(ARGV[2]) * 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""


class RedisConcurrency:
    """`Concurrency`'s shape, awaited: `acquire` gives a lease id (or None when full)."""

    def __init__(self, url: str, limit: int,
                 on_store_error: Callable[[BaseException], None] | None = None) -> None:
        if aioredis is None:
            raise RuntimeError("a redis limits store needs the redis extra")
        self.limit = limit
        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=2.0,
                                                   socket_connect_timeout=2.0)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._on_store_error = on_store_error
        self._releasing: set[asyncio.Task[None]] = set()

    async def acquire(self, client: str, lease: float) -> str | bool:
        """A lease id, False when the client is at its limit, True when Redis failed (open)."""
        member = secrets.token_hex(8)
        try:
            taken = await self._acquire(keys=[KEY_PREFIX + client],
                                        args=[self.limit, lease + LEASE_SLACK, member])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return True
        return member if taken else False

    def release(self, client: str, member: str) -> None:
        """Give a lease back; called where nothing can await (a task's done-callback), so
        the `ZREM` runs in a task this object owns, awaited by `settle()` and `close()`."""
        task = asyncio.get_running_loop().create_task(self._release(client, member))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, client: str, member: str) -> None:
        try:
            await self._redis.zrem(KEY_PREFIX + client, member)
        except (RedisError, OSError) as exc:  # the lease expires on its own
            self._failed(exc)

    async def settle(self) -> None:
        """Wait for the releases under way."""
        if self._releasing:
            await asyncio.wait(list(self._releasing), timeout=RELEASE_TIMEOUT)

    async def in_flight(self, client: str) -> int:
        count: int = await self._redis.zcard(KEY_PREFIX + client)
        return count

    def window(self, client: str) -> Window:
        return Window("concurrency", self.limit, 1, 0, 1)  # asked only when it is full

    def _failed(self, exc: BaseException) -> None:
        if self._on_store_error is not None:
            self._on_store_error(exc)

    async def close(self) -> None:
        await self.settle()
        for task in list(self._releasing):  # Redis hangs: the leases expire on their own
            task.cancel()
        await self._redis.aclose()
