"""The lane (gateway/lane.py) answers aggregate requests as Quart would, and steps aside.

Each test compares the lane with Quart's path for the same request (a second gateway
whose app was extended through Quart, so that every request goes through Quart), or
checks that an extension made through Quart is honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import Any

import httpx
import pytest
from quart import Response, signals
from support import (
    GatewayClientFactory,
    HypercornFactory,
    RecordingServer,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
)

from gateway import Fan, Gateway
from gateway.ingress import Door, Ingress, Refusal

# Per-request timings (and so the body's length): equal in shape, not in value.
_TIMING = ("server-timing", "x-processing-time-ms", "content-length")


def _config(up: RecordingServer, **gateway: Any) -> dict[str, Any]:
    config = make_config({"up": up}, endpoint("/users/<int:id>", call("user", "up", "/u/{id}"),
                                              call("q", "up", "/q", query={"tag": "{query.tag}"})))
    config["gateway"] = {**config.get("gateway", {}), **gateway}
    return config


def _through_quart(gw: Gateway) -> Gateway:
    """`gw` with one route of its own added through Quart: the lane then stays closed."""

    @gw.app.route("/own")
    async def own() -> str:
        return "own"

    return gw


def _timeless(body: dict[str, Any]) -> dict[str, Any]:
    meta = dict(body["meta"])
    meta.pop("processing_time_ms")
    meta["calls"] = {name: {k: v for k, v in c.items() if not k.endswith("_ms")}
                     for name, c in meta["calls"].items()}
    return {**body, "meta": meta}


async def test_the_lane_answers_what_quart_answers(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream()
    config = _config(up, cors_origins=["https://app.example"])
    lane_gw, quart_gw = Gateway(config), _through_quart(Gateway(config))
    lane, quart = await gateway_client(lane_gw), await gateway_client(quart_gw)
    assert lane_gw.lane.is_open()
    assert not quart_gw.lane.is_open()
    headers = {"X-Request-ID": "rid-1", "Origin": "https://app.example", "X-Tenant": "t"}
    answers = []
    for client in (lane, quart):
        response = await client.get("/users/7?tag=a%20b&tag=c", headers=headers)
        answers.append((response.status_code,
                        {k.lower(): v for k, v in response.headers.items()
                         if k.lower() not in _TIMING},
                        _timeless(await response.get_json())))
    assert answers[0] == answers[1]
    assert lane_gw.lane.served == 1  # the lane answered one, Quart the other
    assert quart_gw.lane.served == 0
    status, sent, body = answers[0]
    assert status == 200
    assert body["data"]["user"]["path"] == "/u/7"
    assert sent["access-control-allow-origin"] == "https://app.example"
    assert sent["vary"] == "Origin"
    assert sent["x-request-id"] == "rid-1"
    # What the upstream received is the same too: the same query, the same headers.
    first, second = (r for r in up.seen if r.path == "/u/7")
    assert dict(first.headers).keys() == dict(second.headers).keys()
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == "rid-1"
    queries = [r.raw_query for r in up.seen if r.path == "/q"]
    assert queries[0] == queries[1]
    assert "tag=a%20b" in queries[0]


async def test_refusals_and_unrouted_requests_match_quarts(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream()
    config = _config(up)
    lane_gw = Gateway(config)
    lane, quart = (await gateway_client(lane_gw),
                   await gateway_client(_through_quart(Gateway(config))))
    for method, path, headers in (
        ("GET", "/users/7", {"X-Gateway-Strategy": "sideways"}),  # the ingress refuses: 400
        ("GET", "/nowhere", {}),  # 404: Quart's path, from the lane too
        ("DELETE", "/users/7", {}),  # 405 with Allow
        ("HEAD", "/users/7", {}),
    ):
        got = []
        for client in (lane, quart):
            response = await getattr(client, method.lower())(path, headers=headers)
            text = await response.get_data(as_text=True)
            got.append((response.status_code, response.headers.get("allow"),
                        json.loads(text)["error"] if text else None))
        assert got[0] == got[1], (method, path)
        assert got[0][0] >= 400 or method == "HEAD"
    assert lane_gw.lane.served == 1  # the 400; 404, 405 and HEAD are Quart's


async def test_a_route_added_through_quart_wins_over_an_endpoint(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream()
    gw = Gateway(_config(up))

    @gw.app.route("/users/<int:id>")
    async def mine(id: int) -> str:
        return f"mine {id}"

    client = await gateway_client(gw)
    response = await client.get("/users/7")
    assert await response.get_data() == b"mine 7"  # werkzeug ranks it above the catch-all
    assert not up.seen


async def test_request_hooks_added_through_quart_run_on_aggregates(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    up = await upstream()
    gw = Gateway(_config(up))

    @gw.app.after_request
    async def stamp(response: Response) -> Response:
        response.headers["X-Stamped"] = "yes"
        return response

    client = await gateway_client(gw)
    with caplog.at_level(logging.INFO, logger="gateway"):
        response = await client.get("/users/7?tag=x")
    assert response.status_code == 200
    assert response.headers["X-Stamped"] == "yes"
    assert "extended through Quart" in caplog.text


async def test_a_body_sent_without_content_length_still_reaches_the_endpoint(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """Quart's test client (like HTTP/2) sends no `Content-Length`: the lane must look."""
    up = await upstream()
    config = make_config({"up": up}, endpoint("/o", call("o", "up", "/o/{body.id}"),
                                              method="POST"))
    client = await gateway_client(Gateway(config))
    response = await client.post("/o", json={"id": 5})
    assert response.status_code == 200, await response.get_data()
    assert up.last.path == "/o/5"


async def test_a_client_that_hangs_up_cancels_the_calls_on_the_lane(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, http: httpx.AsyncClient
) -> None:
    slow = await upstream(reply(delay=10.0))
    server = await hypercorn_server(make_config({"up": slow},
                                                endpoint("/slow", call("s", "up", "/s"))))
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    for _ in range(100):  # the call reached the upstream
        if slow.seen:
            break
        await asyncio.sleep(0.05)
    assert slow.seen
    writer.transport.set_write_buffer_limits(0)
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.close()
    for _ in range(60):  # the gateway hung up on the upstream within 3 s, not after its 10 s
        if slow.cancelled:
            break
        await asyncio.sleep(0.05)
    assert slow.cancelled == 1
    assert (await http.get(f"{server.url}/healthz")).status_code == 200  # and serves on
    del reader


async def test_a_bug_is_the_500_envelope_with_the_request_id_on_both_paths(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        """A check with a bug (the seam new checks plug into: ingress.py)."""

        async def __call__(self, door: Door) -> Refusal | None:
            raise RuntimeError("a bug in a check")

    up = await upstream()
    answers, served = [], []
    for gw in (Gateway(_config(up)), _through_quart(Gateway(_config(up)))):
        gw.ingress = Ingress(gw, chain=(Broken(),))
        client = await gateway_client(gw)
        with caplog.at_level(logging.ERROR, logger="gateway"):
            response = await client.get("/users/7?tag=x", headers={"X-Request-ID": "bug-1"})
        body = await response.get_json()
        answers.append((response.status_code, body["error"], body["data"]))
        served.append(gw.lane.served)
    assert answers[0] == answers[1] == (500, "internal error (request id bug-1)", None)
    assert served == [1, 0]
    assert caplog.text.count("a bug in a check") >= 2  # logged, with the traceback, not sent
    assert not up.seen


async def test_an_http2_request_whose_body_is_still_coming_is_answered_at_once(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """HTTP/2 needs no `Content-Length`: the lane must not wait for a body that may never
    come (a stream held open), so such a request goes to Quart, which answers at once."""
    up = await upstream()
    gw = Gateway(_config(up))
    await gateway_client(gw)  # started
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "2", "method": "GET",
             "scheme": "http", "path": "/users/7", "raw_path": b"/users/7",
             "query_string": b"tag=x", "root_path": "", "headers": [(b"host", b"x")],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80), "extensions": {}}
    never = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await never.wait()  # the body never comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(gw.app(scope, receive, send), 5)  # type: ignore[arg-type]
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200
    assert sorted(r.path for r in up.seen) == ["/q", "/u/7"]


async def test_an_answer_that_cannot_be_encoded_is_the_500_envelope_on_both_paths(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream()
    answers = []
    for gw in (Gateway(_config(up)), _through_quart(Gateway(_config(up)))):

        @gw.aggregate("/deep")
        async def deep(fan: Fan) -> Any:
            value: Any = 1
            for _ in range(300):  # deeper than orjson encodes
                value = [value]
            return value

        client = await gateway_client(gw)
        response = await client.get("/deep", headers={"X-Request-ID": "deep-1"})
        answers.append((response.status_code, (await response.get_json())["error"]))
    assert answers[0] == answers[1] == (500, "internal error (request id deep-1)")


async def test_a_catch_all_view_does_not_take_the_gateways_own_routes(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """Quart ranks /healthz, /jobs/<id>, /_gateway/... above a view at `/<name>`."""
    up = await upstream()
    answers, served = [], []
    for gw in (Gateway(_config(up)), _through_quart(Gateway(_config(up)))):

        @gw.aggregate("/<name>")
        async def anything(fan: Fan, name: str) -> Any:
            return {"agg": name}

        client = await gateway_client(gw)
        got = []
        for path in ("/healthz", "/readyz", "/jobs/abc", "/_gateway/openapi.json", "/x"):
            response = await client.get(path)
            got.append((path, response.status_code, (await response.get_data())[:40]))
        answers.append(got)
        served.append(gw.lane.served)
    assert answers[0] == answers[1]
    assert answers[0][0][2] == b'{"status":"ok"}'  # the gateway's /healthz, not the view
    assert served == [1, 0]  # only /x on the lane
    assert b'"agg":"x"' in answers[0][-1][2]


async def test_a_hook_added_while_serving_runs_from_the_next_request(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """Quart takes setup after its first request: the lane must step aside then too."""
    up = await upstream()
    gw = Gateway(_config(up))
    client = await gateway_client(gw)
    assert (await client.get("/users/7?tag=x")).status_code == 200
    assert gw.lane.served == 1

    @gw.app.before_request
    async def blocked() -> Any:
        return "blocked", 403

    response = await client.get("/users/7?tag=x")
    assert response.status_code == 403
    assert await response.get_data() == b"blocked"
    assert gw.lane.served == 1


async def test_rate_limit_headers_come_where_quart_puts_them(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream()
    config = _config(up)
    config["limits"] = {"rate": "1000/second"}
    names, served = [], []
    for gw in (Gateway(config), _through_quart(Gateway(config))):
        client = await gateway_client(gw)
        response = await client.get("/users/7?tag=x")
        assert response.status_code == 200
        names.append([k.lower() for k, _ in response.headers.items()])
        served.append(gw.lane.served)
    assert names[0] == names[1]
    assert served == [1, 0]
    assert "ratelimit" in names[0]


async def test_a_request_signal_connected_while_serving_sends_requests_through_quart(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """Signals connect without a setup method: the lane looks at them on every request."""
    up = await upstream()
    gw = Gateway(_config(up))
    client = await gateway_client(gw)
    seen: list[object] = []

    async def started(sender: object, **_: object) -> None:
        seen.append(sender)

    assert (await client.get("/users/7?tag=x")).status_code == 200
    signals.request_started.connect(started, gw.app)
    try:
        assert (await client.get("/users/7?tag=x")).status_code == 200
    finally:
        signals.request_started.disconnect(started, gw.app)
    assert seen == [gw.app]  # Quart sent it: the second request went through Quart
    assert gw.lane.served == 1
