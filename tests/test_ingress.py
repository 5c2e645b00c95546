"""The way in: one chain of checks for HTTP, `/ws` messages and the run API, one refusal."""

from __future__ import annotations

from typing import Any

import orjson
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config, reply

from gateway import Fan, Gateway
from gateway.ingress import HANDSHAKE, Door, Ingress, Refusal, checks


class DenyMarked:
    """A stand-in for a rate limit: refuses a message marked `x-deny`, with headers."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, door: Door) -> Refusal | None:
        self.seen.append(door.kind)
        if "x-deny" in door.headers:
            return Refusal(429, "too many requests from this client", {"Retry-After": "7"})
        door.extras["client"] = "marked-ok"
        return None


class NeverReached:
    async def __call__(self, door: Door) -> Refusal | None:
        if "x-deny" in door.headers:
            raise AssertionError("a later check ran after a refusal")
        return None


async def gateway_with(upstream: UpstreamFactory, chain_tail: tuple[Any, ...]
                       ) -> tuple[Gateway, Any]:
    users = await upstream(reply({"id": 7}))
    gw = Gateway(make_config({"users": users.url}, endpoint("/u/<int:uid>",
                                                            call("user", "users", "/u"))))

    @gw.aggregate("/who")
    async def who(fan: Fan) -> Any:
        return {"client": fan.ctx.extras.get("client")}

    gw.ingress = Ingress(gw, (*checks(gw), *chain_tail))
    return gw, users


async def test_a_check_refuses_http_with_the_envelope_and_no_upstream_call(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    deny = DenyMarked()
    gw, users = await gateway_with(upstream, (deny, NeverReached()))
    client = await gateway_client(gw)
    response = await client.get("/u/1", headers={"x-deny": "1", "x-request-id": "r-1"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-Request-ID"] == "r-1"
    body = await response.get_json()
    assert body["data"] is None
    assert body["error"] == "too many requests from this client"
    assert users.seen == []
    ok = await client.get("/u/1")
    assert ok.status_code == 200
    assert (await client.get("/who")).status_code == 200
    assert (await (await client.get("/who")).get_json())["data"] == {"client": "marked-ok"}
    assert deny.seen[:2] == ["http", "http"]


async def test_unknown_route_is_a_404_before_any_check(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    deny = DenyMarked()
    gw, _ = await gateway_with(upstream, (deny,))
    client = await gateway_client(gw)
    response = await client.get("/nowhere", headers={"x-deny": "1"})
    assert response.status_code == 404
    assert deny.seen == []


async def test_the_same_check_refuses_socket_messages_and_run_api(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    deny = DenyMarked()
    gw, users = await gateway_with(upstream, (deny,))
    client = await gateway_client(gw)
    async with client.websocket("/ws") as ws:
        await ws.send(orjson.dumps({"id": "a", "path": "/u/1",
                                    "headers": {"x-deny": "1"}}).decode())
        message = orjson.loads(await ws.receive())
    assert message == {"type": "error", "id": "a",
                       "error": "too many requests from this client"}
    run = await client.post("/_gateway/api/run", json={"path": "/u/1"},
                            headers={"x-deny": "1"})
    assert (await run.get_json())["error"] == "too many requests from this client"
    assert users.seen == []
    assert HANDSHAKE in deny.seen
    assert {"ws", "run"} <= set(deny.seen)
