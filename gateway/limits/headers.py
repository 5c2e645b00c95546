"""`RateLimit-Policy`, `RateLimit` and `Retry-After` values (pure).

The syntax is draft-ietf-httpapi-ratelimit-headers-09's (structured-field lists):
`RateLimit-Policy: "default";q=100;w=60` and `RateLimit: "default";r=42;t=17`, where `q`
is the quota, `w` the window in seconds, `r` what remains and `t` the seconds until the
quota is whole again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One policy's state after a request was counted."""

    policy: str  # the policy's name, a token: "default", "endpoint", "concurrency"
    quota: int
    window: float  # seconds
    remaining: int
    reset: float  # seconds until the quota is whole again (>= 0)


def policy_header(windows: list[Window]) -> str:
    return ", ".join(f'"{w.policy}";q={w.quota};w={_seconds(w.window)}' for w in windows)


def ratelimit_header(windows: list[Window]) -> str:
    return ", ".join(f'"{w.policy}";r={max(w.remaining, 0)};t={_seconds(w.reset)}'
                     for w in windows)


def retry_after(windows: list[Window]) -> int:
    """Seconds a refused client should wait: until every exhausted window has room (>= 1)."""
    exhausted = [w.reset for w in windows if w.remaining <= 0]
    return max(1, _seconds(max(exhausted, default=1.0)))


def headers(windows: list[Window], refused: bool) -> dict[str, str]:
    """The headers a response carries: both fields, and `Retry-After` on a 429."""
    if not windows:
        return {}
    out = {"RateLimit-Policy": policy_header(windows), "RateLimit": ratelimit_header(windows)}
    if refused:
        out["Retry-After"] = str(retry_after(windows))
    return out


def _seconds(value: float) -> int:
    """Whole seconds, rounded up: a client that waits that long is not refused again."""
    return max(0, math.ceil(value - 1e-9))
