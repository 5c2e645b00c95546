"""What a request must be before the app sees it, and how deep JSON may nest.

`FramingGuard` is a raw ASGI middleware in front of the Quart app. It refuses,
with 400 and `Connection: close`, what h11 lets through but a gateway must
not serve:

- both `Content-Length` and `Transfer-Encoding` (RFC 9112 section 6.1: the
  classic request-smuggling shape; the connection is closed so no byte of
  an ambiguous body can be read as a next request);
- a header value holding CR, LF or NUL (h11 already refuses these on the
  wire; other servers and in-process clients may not), or a path holding
  them once percent-decoded (`/items/a%0d%0a`: 400, before any route value);
- a head larger than `MAX_HEADER_BYTES` (431) or a target longer than
  `MAX_TARGET_BYTES` (414), with the envelope. h11's `h11_max_incomplete_size`
  only bounds a head that arrives in pieces (one 60 KiB packet passes it), and
  answers a bare 431; so it is set to `MAX_HEAD_BYTES`, above both limits: the
  heads refused here reach the guard, and memory per connection stays bounded.

`too_deep` bounds JSON nesting. orjson refuses to parse past 1024 levels
and to encode past 254, so a deeper value would turn into a 500 wherever
the gateway serializes it; refusing it at the door (request bodies, 400)
and at the upstream boundary (replies, 502) keeps every later `dumps` safe.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from . import envelope
from .errors import RequestError
from .result import refusal, request_id

MAX_REQUEST_DEPTH = 64  # levels of nested objects/arrays in a request body
MAX_REPLY_DEPTH = 128  # ... in an upstream reply (the envelope adds a few levels on top)

MAX_HEADER_BYTES = 16 * 1024  # names + values
MAX_TARGET_BYTES = 8 * 1024  # path + query string
# hypercorn.toml's h11_max_incomplete_size: the server's hard cap on a head in memory. Above
# both limits, so that a head the guard refuses reaches it and is answered with the envelope.
MAX_HEAD_BYTES = 64 * 1024

_ORJSON_MAX_DEPTH = 254  # the deepest value orjson.dumps encodes (documented limit: 255)
_CONTROL = re.compile(rb"[\r\n\x00]")
_CONTROL_TEXT = re.compile(r"[\r\n\x00]")


def too_deep(value: Any, limit: int, raw: bytes | None = None) -> bool:
    """True if `value` (parsed from `raw`, if given) nests more than `limit` levels deep.

    A document with at most `limit` brackets cannot, which settles most at once.
    Otherwise: orjson stops encoding at a fixed depth, so wrapped in `254 - limit`
    lists the value encodes only if it is at most `limit` deep. That is the whole
    check, at C speed (about half the cost of parsing), with no Python recursion.
    """
    return _checked(value, limit, raw) is _DEEP


_DEEP = b"deep"  # a sentinel: _checked found the value too deep


def _checked(value: Any, limit: int, raw: bytes | None) -> bytes | None:
    """`_DEEP` if `value` nests more than `limit` levels; else its JSON if the check had to
    encode it (the same bytes `envelope.dumps` would write), else None."""
    if not isinstance(value, (dict, list)):
        return None
    if raw is not None and _brackets_within(raw, limit):
        return None
    wrappers = _ORJSON_MAX_DEPTH - limit
    wrapped = value
    for _ in range(wrappers):
        wrapped = [wrapped]
    try:
        encoded = orjson.dumps(wrapped, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:  # parsed JSON fails only this way; be sure
        return _DEEP if "recursion" in str(exc).lower() else None
    return encoded[wrappers:-wrappers]


def _brackets_within(raw: bytes, limit: int) -> bool:
    """Whether `raw` holds at most `limit` brackets, counted in growing windows.

    A big reply of many objects passes `limit` within its first window, so its bytes are
    not scanned twice more for nothing (a full count cost ~5% of a parse per MB); a reply
    with few brackets is counted to its end, as before.
    """
    total, start, step, size = 0, 0, 4096, len(raw)
    while start < size:
        end = start + step
        total += raw.count(b"[", start, end) + raw.count(b"{", start, end)
        if total > limit:
            return False
        start, step = end, 2 * step
    return True


class _TooDeep(ValueError):
    """A JSON document nests deeper than the limit it was read with."""


def loads_reply(raw: bytes) -> Any:
    """An upstream reply parsed; `_TooDeep` past `MAX_REPLY_DEPTH` (a 502 for the call)."""
    return loads_reply_encoded(raw)[0]


def loads_reply_encoded(raw: bytes) -> tuple[Any, bytes | None]:
    """An upstream reply parsed, and its JSON as `envelope.dumps` writes it when the depth
    check had to encode it anyway (big replies: the envelope then embeds these bytes
    instead of encoding the value a second time); `_TooDeep` past `MAX_REPLY_DEPTH` (a 502
    for the call)."""
    value = orjson.loads(raw)
    encoded = _checked(value, MAX_REPLY_DEPTH, raw)
    if encoded is _DEEP:
        raise _TooDeep(f"nested deeper than {MAX_REPLY_DEPTH} levels")
    return value, encoded


def _loads_max_depth() -> int:
    """The deepest nesting `orjson.loads` accepts (1024 in orjson 3), found once at import."""
    low, high = 1, 1 << 16  # parses, does not
    while high - low > 1:
        mid = (low + high) // 2
        try:
            orjson.loads(b"[" * mid + b"]" * mid)
        except orjson.JSONDecodeError:
            high = mid
        else:
            low = mid
    return low


# A reply is read inside this many lists, so that orjson.loads itself refuses it past
# MAX_REPLY_DEPTH: the depth check then costs no encode and no scan (`loads_framed_reply`).
REPLY_FRAME = _loads_max_depth() - MAX_REPLY_DEPTH
REPLY_PREFIX = b"[" * REPLY_FRAME
REPLY_SUFFIX = b"]" * REPLY_FRAME
_SPACE = re.compile(rb"[ \t\n\r\x0b\x0c]*")  # what bytes.isspace() counts


def frame_reply(raw: bytes) -> bytes:
    """`raw` inside the reply frame (a copy; bodies read from the wire come framed)."""
    return b"".join((REPLY_PREFIX, raw, REPLY_SUFFIX))


def loads_framed_reply(framed: bytes, encode: bool) -> tuple[Any, bytes | None]:
    """A reply parsed from its framed bytes (`REPLY_PREFIX + raw + REPLY_SUFFIX`).

    Exactly what `loads_reply_encoded(raw)` accepts and refuses, with the same errors:
    `orjson.JSONDecodeError` for what is not one JSON document, `_TooDeep` past
    `MAX_REPLY_DEPTH`; (None, None) for a blank body. The value comes out of the frame
    only if every level of it is a list of one item, which holds only when `raw` is one
    JSON value (`1],[2` inside the frame parses, but not as a chain of single items).
    `encode`: also return the value's JSON as `envelope.dumps` writes it (big replies,
    parsed off the event loop: the envelope then embeds it without encoding it there).
    """
    end = len(framed) - REPLY_FRAME
    blank = _SPACE.match(framed, REPLY_FRAME, end)
    if blank is not None and blank.end() == end:
        return None, None
    try:
        value = orjson.loads(framed)
    except orjson.JSONDecodeError as exc:
        if "depth" not in str(exc):
            raise
        orjson.loads(memoryview(framed)[REPLY_FRAME:end])  # raises if not JSON either
        raise _TooDeep(f"nested deeper than {MAX_REPLY_DEPTH} levels") from None
    for _ in range(REPLY_FRAME):
        if type(value) is not list or len(value) != 1:
            raise orjson.JSONDecodeError("not one JSON document", "", 0)
        value = value[0]
    if encode and isinstance(value, (dict, list)):
        return value, orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    return value, None


def bounded_body(value: Any, raw: bytes | None = None) -> Any:
    """A parsed request body, or a 400 if it nests deeper than `MAX_REQUEST_DEPTH`."""
    if too_deep(value, MAX_REQUEST_DEPTH, raw):
        raise RequestError(f"request body is nested deeper than {MAX_REQUEST_DEPTH} levels")
    return value


def framing_problem(headers: Iterable[tuple[bytes, bytes]], target: int = 0,
                    path: str = "") -> tuple[int, str] | None:
    """Why a request must be refused before routing, as (status, reason), or None.

    `path` is the percent-decoded path: `%0d%0a` in it would reach route values (and, as
    werkzeug's `path` converter stops at a newline, turn into a confusing 404).
    """
    if target > MAX_TARGET_BYTES:
        return 414, f"request target is longer than {MAX_TARGET_BYTES} bytes"
    if _CONTROL_TEXT.search(path) is not None:
        return 400, "request path holds CR, LF or NUL (percent-decoded)"
    length = chunked = False
    size = 0
    for name, value in headers:  # a few microseconds for a browser's dozen headers
        size += len(name) + len(value) + 4
        if _CONTROL.search(value) is not None:
            return 400, f"header {name.decode('latin-1')!r} holds CR, LF or NUL"
        if len(name) in (14, 17):  # only these two names matter here
            lower = name.lower()
            length = length or lower == b"content-length"
            chunked = chunked or lower == b"transfer-encoding"
    if size > MAX_HEADER_BYTES:
        return 431, f"request headers are larger than {MAX_HEADER_BYTES} bytes"
    if length and chunked:
        return 400, "a request cannot have both Content-Length and Transfer-Encoding"
    return None


class FramingGuard:
    """ASGI middleware: 4xx + `Connection: close` for bad framing, header bytes or sizes."""

    def __init__(self, app: Any, strategy: Callable[[], str]) -> None:
        self.app = app
        self.strategy = strategy  # the configured default, for the error envelope's meta

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if scope["type"] in ("http", "websocket"):
            query = len(scope["query_string"])
            target = len(scope.get("raw_path") or b"") + (query + 1 if query else 0)  # `?`
            problem = framing_problem(scope["headers"], target, scope["path"])
            if problem is not None:
                if scope["type"] == "http":
                    await self._refuse(*problem, scope, send)
                else:
                    await send({"type": "websocket.close", "code": 1002, "reason": ""})
                return
        await self.app(scope, receive, send)

    async def _refuse(self, status: int, problem: str, scope: Scope,
                      send: ASGISendCallable) -> None:
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}  # type: ignore[typeddict-item]
        refused = refusal(status, problem, request_id=request_id(headers),
                          strategy=self.strategy(), started=started)
        body = envelope.dumps(refused.body)
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                        (b"x-request-id", refused.headers["X-Request-ID"].encode())],
            "trailers": False,
        })
        await send({"type": "http.response.body", "body": body, "more_body": False})
