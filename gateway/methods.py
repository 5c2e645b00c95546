"""Which methods a path allows: the `Allow` header of a 405, and the answer to `OPTIONS`.

RFC 9110 wants `Allow` on every 405 (section 15.5.6) and lets `OPTIONS` say what a
resource supports (9.3.7). Aggregate routes live in the gateway's router; its own routes
(`/healthz`, `/jobs`, `/_gateway/`...) in Quart's url map, behind the one catch-all rule
that hands every other path to the router. werkzeug's own answer (`allowed_methods`) would
merge the catch-all's methods into every path, so each side is asked for its own here.
"""

from __future__ import annotations

from collections.abc import Iterable

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RoutingException

# app.py's catch-all rules, which send a request to the router.
AGGREGATE_ENDPOINTS = frozenset({"aggregate", "aggregate_root"})
_CANDIDATES = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_ORDER = {m: i for i, m in enumerate((*_CANDIDATES, "OPTIONS"))}


def builtin_methods(url_map: Map, path: str) -> frozenset[str]:
    """The methods the gateway's own HTTP routes (not the catch-all) serve `path` with."""
    adapter = url_map.bind("gateway")
    found = set()
    for method in _CANDIDATES:
        try:
            rule, _ = adapter.match(path, method, return_rule=True)
        except (HTTPException, RoutingException):  # no such route, or not this method
            continue
        if rule.endpoint not in AGGREGATE_ENDPOINTS:
            found.add(method)
    return frozenset(found)


def allow_header(methods: Iterable[str]) -> str:
    """`GET, HEAD, OPTIONS`: the methods served, in a fixed order, OPTIONS always among them."""
    every = {*methods, "OPTIONS"}
    return ", ".join(sorted(every, key=lambda m: (_ORDER.get(m, len(_ORDER)), m)))
