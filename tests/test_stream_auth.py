"""`/ws` with `[auth]` and `[limits]` on: the handshake authenticates the socket, and each
message meets its endpoint's `auth`, `scopes` and limits as that identity (SPEC 9).

In-process (Quart's test websocket) with real upstreams on loopback and tokens signed
per run; refusals are `error` messages (SPEC 7's shape), and the socket stays open; a
token that expires closes the socket with 1008 and cancels what it had in flight.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from jwt_support import SECRET, claims, hs256
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError
from quart.typing import TestWebsocketConnectionProtocol as WebsocketClient
from support import GatewayClientFactory, UpstreamFactory, call, echo, endpoint, make_config, reply

API_KEY = "partner-a-key-0123456789"
Message = dict[str, Any]


async def receive(ws: WebsocketClient, within: float = 5.0) -> Message:
    async with asyncio.timeout(within):
        data = await ws.receive()
    message = orjson.loads(data)
    assert isinstance(message, dict)
    return message


async def answer(ws: WebsocketClient, rid: str) -> Message:
    """The request's `result` or `error` (its `call` messages skipped)."""
    while True:
        message = await receive(ws)
        if message.get("id") == rid and message["type"] in ("result", "error"):
            return message


async def ask(ws: WebsocketClient, rid: str, path: str, **extra: Any) -> Message:
    await ws.send(orjson.dumps({"id": rid, "path": path, **extra}).decode())
    return await answer(ws, rid)


def bearer(**extra: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {hs256(claims(**extra))}"}


def ws_config(users: Any, slow: Any = None, *, leeway: int = 30,
              limits: dict[str, Any] | None = None) -> dict[str, Any]:
    config = make_config(
        {"users": users, "slow": slow or users},
        endpoint("/me/orders", call("orders", "users", "/users/{jwt.sub}/orders")),
        endpoint("/me/dashboard", call("d", "users", "/dash"), scopes=["dashboard:read"]),
        endpoint("/partner", call("p", "users", "/partner")),
        endpoint("/public", call("p", "users", "/public"), auth=False),
        endpoint("/limited", call("l", "users", "/limited"), rate="2/minute"),
        endpoint("/slow", call("s", "slow", "/slow")),
    )
    config["auth"] = {"secret": SECRET, "issuer": "https://idp.test", "audience": "bff",
                      "required": True, "leeway": leeway, "api_keys": {"partner-a": API_KEY}}
    config["limits"] = {"rate": "1000/minute", **(limits or {})}
    return config


@pytest.mark.parametrize("credentials", [
    {"Authorization": "Bearer not.a.token"},
    {"Authorization": f"Bearer {hs256(claims(exp=int(time.time()) - 120))}"},
    {"X-API-Key": "not-a-key-of-ours-at-all"},
])
async def test_handshake_with_refused_credentials_is_a_401_and_no_socket(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    credentials: dict[str, str]
) -> None:
    users = await upstream()
    client = await gateway_client(ws_config(users))
    async with client.websocket("/ws", headers=credentials) as ws:
        with pytest.raises(WebsocketResponseError) as refused:
            await receive(ws)
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert users.seen == []


async def test_every_message_runs_as_the_handshake_identity(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    client = await gateway_client(ws_config(users))
    async with client.websocket("/ws", headers=bearer(sub="user-7")) as ws:
        first = await ask(ws, "a", "/me/orders")
        second = await ask(ws, "b", "/me/orders")
    assert (first["type"], first["status"], second["status"]) == ("result", 200, 200)
    assert [r.path for r in users.seen] == ["/users/user-7/orders"] * 2


async def test_anonymous_socket_is_refused_auth_endpoints_and_served_public_ones(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    client = await gateway_client(ws_config(users))
    async with client.websocket("/ws") as ws:  # no credentials: a socket, anonymous
        refused = await ask(ws, "a", "/me/orders")
        public = await ask(ws, "b", "/public")  # the socket stayed open
    assert refused == {"type": "error", "id": "a", "error": refused["error"]}
    assert refused["error"].startswith("authentication required")
    assert (public["type"], public["status"]) == ("result", 200)
    assert [r.path for r in users.seen] == ["/public"]


async def test_a_missing_scope_is_a_403_error_message(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    client = await gateway_client(ws_config(users))
    async with client.websocket("/ws", headers=bearer(scope="orders:read")) as ws:
        refused = await ask(ws, "a", "/me/dashboard")
        allowed = await ask(ws, "b", "/me/orders")
    async with client.websocket("/ws", headers=bearer(scope="dashboard:read")) as ws:
        scoped = await ask(ws, "c", "/me/dashboard")
    assert refused == {"type": "error", "id": "a", "error": "missing scope: dashboard:read"}
    assert (allowed["status"], scoped["status"]) == (200, 200)
    assert [r.path for r in users.seen] == ["/users/user-1/orders", "/dash"]


async def test_an_api_key_socket_is_its_client_and_carries_no_scopes(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    client = await gateway_client(ws_config(users))
    async with client.websocket("/ws", headers={"X-API-Key": API_KEY}) as ws:
        served = await ask(ws, "a", "/partner")
        scoped = await ask(ws, "b", "/me/dashboard")
    assert (served["type"], served["status"]) == ("result", 200)
    assert scoped["type"] == "error"
    assert scoped["error"] == "missing scope: dashboard:read"


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
async def test_a_message_cannot_bring_credentials_of_its_own(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, header: str
) -> None:
    users = await upstream()
    client = await gateway_client(ws_config(users))
    other = bearer(sub="someone-else")["Authorization"] if header == "Authorization" else API_KEY
    async with client.websocket("/ws") as ws:
        refused = await ask(ws, "a", "/me/orders", headers={header: other})
        still = await ask(ws, "b", "/public")
    assert refused["type"] == "error"
    assert "handshake" in refused["error"]
    assert still["status"] == 200
    assert [r.path for r in users.seen] == ["/public"]


async def test_each_message_counts_against_the_rate_of_its_endpoint(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    client = await gateway_client(ws_config(users))
    async with client.websocket("/ws", headers=bearer()) as ws:
        answers = [await ask(ws, f"r{n}", "/limited") for n in range(3)]
        other = await ask(ws, "x", "/me/orders")  # another endpoint: its own bucket
    assert [a["type"] for a in answers] == ["result", "result", "error"]
    assert answers[2]["error"] == "rate limit exceeded for this client (2 per minute)"
    assert other["status"] == 200
    assert [r.path for r in users.seen].count("/limited") == 2  # the excess called nothing


async def test_a_message_in_flight_holds_the_clients_concurrency_slot(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    slow = await upstream(reply({"slow": 1}, delay=0.5))
    client = await gateway_client(ws_config(users, slow, limits={"concurrency": 1}))
    headers = bearer()
    async with client.websocket("/ws", headers=headers) as ws:
        await ws.send('{"id": "busy", "path": "/slow"}')
        await asyncio.sleep(0.1)
        busy = await ask(ws, "second", "/public")
        over_http = await client.get("/public", headers=headers)  # the same client key
        done = await answer(ws, "busy")
        after = await ask(ws, "third", "/public")  # the slot is free again
    assert busy["type"] == "error"
    assert busy["error"].startswith("too many requests in flight")
    assert over_http.status_code == 429
    assert done["status"] == 200
    assert after["status"] == 200


async def test_a_token_that_expires_closes_the_socket_with_1008_and_cancels_its_requests(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(echo)
    slow = await upstream(reply({"slow": 1}, delay=10))
    client = await gateway_client(ws_config(users, slow, leeway=0))
    expires = int(time.time()) + 2
    async with client.websocket("/ws", headers=bearer(exp=expires)) as ws:
        served = await ask(ws, "a", "/me/orders")
        await ws.send('{"id": "long", "path": "/slow"}')
        with pytest.raises(WebsocketDisconnectError) as closed:
            await answer(ws, "long")
    ended = time.time()
    assert served["status"] == 200
    assert closed.value.args[0] == 1008
    assert expires <= ended < expires + 2  # at the expiry, not at the slow call's end
    for _ in range(100):
        if slow.cancelled:
            break
        await asyncio.sleep(0.02)
    assert slow.cancelled == 1  # the request in flight was cancelled with its call


def keyed_config(users: Any) -> dict[str, Any]:
    """Limits keyed by a header (configured in mixed case), `{client}` sent upstream."""
    config = make_config(
        {"users": users},
        endpoint("/who", call("w", "users", "/who", query={"who": "{client}"})),
    )
    config["limits"] = {"key": "header.X-Client", "rate": "2/minute"}
    return config


async def test_a_header_key_in_mixed_case_names_the_socket_client(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    client = await gateway_client(keyed_config(users))
    async with client.websocket("/ws", headers={"X-Client": "alice"}) as ws:
        first = await ask(ws, "a", "/who")
    assert first["status"] == 200
    assert users.last.query == {"who": "alice"}  # not the address: the header was found


async def test_a_message_cannot_pick_its_own_client_key_header(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream()
    client = await gateway_client(keyed_config(users))
    async with client.websocket("/ws", headers={"X-Client": "alice"}) as ws:
        answers = [await ask(ws, f"r{n}", "/who") for n in range(2)]
        fresh = await ask(ws, "f", "/who", headers={"x-client": "victim"})
        over = await ask(ws, "o", "/who")
    assert [a["type"] for a in answers] == ["result", "result"]
    assert fresh["type"] == "error"  # no fresh bucket, no `{client}` of someone else
    assert "handshake" in fresh["error"]
    assert over["type"] == "error"
    assert over["error"] == "rate limit exceeded for this client (2 per minute)"
    assert [r.query for r in users.seen] == [{"who": "alice"}] * 2
