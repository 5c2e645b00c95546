"""Bad requests are refused at the door: a 4xx, one readable line, and nothing forwarded.

Every test puts a real upstream behind the gateway and asserts at that upstream that it saw
no request. The framing and slow-client tests speak raw bytes to a real Hypercorn, since
what they attack is below what an in-process client can send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from hypercorn.config import Config as HypercornConfig
from quart.testing.connections import WebsocketResponseError
from support import (
    REPO,
    GatewayClientFactory,
    HypercornFactory,
    LiveServer,
    RecordingServer,
    UpstreamFactory,
    call,
    echo,
    endpoint,
    make_config,
)

from gateway import Gateway
from gateway.guard import MAX_REQUEST_DEPTH

SHIPPED = HypercornConfig.from_toml(REPO / "hypercorn.toml")


def _config(up: RecordingServer, **gateway: Any) -> dict[str, Any]:
    return make_config(
        {"up": {"url": up, "forward_headers": ["x-tenant"]}},
        endpoint("/orders", call("order", "up", "/orders/{body.id}", method="POST",
                                 body={"id": "{body.id}", "lines": "{body.lines}"}),
                 method="POST"),
        endpoint("/items/<name>", call("item", "up", "/items/{name}",
                                       query={"q": "{query.q}"})),
        endpoint("/x", call("x", "up", "/x")),
        **gateway,
    )


def assert_refused(status: int, body: dict[str, Any], expected: int,
                   mentions: str = "") -> None:
    assert status == expected, body
    assert body["data"] is None
    error = body["error"]
    assert isinstance(error, str)
    assert error
    assert "\n" not in error
    assert "Traceback" not in error
    assert 'File "' not in error
    assert mentions.lower() in error.lower()
    assert body["meta"]["complete"] is False


def nested(depth: int) -> bytes:
    return b'{"id": 1, "lines": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


# -- bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (nested(MAX_REQUEST_DEPTH + 1), f"deeper than {MAX_REQUEST_DEPTH} levels"),
        (nested(300), "deeper than"),  # past what orjson will ever encode
        (nested(2000), "not valid JSON"),  # past what orjson will parse
        (b'{"id": "\xff\xfe"}', "not valid JSON"),  # invalid UTF-8
        (b'{"id": "\xed\xa0\x80"}', "not valid JSON"),  # a UTF-8-encoded lone surrogate
        (b'{"id": 1, "lines": [1, 2', "not valid JSON"),  # truncated
        (b'{"id": 1,}', "not valid JSON"),
        (b"id=1&lines=2", "not valid JSON"),
        (b"\x00\x01\x02", "not valid JSON"),
        (b'{"lines": []}', "missing body field 'body.id'"),
        (b'{"id": 1}', "missing body field 'body.lines'"),
        (b'{"id": null, "lines": []}', "body.id"),
        (b'[{"id": 1, "lines": []}]', "body.id"),  # not an object
        (b'"just a string"', "body.id"),
        (b'{"id": {"a": 1}, "lines": []}', "not a single value"),
        (b'{"id": "..", "lines": []}', "'..'"),
        (b'{"id": ".", "lines": []}', "'.'"),
        (b'{"id": "a\\r\\nX-Injected: 1", "lines": []}', "CR, LF or NUL"),
        (b'{"id": "a\\u0000b", "lines": []}', "CR, LF or NUL"),
    ],
)
async def test_bad_body_is_400_naming_the_problem_and_nothing_is_sent(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, raw: bytes, mentions: str
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_config(up))
    response = await client.post("/orders", data=raw,
                                 headers={"content-type": "application/json"})
    assert_refused(response.status_code, await response.get_json(), 400, mentions)
    assert up.requests == 0


async def test_body_at_the_depth_limit_is_served(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_config(up))
    response = await client.post("/orders", data=nested(MAX_REQUEST_DEPTH))
    assert response.status_code == 200, await response.get_data()
    sent = (await response.get_json())["data"]["order"]["body"]["lines"]
    depth = 1
    while sent:
        sent, depth = sent[0], depth + 1
    assert depth == MAX_REQUEST_DEPTH - 1  # "lines" sits one level below the body's root


async def test_encoded_dot_segments_in_a_body_value_stay_one_segment(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_config(up))
    response = await client.post("/orders", data=b'{"id": "%2e%2e", "lines": []}')
    assert response.status_code == 200
    assert up.last.path == "/orders/%252e%252e"


async def test_oversize_body_is_413_before_it_is_read(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_config(up, max_request_bytes=1024))
    raw = orjson.dumps({"id": 1, "lines": ["x" * 2000]})
    response = await client.post("/orders", data=raw)
    assert_refused(response.status_code, await response.get_json(), 413, "over 1024 bytes")
    assert up.requests == 0


async def test_body_dribbled_past_the_body_timeout_is_408_and_nothing_is_sent(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    gw = Gateway(_config(up))
    assert gw.app.config["BODY_TIMEOUT"] == 60  # Quart's bound on receiving a whole body
    gw.app.config["BODY_TIMEOUT"] = 0.3  # ... shortened so the test need not wait a minute
    await gateway_client(gw)

    async def dribble() -> dict[str, Any]:
        await asyncio.sleep(0.1)  # one byte every 100 ms, for ever
        return {"type": "http.request", "body": b"{", "more_body": True}

    started = time.monotonic()
    async with asyncio.timeout(5):
        status, _, raw = await _asgi(gw.app, "POST", "/orders",
                                     [(b"host", b"gw"), (b"content-length", b"1000")],
                                     receive=dribble)
    assert time.monotonic() - started < 2
    assert_refused(status, orjson.loads(raw), 408)
    assert up.requests == 0


# -- headers and framing, in-process (the ASGI app as any server would call it) --------------


async def _asgi(app: Callable[..., Awaitable[None]], method: str, path: str,
                headers: list[tuple[bytes, bytes]], body: bytes = b"",
                receive: Callable[[], Awaitable[dict[str, Any]]] | None = None
                ) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request straight through the ASGI interface, headers exactly as given."""
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def whole_body() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await asyncio.Event().wait()  # the client stays until the response is done
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "extensions": {}}
    await app(scope, receive or whole_body, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body_out


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"4"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"chunked"), (b"Content-Length", b"0")],
        [(b"x-tenant", b"a\r\nX-Injected: 1")],
        [(b"x-tenant", b"a\nb")],
        [(b"x-tenant", b"a\rb")],
        [(b"x-tenant", b"a\x00b")],
        [(b"x-other", b"\r\n\r\nGET /admin HTTP/1.1")],
    ],
)
async def test_ambiguous_framing_and_control_bytes_in_headers_are_400_and_close(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    headers: list[tuple[bytes, bytes]]
) -> None:
    up = await upstream(echo)
    gw = Gateway(_config(up))
    await gateway_client(gw)  # started, so a request that got through would reach `up`
    status, out_headers, raw = await _asgi(gw.app, "GET", "/x", [(b"host", b"gw"), *headers],
                                           b"0\r\n\r\n")
    assert_refused(status, orjson.loads(raw), 400)
    assert out_headers[b"connection"] == b"close"
    assert up.requests == 0


@pytest.mark.parametrize(
    ("sent", "arrives"),
    [
        (b"acme", b"acme"),
        (b"caf\xc3\xa9 \xe2\x82\xac", b"caf\xc3\xa9 \xe2\x82\xac"),  # UTF-8: byte for byte
        (b"caf\xe9", b"caf\xc3\xa9"),  # latin-1 obs-text: its text, re-encoded as UTF-8
    ],
)
async def test_non_ascii_header_values_are_forwarded_not_a_500(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, sent: bytes,
    arrives: bytes
) -> None:
    up = await upstream(echo)
    gw = Gateway(_config(up))
    await gateway_client(gw)
    status, _, raw = await _asgi(gw.app, "GET", "/x", [(b"host", b"gw"), (b"x-tenant", sent)])
    assert status == 200, raw
    assert up.last.headers["x-tenant"].encode("latin-1") == arrives


# -- against a real Hypercorn, raw sockets ----------------------------------------------------


async def _exchange(server: LiveServer, data: bytes, *, wait: float = 5.0
                    ) -> tuple[bytes, bool]:
    """Send `data`, read until the server closes or `wait` passes: (bytes, closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    await writer.drain()
    received = b""
    closed = False
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                received += chunk
            closed = True
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    writer.close()
    return received, closed


async def test_content_length_with_transfer_encoding_is_400_and_the_connection_closes(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    smuggle = (b"POST /orders HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
               b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\n"
               b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")  # what a front proxy might see as body
    received, closed = await _exchange(server, smuggle)
    assert closed, received
    assert received.startswith(b"HTTP/1.1 400 ")
    assert received.count(b"HTTP/1.1 ") == 1  # the smuggled request was never answered
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert_refused(400, orjson.loads(body), 400, "Content-Length and Transfer-Encoding")
    await asyncio.sleep(0.1)
    assert up.requests == 0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Tenant: a\x00b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Tenant: a\rb\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: gw\r\nX Tenant: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: gw\r\n" + b"X-Many: a\r\n" * 2_000 + b"\r\n",
        b"GET /x?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",  # no Host
        b"GET /x\x00 HTTP/1.1\r\nHost: gw\r\n\r\n",
    ],
    ids=["nul", "bare-cr", "space-in-name", "two-lengths", "20k-header",
         "2000-headers", "20k-target", "no-host", "nul-in-target"],
)
async def test_malformed_and_oversize_heads_are_4xx_and_nothing_is_forwarded(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, head: bytes
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    received, closed = await _exchange(server, head)
    assert closed, received[:300]
    status = int(received.split(b" ", 2)[1])
    assert 400 <= status < 500, received[:200]
    assert b"Traceback" not in received
    assert up.requests == 0


async def test_obs_folded_header_is_unfolded_before_it_is_forwarded(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    received, _ = await _exchange(
        server, b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Tenant: a\r\n X-Injected: 1\r\n"
                b"Connection: close\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 ")
    assert up.last.headers["x-tenant"] == "a X-Injected: 1"  # one value, no new header
    assert "x-injected" not in up.last.headers


async def test_slow_loris_is_disconnected_within_keep_alive_timeout(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(echo)
    server = await hypercorn_server(_config(up))
    bound = SHIPPED.keep_alive_timeout
    assert bound <= 10, "hypercorn.toml should bound a client that never finishes its headers"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    writer.write(b"GET /x HTTP/1.1\r\nHost: gw\r\n")
    closed_after: float | None = None
    try:
        async with asyncio.timeout(bound + 3):
            while True:  # one header byte every 200 ms: never a complete head
                writer.write(b"X")
                await writer.drain()
                try:
                    async with asyncio.timeout(0.2):
                        if await reader.read(1024) == b"":
                            closed_after = time.monotonic() - started
                            break
                except TimeoutError:
                    continue
    except (ConnectionError, TimeoutError):
        closed_after = closed_after or time.monotonic() - started
    writer.close()
    assert closed_after is not None
    assert closed_after <= bound + 1.5
    assert up.requests == 0


# -- the WebSocket: a bad message gets an error line and the socket stays open ---------------


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ("[" * 300 + "]" * 300, "deeper than"),  # past what orjson encodes
        ("[" * 70 + "]" * 70, "deeper than"),
        ('{"id": "..", "lines": []}', "'..'"),
        ('{"lines": []}', "body.id"),
    ],
    ids=["300-deep", "70-deep", "dots", "missing"],
)
async def test_bad_websocket_body_is_an_error_message_and_the_socket_stays_open(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, body: str, mentions: str
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_config(up))
    async with client.websocket("/ws") as ws:
        await ws.send('{"id": "bad", "path": "/orders", "method": "POST", "body": '
                      + body + "}")
        async with asyncio.timeout(5):
            error = orjson.loads(await ws.receive())
        assert error["type"] == "error"
        assert error["id"] == "bad"
        assert mentions in error["error"]
        await ws.send('{"id": "ok", "path": "/x"}')
        async with asyncio.timeout(5):
            while (message := orjson.loads(await ws.receive()))["type"] != "result":
                pass
        assert message["id"] == "ok"
        assert message["status"] == 200
    assert up.requests == 1


async def test_websocket_to_an_unknown_path_is_refused_with_the_envelope(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_config(up))
    with pytest.raises(WebsocketResponseError) as refused:
        async with asyncio.timeout(5), client.websocket("/nope") as ws:
            await ws.send("{}")
    response = refused.value.response
    assert 400 <= response.status_code < 500
    assert_refused(response.status_code, await response.get_json(), response.status_code)
    assert up.requests == 0
