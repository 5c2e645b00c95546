"""A real deployment: Debian's nginx with `deploy/nginx.conf` in front of two `gateway serve`.

The two gateway processes share one real redis-server (`limits.store`, `jobs.store`) and
trust nginx (`limits.trusted_proxies = ["127.0.0.1/32"]`). Clients connect from other
loopback addresses (127.0.0.2, 127.0.0.3: Linux routes the whole 127/8 to `lo`), so nginx's
`$remote_addr` tells them apart, and the gateways' access logs say whom they took a request
for.
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
from redis_support import RedisServer, running_redis
from support import LiveServer, RecordingServer, call, endpoint, make_config, reply, to_toml

CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"


@dataclass
class Deployment:
    nginx: Nginx
    gateways: list[LiveServer]
    redis: RedisServer
    up: RecordingServer  # answers fast
    slow: RecordingServer  # answers after SLOW seconds

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
pytestmark = pytest.mark.asyncio(loop_scope="module")  # one deployment serves the module


@asynccontextmanager
async def deployment(workdir: Path, **sections: dict[str, Any]) -> AsyncIterator[Deployment]:
    """Redis, upstreams, two gateways (`sections` merged over this config), nginx."""
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(running_redis(workdir))
        servers = []
        big = {"items": ["x" * 100] * 20_000}  # about 2 MB
        for handler in (reply({"ok": 1}), reply({"slow": True}, delay=SLOW), reply(big)):
            server = RecordingServer(handler)
            await server.start()
            stack.push_async_callback(server.close)
            servers.append(server)
        up, slow, big_up = servers
        config = make_config(
            {"up": up, "slow": slow, "big": big_up},
            endpoint("/r", call("c", "up", "/x")),
            endpoint("/slow", call("fast", "up", "/x"), call("slow", "slow", "/y")),
            endpoint("/big", call("b", "big", "/z")),
            endpoint("/post", call("p", "up", "/p", method="POST", body={"v": "{body.v}"}),
                     method="POST"),
            log_format="json")
        config["jobs"] = {"store": redis.url}
        config["limits"] = {"store": redis.url, "trusted_proxies": ["127.0.0.1/32"]}
        for name, table in sections.items():
            config[name] = {**config.get(name, {}), **table}
        path = to_toml(config, workdir / "gateway.toml")
        gateways = [await stack.enter_async_context(running_gateway(path)) for _ in range(2)]
        nginx = await stack.enter_async_context(
            running_nginx(workdir / "nginx", [g.port for g in gateways]))
        yield Deployment(nginx, gateways, redis, up, slow)


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
    assert big_body.json() == {"data": None, "meta": {"complete": False, "calls": {}},
                               "error": "request body over 1048576 bytes"}
    assert not [a for a in d.access() if a["request_id"] == "big-body"]  # never forwarded
