"""The ingress's limit check (SPEC 9): the client key, its rate, its requests in flight.

Runs after authentication, for HTTP requests, `/ws` messages and the dashboard's run API
(a job's replay was counted when it was submitted). The client key is
`limits.key` of the caller: its address (`ip`: the entry point's `door.peer`, which
`proxies.ClientAddress` already made the real client behind a trusted proxy), its token's
`sub`, its API key's client name, or a header's value; a caller without that value is
counted by address. It is set as `door.extras["client"]` (`{client}`) even when no limit
is configured.

Over the rate (the endpoint's own `rate`, else `limits.rate`) or the concurrency: 429
with `Retry-After`, `RateLimit-Policy` and `RateLimit`; otherwise the `RateLimit` fields
go to `door.response_headers` for a 2xx answer. A concurrency slot is held until the
entry point closes the door: when the HTTP answer or the run is made, when a `/ws`
message's result is sent. A socket's messages count as its handshake's client. The slot
is in this process with the memory store, a lease in Redis (`shared.py`) with a redis one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..auth.check import access_of
from ..auth.identity import ANONYMOUS, Identity
from ..config.auth import LimitsSettings
from ..context import CLIENT, IDENTITY
from ..door import HANDSHAKE, HTTP, JOB, RUN, SOCKET, Door, Refusal
from .headers import Window, headers
from .ratelimit import Concurrency

if TYPE_CHECKING:
    from ..runtime import Runtime

MAX_KEY_CHARS = 128  # a longer header value is counted by its hash
_HELD = (HTTP, RUN, SOCKET)  # entry points that close their door when the answer is out


def client_key(settings: LimitsSettings, door: Door, identity: Identity) -> tuple[str, str]:
    """(the counters' key, the `{client}` value) for one message (pure)."""
    key = settings.key
    value: str | None = None
    if (key, identity.kind) in (("jwt.sub", "jwt"), ("api_key", "api_key")):
        value = identity.client
    elif key.startswith("header."):
        # Lower-case: the `/ws` and run API doors carry plain dicts of lower-case names.
        value = door.headers.get(key[len("header."):].lower()) or None
        if value is not None and len(value) > MAX_KEY_CHARS:
            value = "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()
    if value is not None:
        return f"{key}:{value}", value
    address = door.peer or "unknown"
    return f"ip:{address}", address


class LimitCheck:
    """Rates (the runtime's `RateLimiter`) and concurrency per client key."""

    def __init__(self, settings: Callable[[], LimitsSettings],
                 runtime: Callable[[], Runtime]) -> None:
        self._settings = settings
        self._runtime = runtime

    async def __call__(self, door: Door) -> Refusal | None:
        if door.kind in (JOB, HANDSHAKE):
            return None
        settings = self._settings()
        identity = door.extras.get(IDENTITY, ANONYMOUS)
        counted, shown = client_key(settings, door, identity)
        door.extras[CLIENT] = shown
        own = access_of(door).rate
        if not settings.enabled and own is None:  # an endpoint's own rate needs no [limits]
            return None
        try:
            runtime = self._runtime()
        except RuntimeError:
            return Refusal(503, "the gateway is not serving", {"Retry-After": "5"})
        route = getattr(door.target, "route", "unmatched")
        windows: list[Window] = []
        rate = own or settings.rate
        if rate is not None:
            method = getattr(door.target, "method", door.method)
            bucket = f"endpoint {method} {route}" if own is not None else "default"
            window = await runtime.limiter.hit("endpoint" if own else "default", rate,
                                               counted, bucket=bucket)
            if window is not None:
                windows.append(window)
                if window.remaining < 0:
                    runtime.metrics.rate_limited(route)
                    return Refusal(429, f"rate limit exceeded for this client "
                                        f"({_rate_text(rate.count, rate.period)})",
                                   headers(windows, refused=True))
        concurrency = runtime.concurrency
        if concurrency is not None and door.kind in _HELD:
            if isinstance(concurrency, Concurrency):
                held: str | bool = concurrency.acquire(counted)
                if held:
                    door.on_close(lambda: concurrency.release(counted))
            else:  # a lease in Redis, for as long as the request may run
                deadline = (getattr(door.target, "deadline", None)
                            or runtime.config.gateway.deadline)
                held = await concurrency.acquire(counted, deadline)
                if isinstance(held, str):
                    lease = held
                    door.on_close(lambda: concurrency.release(counted, lease))
            if held is False:
                runtime.metrics.rate_limited(route)
                return Refusal(429, f"too many requests in flight for this client "
                                    f"(max {concurrency.limit})",
                               headers([*windows, concurrency.window(counted)], refused=True))
        if windows:
            door.response_headers.update(headers(windows, refused=False))
        return None


def _rate_text(count: int, period: float) -> str:
    unit = {1: "second", 60: "minute", 3600: "hour"}.get(int(period), f"{period:g}s")
    return f"{count} per {unit}"
