"""A real deployment: Debian's nginx with `deploy/nginx.conf` in front of two `gateway serve`.

The two gateway processes share one real redis-server (`limits.store`, `jobs.store`) and
trust nginx (`limits.trusted_proxies = ["127.0.0.1/32"]`). Clients connect from other
loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux routes the whole 127/8 to `lo`), so
nginx's `$remote_addr` tells them apart, and the gateways' access logs say whom they took a
request for. The per-client limits are endpoints' own rates, per hour (so no test runs into
a new window), each test with client addresses of its own: one deployment serves them all.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio
from deploy_support import Nginx, running_gateway, running_nginx
from jwt_support import SECRET, claims, hs256
from redis_support import RedisServer, running_redis
from support import (
    LiveServer,
    RecordingServer,
    call,
    echo,
    endpoint,
    make_config,
    reply,
    to_toml,
)

CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"


@dataclass
class Deployment:
    nginx: Nginx
    gateways: list[LiveServer]
    redis: RedisServer
    up: RecordingServer  # answers fast
    slow: RecordingServer  # answers after SLOW seconds
    counted: RecordingServer  # behind the limited endpoints: what reached an upstream

    def reached(self, path: str, client: str) -> int:
        """Calls to `path` that reached the upstream for `client` (its `{client}`)."""
        return sum(1 for r in self.counted.seen
                   if r.path == path and r.query.get("who") == client)

    def direct(self, gateway: int, source: str) -> httpx.AsyncClient:
        """An HTTP client to one gateway process itself (no nginx), from `source`."""
        return httpx.AsyncClient(base_url=self.gateways[gateway].url, trust_env=False,
                                 timeout=20,
                                 transport=httpx.AsyncHTTPTransport(local_address=source))

    def client(self, source: str = CLIENT_A) -> httpx.AsyncClient:
        """An HTTP client to nginx whose connections come from `source`."""
        return httpx.AsyncClient(base_url=self.nginx.url, trust_env=False, timeout=20,
                                 transport=httpx.AsyncHTTPTransport(local_address=source))

    def access(self) -> list[dict[str, Any]]:
        """Both gateways' access lines (JSON), each with the `gateway` index that served it."""
        lines = []
        for index, gateway in enumerate(self.gateways):
            for line in gateway.output().splitlines():
                if not line.startswith("{"):
                    continue
                fields = json.loads(line)
                if fields["logger"] == "hypercorn.access" and fields["path"] != "/healthz":
                    lines.append({**fields, "gateway": index})
        return lines

    async def access_for(self, request_ids: set[str], within: float = 5.0
                         ) -> dict[str, dict[str, Any]]:
        """The access lines of these request ids, once all are written."""
        give_up = time.monotonic() + within
        while True:
            found = {a["request_id"]: a for a in self.access() if a["request_id"] in request_ids}
            if len(found) == len(request_ids) or time.monotonic() > give_up:
                return found
            await asyncio.sleep(0.05)


SLOW = 1.5
RATE = 6  # /limited: requests per hour and client
LOAD_RATE = 20  # /load
pytestmark = pytest.mark.asyncio(loop_scope="module")  # one deployment serves the module


@asynccontextmanager
async def deployment(workdir: Path, **sections: dict[str, Any]) -> AsyncIterator[Deployment]:
    """Redis, upstreams, two gateways (`sections` merged over this config), nginx."""
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(running_redis(workdir))
        servers = []
        big = {"items": ["x" * 100] * 20_000}  # about 2 MB
        for handler in (reply({"ok": 1}), reply({"slow": True}, delay=SLOW), reply(big), echo):
            server = RecordingServer(handler)
            await server.start()
            stack.push_async_callback(server.close)
            servers.append(server)
        up, slow, big_up, counted = servers
        config = make_config(
            {"up": up, "slow": slow, "big": big_up, "counted": counted},
            endpoint("/r", call("c", "up", "/x")),
            endpoint("/limited", call("l", "counted", "/limited", query={"who": "{client}"}),
                     rate=f"{RATE}/hour"),
            endpoint("/load", call("l", "counted", "/load", query={"who": "{client}"}),
                     rate=f"{LOAD_RATE}/hour"),
            endpoint("/me", call("me", "counted", "/me/{jwt.sub}"), auth=True),
            endpoint("/me/notes", call("n", "counted", "/notes", method="POST",
                                       body={"v": "{body.v}"}), method="POST", auth=True),
            endpoint("/slow", call("fast", "up", "/x"), call("slow", "slow", "/y")),
            endpoint("/big", call("b", "big", "/z")),
            endpoint("/post", call("p", "up", "/p", method="POST", body={"v": "{body.v}"}),
                     method="POST"),
            log_format="json")
        config["jobs"] = {"store": redis.url}
        config["auth"] = {"secret": SECRET, "issuer": "https://idp.test", "audience": "bff"}
        config["limits"] = {"store": redis.url, "trusted_proxies": ["127.0.0.1/32"]}
        for name, table in sections.items():
            config[name] = {**config.get(name, {}), **table}
        path = to_toml(config, workdir / "gateway.toml")
        gateways = [await stack.enter_async_context(running_gateway(path)) for _ in range(2)]
        nginx = await stack.enter_async_context(
            running_nginx(workdir / "nginx", [g.port for g in gateways]))
        yield Deployment(nginx, gateways, redis, up, slow, counted)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def d(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    async with deployment(tmp_path_factory.mktemp("deploy")) as running:
        yield running


async def test_nginx_spreads_requests_over_both_gateways_and_keeps_request_ids(
    d: Deployment
) -> None:
    async with d.client() as client:
        replies = [await client.get("/r") for _ in range(10)]
    assert [r.status_code for r in replies] == [200] * 10
    ids = {r.headers["X-Request-ID"] for r in replies}
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)  # nginx's $request_id
    served = await d.access_for(ids)
    assert {a["gateway"] for a in served.values()} == {0, 1}  # round robin over both
    assert all(f"rid={i}" in d.nginx.access_log for i in ids)  # one id in both logs


async def test_gateway_sees_the_address_nginx_saw_never_a_forged_one(d: Deployment) -> None:
    forged = {"X-Forwarded-For": "203.0.113.66, 127.0.0.1"}
    async with d.client(CLIENT_A) as a, d.client(CLIENT_B) as b:
        sent = {}
        for n in range(4):
            for client, source in ((a, CLIENT_A), (b, CLIENT_B)):
                rid = f"{source}-{n}"
                response = await client.get("/r", headers={**forged, "X-Request-ID": rid})
                assert response.status_code == 200
                sent[rid] = source
    served = await d.access_for(set(sent))
    assert {rid: a["client"] for rid, a in served.items()} == {
        rid: f"{source}:0" for rid, source in sent.items()}
    assert {a["gateway"] for a in served.values()} == {0, 1}


async def test_websocket_streams_each_call_through_nginx(d: Deployment) -> None:
    url = d.nginx.url.replace("http://", "ws://") + "/ws"
    connector = aiohttp.TCPConnector(local_addr=(CLIENT_A, 0))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.ws_connect(url) as ws:
        started = time.monotonic()
        await ws.send_json({"id": "r1", "path": "/slow"})
        first = await ws.receive_json(timeout=10)
        first_at = time.monotonic() - started
        rest = [await ws.receive_json(timeout=10) for _ in range(2)]
    # The fast call's message arrives while the slow call still runs: nginx does not hold it.
    assert (first["type"], first["name"]) == ("call", "fast")
    assert first_at < SLOW * 0.8, first_at
    assert [(m["type"], m.get("name")) for m in rest] == [("call", "slow"), ("result", None)]
    assert rest[1]["status"] == 200
    handshakes = [a for a in d.access() if a["path"] == "/ws"]
    assert handshakes, d.access()
    assert handshakes[0]["client"] == f"{CLIENT_A}:0"


async def test_long_and_large_responses_pass_through_nginx_whole(d: Deployment) -> None:
    async with d.client() as client:
        started = time.monotonic()
        slow = await client.get("/slow")
        took = time.monotonic() - started
        big = await client.get("/big")
    assert slow.status_code == 200, slow.text
    assert took >= SLOW
    assert slow.json()["data"]["slow"] == {"slow": True}
    assert big.status_code == 200
    assert len(big.content) > 2_000_000
    assert len(big.json()["data"]["b"]["items"]) == 20_000


async def test_oversize_requests_get_a_json_refusal_through_nginx(d: Deployment) -> None:
    """The gateway refuses a long target and big headers itself (nginx's buffers are above
    its limits); nginx refuses a big body at the same limit, so no 502 from a gateway that
    refused the body before reading it, and its 413 is JSON too."""
    async with d.client() as client:
        long_target = await client.get("/r?q=" + "a" * 9000)
        big_headers = await client.get("/r", headers={"X-Big": "b" * 17_000})
        big_body = await client.post("/post", content=b"x" * 1_100_000,
                                     headers={"Content-Type": "application/json",
                                              "X-Request-ID": "big-body"})
    for response, status in ((long_target, 414), (big_headers, 431), (big_body, 413)):
        assert response.status_code == status, response.text[:200]
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"], response.text
    assert big_body.json() == {  # the envelope, as the gateway's own 413 would be
        "data": None, "error": "request body over 1048576 bytes",
        "meta": {"processing_time_ms": 0, "strategy": "parallel", "complete": False,
                 "calls": {}}}
    assert not [a for a in d.access() if a["request_id"] == "big-body"]  # never forwarded


# -- per-client limits across the deployment --------------------------------------------------


async def test_a_clients_rate_holds_across_both_gateways_by_its_real_address(
    d: Deployment
) -> None:
    client, other = "127.0.0.10", "127.0.0.11"
    async with d.client(client) as a, d.client(other) as b:
        answers = [await a.get("/limited", headers={"X-Request-ID": f"lim-{n}"})
                   for n in range(RATE + 2)]
        unaffected = await b.get("/limited")
    assert [r.status_code for r in answers] == [200] * RATE + [429] * 2
    assert answers[0].headers["RateLimit-Policy"] == f'"endpoint";q={RATE};w=3600'
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert unaffected.status_code == 200
    served = await d.access_for({f"lim-{n}" for n in range(RATE)})
    assert {a["gateway"] for a in served.values()} == {0, 1}  # both counted the one budget
    assert d.reached("/limited", client) == RATE  # the refused ones called nothing
    assert d.reached("/limited", other) == 1


async def test_a_forged_forwarded_for_sent_to_nginx_does_not_change_the_client_key(
    d: Deployment
) -> None:
    client = "127.0.0.12"
    async with d.client(client) as a:
        statuses = [(await a.get("/limited", headers={
            "X-Forwarded-For": f"203.0.113.{n}"})).status_code for n in range(RATE + 2)]
    assert statuses == [200] * RATE + [429] * 2
    assert d.reached("/limited", client) == RATE
    assert not [r for r in d.counted.seen if r.query.get("who", "").startswith("203.0.113.")]


async def test_two_gateway_processes_on_one_redis_share_the_limit_without_nginx(
    d: Deployment
) -> None:
    client = "127.0.0.13"  # straight to the processes: not a trusted proxy, its own key
    async with d.direct(0, client) as zero, d.direct(1, client) as one:
        statuses = [(await (zero if n % 2 else one).get(
            "/limited", headers={"X-Forwarded-For": "198.51.100.1"})).status_code
            for n in range(RATE + 2)]
    assert statuses == [200] * RATE + [429] * 2
    assert d.reached("/limited", client) == RATE


async def test_websocket_through_nginx_is_authenticated_and_its_messages_limited(
    d: Deployment
) -> None:
    client = "127.0.0.14"
    url = d.nginx.url.replace("http://", "ws://") + "/ws"
    token = hs256(claims(sub="user-9"))
    connector = aiohttp.TCPConnector(local_addr=(client, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers={"Authorization": "Bearer not.a.token"})
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send_json({"id": "me", "path": "/me"})
            me = await _answer(ws, "me")
            answers = []
            for n in range(RATE + 1):
                await ws.send_json({"id": f"l{n}", "path": "/limited"})
                answers.append(await _answer(ws, f"l{n}"))
    async with d.client(client) as http:
        over_http = await http.get("/limited")  # the socket's messages counted for this client
    assert refused.value.status == 401
    assert (me["type"], me["status"]) == ("result", 200)
    assert [r.path for r in d.counted.seen if r.path.startswith("/me/")] == ["/me/user-9"]
    assert [a["type"] for a in answers] == ["result"] * RATE + ["error"]
    assert answers[-1]["error"].startswith("rate limit exceeded for this client")
    assert over_http.status_code == 429
    assert d.reached("/limited", client) == RATE


async def _answer(ws: aiohttp.ClientWebSocketResponse, rid: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = await ws.receive_json(timeout=10)
        if message.get("id") == rid and message["type"] in ("result", "error"):
            return message


async def test_a_flooding_client_gets_429_another_is_unaffected_and_no_upstream_sees_excess(
    d: Deployment
) -> None:
    flooder, calm = "127.0.0.15", "127.0.0.16"
    flood_size, concurrency = 10 * LOAD_RATE, 20  # bounded: 200 requests, 20 at a time
    gate = asyncio.Semaphore(concurrency)
    async with d.client(flooder) as a, d.client(calm) as b:

        async def one() -> int:
            async with gate:
                return (await a.get("/load")).status_code

        async def steady() -> list[int]:
            statuses = []
            for _ in range(LOAD_RATE // 2):
                statuses.append((await b.get("/load")).status_code)
                await asyncio.sleep(0.01)
            return statuses

        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            flood = [tg.create_task(one()) for _ in range(flood_size)]
            calm_task = tg.create_task(steady())
        took = time.monotonic() - started
    statuses = [t.result() for t in flood]
    assert statuses.count(200) == LOAD_RATE
    assert statuses.count(429) == flood_size - LOAD_RATE
    assert calm_task.result() == [200] * (LOAD_RATE // 2)
    assert d.reached("/load", flooder) == LOAD_RATE  # the excess reached no upstream
    assert d.reached("/load", calm) == LOAD_RATE // 2
    assert took < 30


async def test_a_refusal_before_the_body_is_read_reaches_the_client_through_nginx(
    d: Deployment
) -> None:
    """The gateway answers 401 without reading a 900 KB body and closes the connection;
    the client still gets that 401, never a 502 from nginx (each of ten tries)."""
    body = b'{"v": "' + b"x" * 900_000 + b'"}'
    async with d.client("127.0.0.17") as client:
        statuses = [(await client.post("/me/notes", content=body, headers={
            "Content-Type": "application/json"})).status_code for _ in range(10)]
    assert statuses == [401] * 10
