"""At the door, through a real Hypercorn with the shipped hypercorn.toml: sizes, path values
and methods, spoken as raw bytes where the server's own parser is what is tested.

Every refusal is asserted at a real recording upstream too: nothing was sent.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypercorn.config import Config as HypercornConfig
from support import (
    REPO,
    HypercornFactory,
    LiveServer,
    RecordingServer,
    UpstreamFactory,
    call,
    echo,
    endpoint,
    make_config,
)

from gateway.guard import MAX_HEAD_BYTES, MAX_HEADER_BYTES, MAX_TARGET_BYTES

SHIPPED = HypercornConfig.from_toml(REPO / "hypercorn.toml")


def _config(up: RecordingServer) -> dict[str, Any]:
    return make_config(
        {"up": {"url": up, "forward_headers": ["x-dir"]}},
        endpoint("/items/<name>", call("item", "up", "/items/{name}")),
        endpoint("/files/<path:rest>", call("file", "up", "/files/{rest}")),
        endpoint("/q", call("q", "up", "/q/{query.p}")),
        endpoint("/h", call("h", "up", "/h/{header.x-dir}")),
        endpoint("/b", call("b", "up", "/b/{body.dir}", method="POST"), method="POST"),
    )


async def _exchange(server: LiveServer, *pieces: bytes, pause: float = 0.2,
                    wait: float = 5.0) -> tuple[bytes, bool]:
    """Send `pieces` with a pause between them (so they arrive apart), then read until the
    server closes or `wait` passes: (bytes received, closed by the server)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    received = b""
    closed = False
    try:
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                received += chunk
            closed = True
    except TimeoutError:
        pass
    except ConnectionError:  # the server closed while we still wrote: reset
        closed = True
        received += await _rest(reader)
    writer.close()
    return received, closed


async def _rest(reader: asyncio.StreamReader) -> bytes:
    try:
        async with asyncio.timeout(1):
            return await reader.read(65536)
    except (TimeoutError, ConnectionError):
        return b""


def _response(received: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _assert_envelope(received: bytes, status: int, mentions: str) -> dict[str, str]:
    got, headers, body = _response(received)
    assert got == status, received[:300]
    envelope = orjson.loads(body)
    assert envelope["data"] is None
    assert envelope["meta"]["complete"] is False
    assert mentions in envelope["error"]
    assert "\n" not in envelope["error"]
    assert headers["content-type"] == "application/json"
    return headers


# -- sizes: 414 and 431 with the envelope -----------------------------------------------------


def test_the_shipped_head_cap_lets_every_refused_head_reach_the_guard() -> None:
    assert SHIPPED.h11_max_incomplete_size == MAX_HEAD_BYTES
    assert MAX_HEAD_BYTES >= 2 * (MAX_HEADER_BYTES + MAX_TARGET_BYTES)


def _target(length: int) -> bytes:
    """A request line whose target (path, `?` and query) is exactly `length` bytes."""
    path = b"/items/a?q="
    return b"GET " + path + b"q" * (length - len(path)) + b" HTTP/1.1\r\n"


OVERSIZE = {  # name: (pieces sent with a pause between them, status, error mentions)
    "8k+1-target": ((_target(MAX_TARGET_BYTES + 1) + b"Host: gw\r\n\r\n",), 414,
                    "request target"),
    "20k-target-then-rest": ((_target(20_000), b"Host: gw\r\n\r\n"), 414, "request target"),
    "40k-target-in-two": ((_target(40_000)[:30_000],
                           _target(40_000)[30_000:] + b"Host: gw\r\n\r\n"), 414,
                          "request target"),
    "16k+-header": ((b"GET /items/a HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * MAX_HEADER_BYTES
                     + b"\r\n\r\n",), 431, "request headers"),
    "20k-header-then-end": ((b"GET /items/a HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20_000,
                             b"\r\n\r\n"), 431, "request headers"),
    "3000-headers-in-three": ((b"GET /items/a HTTP/1.1\r\nHost: gw\r\n" + b"X-Many: a\r\n" * 1_000,
                               b"X-Many: a\r\n" * 1_000, b"X-Many: a\r\n" * 1_000 + b"\r\n"),
                              431, "request headers"),
}


async def test_oversize_target_and_headers_are_answered_with_the_envelope_and_close(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    for name, (pieces, status, mentions) in OVERSIZE.items():
        received, closed = await _exchange(server, *pieces)
        assert closed, (name, received[:300])
        headers = _assert_envelope(received, status, mentions)
        assert headers["connection"] == "close", name
        assert received.count(b"HTTP/1.1 ") == 1, name
    assert up.requests == 0
    at_limit = _target(MAX_TARGET_BYTES) + b"Host: gw\r\nConnection: close\r\n\r\n"
    received, _ = await _exchange(server, at_limit)
    assert _response(received)[0] == 200, received[:300]
    assert up.requests == 1


async def test_a_head_past_the_hard_cap_is_cut_off_before_it_is_all_read(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    """Past `h11_max_incomplete_size` Hypercorn refuses a head still arriving: memory per
    connection stays bounded, at the price of a bare 431 (no envelope) at that size."""
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /items/a HTTP/1.1\r\nHost: gw\r\nX-Big: ")
    sent = 0
    try:
        while sent < 16 * MAX_HEAD_BYTES:  # the client would go on for 1 MiB
            writer.write(b"a" * 8192)
            await writer.drain()
            sent += 8192
            await asyncio.sleep(0.005)
    except ConnectionError:
        pass
    received = await _rest(reader)
    writer.close()
    assert sent < 16 * MAX_HEAD_BYTES  # the server hung up long before the end
    if received:  # the 431 may be lost to the reset that our next write caused
        assert _response(received)[0] == 431, received[:300]
    assert up.requests == 0


def _rss(pid: int) -> int:
    """VmRSS of `pid`, in bytes (`gateway serve` with one worker serves in that process)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")) * 1024


async def test_many_clients_sending_huge_heads_cost_at_most_the_cap_each(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    """32 connections each try to send 4 MiB of head and never finish it: the server holds
    at most the cap (plus one read) of each, then drops it. Measured: about 15 MiB with the
    shipped 64 KiB cap, over 50 MiB with a 16 MiB one (the server reads slower than this)."""
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    pid = server.process.pid
    chunk = b"a" * 65_536

    async def flood() -> asyncio.StreamWriter:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /items/a HTTP/1.1\r\nHost: gw\r\nX-Big: ")
            for _ in range(64):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        return writer

    async def wave() -> int:
        async with asyncio.timeout(60):
            held = await asyncio.gather(*(flood() for _ in range(32)))
        await asyncio.sleep(0.3)  # the server has read what it will read
        rss = _rss(pid)
        for writer in held:
            writer.close()
        return rss

    before = _rss(pid)
    grown = await wave() - before
    assert grown < 32 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"
    assert up.requests == 0


# -- path values: CR/LF/NUL and dot segments --------------------------------------------------


async def test_a_route_value_decoding_to_cr_lf_or_nul_is_400_with_the_envelope(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    for target in ("/items/a%0d%0ab", "/items/a%0A", "/items/a%00", "/files/x/%0d%0a/y",
                   "/files/%0aGET%20/admin"):
        received, _ = await _exchange(server, _request("GET", target))
        _assert_envelope(received, 400, "CR, LF or NUL")
    assert up.requests == 0


def _request(method: str, target: str, headers: dict[str, str] | None = None,
             body: Any = None) -> bytes:
    """Raw request bytes: the target exactly as given (an HTTP client would normalise
    `/a/../b` itself), `Connection: close` so the exchange ends with the response."""
    raw = b"" if body is None else orjson.dumps(body)
    lines = [f"{method} {target} HTTP/1.1", "Host: gw", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(raw)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


DOT_SEGMENTS = [  # (method, target, headers, body)
    ("GET", "/files/a/../../admin", None, None),
    ("GET", "/files/a/%2e%2e/%2E%2E/admin", None, None),  # decoded by the server
    ("GET", "/files/a%2F..%2Fadmin", None, None),
    ("GET", "/files/./admin", None, None),
    ("GET", "/files/a/..", None, None),
    ("GET", "/items/..", None, None),
    ("GET", "/q?p=../../admin", None, None),
    ("GET", "/q?p=a/./b", None, None),
    ("GET", "/q?p=..%2Fadmin", None, None),
    ("GET", "/h", {"X-Dir": "../admin"}, None),
    ("POST", "/b", None, {"dir": "x/../../admin"}),
    ("POST", "/b", None, {"dir": ".."}),
]
NOT_DOT_SEGMENTS = [  # (target, headers, the path the upstream receives)
    ("/files/a/b/c", None, "/files/a%2Fb%2Fc"),
    ("/files/.../..a/b..", None, "/files/...%2F..a%2Fb.."),
    ("/items/a..b", None, "/items/a..b"),
    ("/q?p=..%252F..", None, "/q/..%252F.."),
    ("/h", {"X-Dir": "a/b"}, "/h/a%2Fb"),
]


async def test_a_dot_segment_in_any_path_value_is_400_and_nothing_is_sent(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    for method, target, headers, body in DOT_SEGMENTS:
        received, _ = await _exchange(server, _request(method, target, headers, body))
        try:
            _assert_envelope(received, 400, "'.' or '..' path segment")
        except AssertionError as exc:
            raise AssertionError(f"{method} {target} {headers} {body}: {exc}") from None
    assert up.requests == 0
    for target, headers, arrives in NOT_DOT_SEGMENTS:
        received, _ = await _exchange(server, _request("GET", target, headers))
        assert _response(received)[0] == 200, (target, received[:300])
        assert up.last.path == arrives
    assert up.requests == len(NOT_DOT_SEGMENTS)


# -- methods: 405 with Allow, OPTIONS, TRACE, and their metrics -------------------------------


async def test_wrong_method_is_405_with_allow_and_options_says_what_is_allowed(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, http: httpx.AsyncClient
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    for method in ("POST", "DELETE", "TRACE", "BREW"):
        response = await http.request(method, server.url + "/items/a")
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "GET, HEAD, OPTIONS"
        body = response.json()
        assert body["data"] is None
        assert f"{method} is not allowed on /items/a" in body["error"]
    options = await http.options(server.url + "/items/a")
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, HEAD, OPTIONS"
    assert options.content == b""
    post_only = await http.options(server.url + "/b")
    assert post_only.headers["allow"] == "POST, OPTIONS"
    for path in ("/healthz", "/metrics"):
        own = await http.request("TRACE", server.url + path)
        assert own.status_code == 405
        assert own.headers["allow"] == "GET, HEAD, OPTIONS"
        assert (await http.options(server.url + path)).headers["allow"] == "GET, HEAD, OPTIONS"
    unknown = await http.request("TRACE", server.url + "/nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "no endpoint for TRACE /nope"
    assert up.requests == 0
    metrics = (await http.get(server.url + "/metrics")).text
    assert ('gateway_requests_total{endpoint="/items/<name>",method="POST",status="405"} 1.0'
            in metrics)
    assert ('gateway_requests_total{endpoint="/items/<name>",method="OPTIONS",status="204"} 1.0'
            in metrics)
    assert 'endpoint="unmatched",method="POST"' not in metrics


async def test_a_websocket_handshake_to_an_unknown_path_is_a_404_with_the_envelope(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    key = base64.b64encode(os.urandom(16))
    for path in (b"/nope", b"/items/a", b"/healthz"):
        received, _ = await _exchange(
            server, b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: " + key + b"\r\n\r\n", wait=2.0)
        _assert_envelope(received, 404, f"no WebSocket endpoint at {path.decode()}")
        assert b"The browser (or proxy)" not in received
    assert up.requests == 0
