"""W3C Trace Context: the client's `traceparent` and `tracestate` pass through to upstreams.

The gateway does not start spans of its own; it forwards a well-formed `traceparent`
(and the `tracestate` that goes with it) so that the upstreams' spans join the client's
trace. A malformed `traceparent` is dropped together with its `tracestate`, as the
spec asks of a participant that cannot parse it.
"""

from __future__ import annotations

from .context import HeaderMap

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
_MAX_STATE = 512  # the spec's limit on what a participant must propagate


def valid_traceparent(value: str) -> bool:
    """`version-traceid-parentid-flags`, lower-case hex, all-zero ids refused."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return False
    version = value[:2]
    if version == "ff" or (len(value) > 55 and (version == "00" or value[55] != "-")):
        return False
    if not _HEX.issuperset(value[:2] + value[3:35] + value[36:52] + value[53:55]):
        return False
    return value[3:35] != _ZERO_TRACE and value[36:52] != _ZERO_PARENT


def trace_headers(incoming: HeaderMap) -> list[tuple[str, str]]:
    """The trace headers to send upstream for this request (none if the client sent none)."""
    parent = incoming.get("traceparent")
    if parent is None or not valid_traceparent(parent):
        return []
    out = [("traceparent", parent)]
    state = incoming.get("tracestate")
    if state and len(state) <= _MAX_STATE:
        out.append(("tracestate", state))
    return out
