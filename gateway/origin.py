"""Which browser origins may call the gateway: one policy for HTTP (CORS) and `/ws` (pure).

`gateway.cors_origins` lists them (`"*"` for any). Over HTTP an allowed
origin gets the CORS headers and its preflights answered; any other gets no
CORS headers, so its browser keeps the reply from the page. A WebSocket has no
CORS: the browser sends `Origin` and the server decides, so `/ws` refuses a
handshake from an origin outside the list (403), and with no list at all
accepts any; a page served by the gateway itself (same host) is always allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from .context import HeaderMap

# What a page from an allowed origin may read of a reply (timings, ids, job links, limits).
EXPOSED = ("Server-Timing, X-Processing-Time-Ms, X-Request-ID, Location, Retry-After, "
           "Preference-Applied, RateLimit, RateLimit-Policy, WWW-Authenticate")
PREFLIGHT_METHODS = "GET, POST, PUT, PATCH, DELETE"
PREFLIGHT_MAX_AGE = 600  # seconds a browser may keep a preflight's answer


class OriginPolicy:
    """`gateway.cors_origins`, asked by every entry point that a browser can reach."""

    __slots__ = ("_any", "_origins")

    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(origins)
        self._any = "*" in self._origins

    @property
    def enabled(self) -> bool:
        """True when some origin is listed: only then do HTTP replies carry CORS headers."""
        return bool(self._origins)

    def allows(self, origin: str) -> bool:
        """An origin listed (or `*`): CORS headers and preflights for it."""
        return self._any or origin in self._origins

    def allows_socket(self, origin: str, headers: HeaderMap) -> bool:
        """A `/ws` handshake from `origin`: any without a list; else listed or same host."""
        if not self._origins or self.allows(origin):
            return True
        host = headers.get("host")  # same-origin pages are always allowed
        return host is not None and urlsplit(origin).netloc == host

    def is_preflight(self, method: str, headers: HeaderMap) -> bool:
        """A CORS preflight from an allowed origin; any other OPTIONS is routed (405)."""
        origin = headers.get("origin")
        return (method == "OPTIONS" and origin is not None
                and "access-control-request-method" in headers and self.allows(origin))

    def preflight_headers(self, headers: HeaderMap) -> dict[str, str]:
        return {
            "Access-Control-Allow-Methods": PREFLIGHT_METHODS,
            "Access-Control-Allow-Headers": headers.get("access-control-request-headers",
                                                        "content-type"),
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        }

    def reply_headers(self, headers: HeaderMap) -> dict[str, str]:
        """The CORS headers a reply to this request carries (none for other origins)."""
        origin = headers.get("origin")
        if origin is None or not self.allows(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": EXPOSED,
                "Timing-Allow-Origin": origin}
