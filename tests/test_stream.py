"""`/ws` end to end: the app in-process (Quart's test websocket), then a real Hypercorn.

Real upstream servers on loopback; a request over the socket goes through the same router
and `Gateway.context` as HTTP, so its errors are the HTTP ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError
from quart.typing import TestWebsocketConnectionProtocol as WebsocketClient
from support import (
    GatewayClientFactory,
    HypercornFactory,
    RecordingServer,
    UpstreamFactory,
    call,
    echo,
    endpoint,
    make_config,
    reply,
)

from gateway import Gateway, stream

Message = dict[str, Any]


RECEIVE_TIMEOUT = 5.0


async def receive(ws: WebsocketClient) -> Message:
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        data = await ws.receive()
    message = orjson.loads(data)
    assert isinstance(message, dict)
    return message


async def receive_until(ws: WebsocketClient,
                        done: Callable[[list[Message]], bool]) -> list[Message]:
    messages: list[Message] = []
    while not done(messages):
        messages.append(await receive(ws))
    return messages


def results_for(*ids: str) -> Callable[[list[Message]], bool]:
    def done(messages: list[Message]) -> bool:
        finished = {m.get("id") for m in messages if m["type"] in ("result", "error")}
        return set(ids) <= finished

    return done


async def wait_for(predicate: Callable[[], bool], within: float = 3.0) -> None:
    give_up = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < give_up, "condition not reached in time"
        await asyncio.sleep(0.01)


def two_speed_config(slow: RecordingServer, fast: RecordingServer, **gateway: Any
                     ) -> dict[str, Any]:
    return make_config(
        {"slow": slow, "fast": fast},
        endpoint("/both/<int:n>", call("quick", "fast", "/q/{n}"), call("late", "slow", "/s")),
        endpoint("/quick", call("quick", "fast", "/q")),
        endpoint("/needs/<int:n>", call("q", "fast", "/q", query={"v": "{query.v}"})),
        **gateway,
    )


def with_limits(config: dict[str, Any], **limits: Any) -> dict[str, Any]:
    """`config` with these `[websocket]` keys."""
    return {**config, "websocket": limits}


# -- the protocol ------------------------------------------------------------------------------


async def test_two_requests_interleave_on_one_socket_with_ids_kept_apart(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply({"who": "slow"}, delay=0.3))
    fast = await upstream(reply({"who": "fast"}, delay=0.01))
    client = await gateway_client(two_speed_config(slow, fast))
    async with client.websocket("/ws") as ws:
        await ws.send(orjson.dumps({"id": "r1", "path": "/both/1"}).decode())
        await ws.send(orjson.dumps({"id": "r2", "path": "/quick"}).decode())
        messages = await receive_until(ws, results_for("r1", "r2"))

    order = [(m["id"], m["type"], m.get("name")) for m in messages]
    # r2 is served while r1 still waits for its slow call: both run on the socket at once.
    assert order.index(("r2", "result", None)) < order.index(("r1", "result", None))
    assert order.index(("r1", "call", "quick")) < order.index(("r2", "result", None))
    for rid, names in (("r1", {"quick", "late"}), ("r2", {"quick"})):
        mine = [m for m in messages if m["id"] == rid]
        assert [m["type"] for m in mine] == ["call"] * len(names) + ["result"]
        assert {m["name"] for m in mine[:-1]} == names
        result = mine[-1]
        assert result["status"] == 200
        assert set(result["body"]["meta"]["calls"]) == names
        assert result["body"]["meta"]["complete"] is True
    r1_calls = {m["name"]: m for m in messages if m["id"] == "r1" and m["type"] == "call"}
    assert r1_calls["quick"]["data"] == {"who": "fast"}
    assert r1_calls["late"]["data"] == {"who": "slow"}
    assert r1_calls["late"]["ok"] is True
    assert r1_calls["late"]["status"] == 200
    assert r1_calls["late"]["elapsed_ms"] >= 250
    r1_result = next(m for m in messages if m["id"] == "r1" and m["type"] == "result")
    assert r1_result["body"]["data"] == {"quick": {"who": "fast"}, "late": {"who": "slow"}}


async def test_call_message_reports_a_failed_call_before_the_error_result(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    broken = await upstream(reply({"error": "boom"}, status=500))
    client = await gateway_client(make_config({"b": broken}, endpoint("/x", call("b", "b"))))
    async with client.websocket("/ws") as ws:
        await ws.send('{"id": 7, "path": "/x"}')
        first, second = await receive(ws), await receive(ws)
    assert first["type"] == "call"
    assert first["id"] == 7
    assert first["ok"] is False
    assert first["status"] == 500
    assert "500" in first["error"]
    assert second["type"] == "result"
    assert second["status"] == 502
    assert second["body"]["data"] is None
    assert second["body"]["error"]


async def test_strategy_headers_query_and_method_are_taken_from_the_message(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config(
        {"up": {"url": up, "forward_headers": ["authorization"]}},
        endpoint("/e/<int:n>", call("echo", "up", "/e/{n}", query={"v": "{query.v}"})),
        endpoint("/p", call("echo", "up", "/p", method="POST", body={"name": "{body.name}"}),
                 method="POST"),
    ))
    async with client.websocket("/ws", headers={"Authorization": "from-handshake"}) as ws:
        await ws.send(orjson.dumps({
            "id": "a", "path": "/e/3?v=x%20y", "strategy": "sequential",
            "headers": {"Authorization": "Bearer t", "X-Request-ID": "ws-req-1"},
        }).decode())
        a = await receive_until(ws, results_for("a"))
        await ws.send('{"id": "b", "path": "/p", "method": "post", "body": {"name": "Ada"}}')
        b = await receive_until(ws, results_for("b"))
        await ws.send('{"id": "c", "path": "/e/4?v=1"}')
        c = await receive_until(ws, results_for("c"))
    result = a[-1]
    assert result["body"]["meta"]["strategy"] == "sequential"
    seen = result["body"]["data"]["echo"]
    assert seen["path"] == "/e/3"
    assert seen["query"] == {"v": "x y"}
    assert seen["headers"]["authorization"] == "Bearer t"
    assert seen["headers"]["x-request-id"] == "ws-req-1"
    assert b[-1]["status"] == 200
    assert b[-1]["body"]["data"]["echo"]["body"] == {"name": "Ada"}
    # Without message headers, the handshake's own allowed headers are forwarded.
    assert c[-1]["body"]["data"]["echo"]["headers"]["authorization"] == "from-handshake"
    assert c[-1]["body"]["meta"]["strategy"] == "parallel"


# -- invalid messages: an error, and the socket stays open -------------------------------------


@pytest.mark.parametrize(
    ("raw", "rid", "fragment"),
    [
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "JSON object"),
        ('{"path": "/quick"}', None, "'id'"),
        ('{"id": true, "path": "/quick"}', None, "'id'"),
        ('{"id": "m", "strategy": "parallel"}', "m", "'path'"),
        ('{"id": "m", "path": "quick"}', "m", "'path'"),
        ('{"id": "m", "path": "/quick", "strategy": "fast"}', "m", "'strategy'"),
        ('{"id": "m", "path": "/quick", "headers": {"a": 1}}', "m", "'headers'"),
        ('{"id": "u", "path": "/nowhere"}', "u", "no endpoint for GET /nowhere"),
        ('{"id": "v", "path": "/quick", "method": "DELETE"}', "v", "not allowed"),
    ],
)
async def test_invalid_message_gets_an_error_and_the_socket_stays_open(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    raw: str, rid: str | None, fragment: str,
) -> None:
    fast = await upstream(reply({"ok": 1}))
    client = await gateway_client(two_speed_config(fast, fast))
    async with client.websocket("/ws") as ws:
        await ws.send(raw)
        error = await receive(ws)
        await ws.send('{"id": "after", "path": "/quick"}')
        after = await receive_until(ws, results_for("after"))
    assert error == {"type": "error", "id": rid, "error": error["error"]}
    assert fragment in error["error"]
    assert after[-1]["type"] == "result"
    assert after[-1]["status"] == 200


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"X-Fwd": "a\r\nX-Injected: 1"}, "no CR, LF, NUL"),
        ({"X-Fwd": "a\nb"}, "no CR, LF, NUL"),
        ({"X-Fwd": "nul\x00"}, "no CR, LF, NUL"),
        ({"X-Fwd": "caf\u00e9"}, "printable ASCII"),
        ({"X-Fwd\r\nX-Injected": "1"}, "HTTP tokens"),
        ({"X-Fwd\x00": "1"}, "HTTP tokens"),
    ],
)
async def test_control_characters_in_message_headers_are_an_error_not_a_crash(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture, headers: dict[str, str], fragment: str,
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config(
        {"up": {"url": up, "forward_headers": ["x-fwd"]}}, endpoint("/e", call("echo", "up"))))
    async with client.websocket("/ws") as ws:
        await ws.send(orjson.dumps({"id": "h", "path": "/e", "headers": headers}).decode())
        error = await receive(ws)
        await ws.send('{"id": "after", "path": "/e", "headers": {"X-Fwd": "fine"}}')
        after = await receive_until(ws, results_for("after"))
    assert error == {"type": "error", "id": "h", "error": error["error"]}
    assert fragment in error["error"]
    assert not any(c in error["error"] for c in "\r\n\x00")
    assert after[-1]["status"] == 200
    assert after[-1]["body"]["data"]["echo"]["headers"]["x-fwd"] == "fine"
    assert up.requests == 1  # the bad message never reached the upstream
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]


async def test_missing_placeholder_value_is_the_same_error_as_over_http(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    fast = await upstream(reply({"ok": 1}))
    client = await gateway_client(two_speed_config(fast, fast))
    http = await client.get("/needs/1")
    assert http.status_code == 400
    http_error = (await http.get_json())["error"]
    async with client.websocket("/ws") as ws:
        await ws.send('{"id": "p", "path": "/needs/1"}')
        error = await receive(ws)
    assert error == {"type": "error", "id": "p", "error": http_error}
    assert fast.requests == 0


async def test_too_many_in_flight_and_duplicate_ids_are_refused(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply({"ok": 1}, delay=0.3))
    gw = Gateway(with_limits(two_speed_config(slow, slow), max_in_flight=2))
    client = await gateway_client(gw)
    async with client.websocket("/ws") as ws:
        for rid in ("a", "a", "b", "c"):
            await ws.send(orjson.dumps({"id": rid, "path": "/quick"}).decode())
        errors = [await receive(ws), await receive(ws)]
        rest = await receive_until(ws, results_for("a", "b"))
        await ws.send('{"id": "c", "path": "/quick"}')  # a slot is free again
        again = await receive_until(ws, results_for("c"))
    assert errors[0]["id"] == "a"
    assert "already in flight" in errors[0]["error"]
    assert errors[1]["id"] == "c"
    assert "too many requests in flight" in errors[1]["error"]
    assert "(max 2)" in errors[1]["error"]
    assert {m["id"] for m in rest if m["type"] == "result"} == {"a", "b"}
    assert again[-1]["type"] == "result"


# -- bounds and closing ------------------------------------------------------------------------


async def test_oversize_message_closes_the_socket_with_1009(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    fast = await upstream(reply({"ok": 1}))
    gw = Gateway(with_limits(two_speed_config(fast, fast), max_message_bytes=1024))
    client = await gateway_client(gw)
    async with client.websocket("/ws") as ws:
        await ws.send('{"id": "ok", "path": "/quick"}')
        assert (await receive_until(ws, results_for("ok")))[-1]["status"] == 200
        await ws.send(orjson.dumps({"id": "big", "path": "/quick", "pad": "x" * 2000}).decode())
        with pytest.raises(WebsocketDisconnectError) as closed:
            await receive(ws)
    assert closed.value.args[0] == 1009


async def test_idle_socket_is_closed(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    fast = await upstream(reply({"ok": 1}))
    gw = Gateway(with_limits(two_speed_config(fast, fast), idle_timeout=0.15))
    client = await gateway_client(gw)
    async with client.websocket("/ws") as ws:
        started = time.monotonic()
        with pytest.raises(WebsocketDisconnectError) as closed:
            await receive(ws)
    assert closed.value.args[0] == 1001
    assert 0.1 < time.monotonic() - started < 2.0


async def test_request_in_flight_keeps_an_idle_socket_open(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply({"ok": 1}, delay=0.4))
    gw = Gateway(with_limits(two_speed_config(slow, slow), idle_timeout=0.1))
    client = await gateway_client(gw)
    async with client.websocket("/ws") as ws:
        await ws.send('{"id": "s", "path": "/quick"}')
        messages = await receive_until(ws, results_for("s"))
    assert messages[-1]["status"] == 200


async def test_going_away_lets_requests_in_flight_finish_then_closes_with_1001(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply({"ok": 1}, delay=0.3))
    gw = Gateway(two_speed_config(slow, slow))
    client = await gateway_client(gw)
    async with client.websocket("/ws") as busy, client.websocket("/ws") as idle:
        await busy.send('{"id": "s", "path": "/quick"}')
        await wait_for(lambda: slow.requests == 1)
        started = time.monotonic()
        gw.going_away()  # what the worker calls when SIGINT/SIGTERM arrives
        with pytest.raises(WebsocketDisconnectError) as idle_closed:
            await receive(idle)
        idle_s = time.monotonic() - started
        messages = [await receive(busy), await receive(busy)]
        with pytest.raises(WebsocketDisconnectError) as busy_closed:
            await receive(busy)
    assert idle_closed.value.args[0] == 1001
    assert idle_s < 0.25  # at once, not after the busy socket's request
    assert busy_closed.value.args[0] == 1001
    assert [(m["type"], m.get("status")) for m in messages] == [("call", 200), ("result", 200)]


async def test_going_away_cancels_what_outlasts_the_grace(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream, "SHUTDOWN_GRACE", 0.2)
    stuck = await upstream(reply({"never": "sent"}, delay=10))
    gw = Gateway(two_speed_config(stuck, stuck))
    client = await gateway_client(gw)
    async with client.websocket("/ws") as ws:
        await ws.send('{"id": "s", "path": "/quick"}')
        await wait_for(lambda: stuck.requests == 1)
        started = time.monotonic()
        gw.going_away()
        with pytest.raises(WebsocketDisconnectError) as closed:
            await receive(ws)
    assert closed.value.args[0] == 1001
    assert 0.15 < time.monotonic() - started < 2.0
    await wait_for(lambda: stuck.cancelled == 1)


async def test_disconnect_mid_request_cancels_the_upstream_call(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply({"never": "sent"}, delay=10))
    fast = await upstream(reply({"ok": 1}))
    client = await gateway_client(two_speed_config(slow, fast))
    async with client.websocket("/ws") as ws:
        await ws.send('{"id": "x", "path": "/both/1"}')
        first = await receive(ws)
        assert (first["type"], first["name"]) == ("call", "quick")
        await wait_for(lambda: slow.requests == 1)
    await wait_for(lambda: slow.cancelled == 1)


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (["http://app.example"], "http://app.example", True),
        (["http://app.example"], "http://evil.example", False),
        (["http://app.example"], None, True),  # not a browser: nothing to protect
        (["http://app.example"], "http://localhost", True),  # same origin as the Host
        ([], "http://evil.example", True),  # no list: every origin
    ],
)
async def test_origin_is_checked_against_cors_origins_when_set(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    origins: list[str], origin: str | None, allowed: bool,
) -> None:
    fast = await upstream(reply({"ok": 1}))
    client = await gateway_client(two_speed_config(fast, fast, cors_origins=origins))
    headers = {"Origin": origin} if origin else {}
    async with client.websocket("/ws", headers=headers) as ws:
        await ws.send('{"id": "o", "path": "/quick"}')
        if allowed:
            assert (await receive_until(ws, results_for("o")))[-1]["status"] == 200
        else:
            with pytest.raises(WebsocketResponseError) as refused:
                await receive(ws)
            assert refused.value.response.status_code == 403


# -- over a real Hypercorn ---------------------------------------------------------------------


async def test_real_hypercorn_interleaves_closes_1009_and_cancels_on_disconnect(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    slow = await upstream(reply({"who": "slow"}, delay=0.3))
    fast = await upstream(reply({"who": "fast"}, delay=0.01))
    stuck = await upstream(reply({"never": "sent"}, delay=10))
    config = with_limits(two_speed_config(slow, fast), max_message_bytes=64 * 1024)
    config["upstreams"]["stuck"] = {"url": stuck.url}
    config["endpoints"].append(endpoint("/stuck", call("s", "stuck", "/")))
    server = await hypercorn_server(config)
    url = server.url.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            await ws.send_str('{"id": "r1", "path": "/both/2"}')
            await ws.send_str('{"id": "r2", "path": "/quick"}')
            messages: list[Message] = []
            while not results_for("r1", "r2")(messages):
                messages.append(orjson.loads(await ws.receive_str(timeout=5)))
            order = [(m["id"], m["type"]) for m in messages]
            assert order.index(("r2", "result")) < order.index(("r1", "result"))
            assert [t for i, t in order if i == "r1"] == ["call", "call", "result"]

            await ws.send_str("x" * (65 * 1024))
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1009

        async with session.ws_connect(url) as ws:
            await ws.send_str('{"id": "s", "path": "/stuck"}')
            await wait_for(lambda: stuck.requests == 1, within=5)
        await wait_for(lambda: stuck.cancelled == 1, within=5)


@pytest.mark.parametrize("path", ["//[x/a", "//evil/e"])
async def test_a_path_that_looks_like_a_netloc_is_a_plain_path_not_a_crash(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, path: str,
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config({"up": up}, endpoint("/e", call("echo", "up"))))
    async with client.websocket("/ws") as ws:
        await ws.send(orjson.dumps({"id": "n", "path": path}).decode())
        answer = await receive_until(ws, results_for("n"))
        await ws.send('{"id": "after", "path": "/e"}')  # the socket is still open
        after = await receive_until(ws, results_for("after"))
    # Never routed as "/a" or "/e" with a lost host: the whole path is the unknown route.
    assert answer == [{"type": "error", "id": "n", "error": f"no endpoint for GET {path}"}]
    assert after[-1]["status"] == 200
    assert up.requests == 1
