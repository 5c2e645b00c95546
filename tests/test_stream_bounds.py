"""`/ws` under hostile clients and at shutdown, against a real `gateway serve` subprocess.

Memory is the point of the flood test, so it reads the server's RSS from /proc; the
shutdown test sends the signal a user's Ctrl-C sends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest
from hostile_ws import flood  # benchmarks/: the same client as the 30 s benchmark
from hypercorn.config import Config as HypercornConfig
from support import (
    REPO,
    HypercornFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
)

from gateway.config import WebsocketSettings

FLOOD_CLIENTS = 3
FLOOD_SECONDS = 4.0
# 1 KiB frames, each a request for a 256 KiB reply (one at a time: the id repeats, so the
# others are refused as duplicates): the replies fill the socket buffers at once.
FRAME = b'{"id": "f", "path": "/big", "pad": "%s"}' % (b"x" * 980)
BIG = {"blob": "x" * 256 * 1024}
MAX_GROWTH_MIB = 40  # the flood's replies in flight, a few MiB; it is the stall that shows
MIN_STALL_SECONDS = 2.5  # unbounded: no write waited over 1 s, and RSS rose all along


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_clients_that_never_read_are_slowed_by_tcp_not_buffered(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(reply(BIG))
    server = await hypercorn_server(make_config({"u": up}, endpoint("/big", call("u", "u"))))
    await flood("127.0.0.1", server.port, 0.3, FRAME)  # warm up: first-socket imports and arenas
    before = rss_mib(server.process.pid)

    results = await asyncio.gather(
        *(flood("127.0.0.1", server.port, FLOOD_SECONDS, FRAME) for _ in range(FLOOD_CLIENTS)))
    after = rss_mib(server.process.pid)
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        started = time.monotonic()
        health = await client.get(server.url + "/healthz")
        healthz_s = time.monotonic() - started

    waits = [round(r.longest_wait, 2) for r in results]
    assert after - before < MAX_GROWTH_MIB, (before, after)
    # Backpressure: once the socket buffers are full, a client's writes wait until it gives
    # up (unbounded, the gateway read every frame into its queue as it came).
    assert min(waits) > MIN_STALL_SECONDS, waits
    assert not any(r.reset for r in results)  # slowed down, not cut off
    assert health.status_code == 200
    assert healthz_s < 2.0


SERVE = [sys.executable, "-m", "gateway", "serve", "--config", "{config}",
         "--bind", "127.0.0.1:{port}"]
DEMO = [sys.executable, "-m", "gateway", "demo", "--bind", "127.0.0.1:{port}",
        "--upstream-port", "0"]


@pytest.mark.parametrize(
    ("command", "path"),
    [(SERVE, "/x"), ([*SERVE, "--workers", "2"], "/x"), (DEMO, "/dashboard/7")],
    ids=["serve", "serve-2-workers", "demo"],
)
async def test_ctrl_c_closes_websockets_with_1001_at_once_and_quietly(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, command: list[str],
    path: str,
) -> None:
    up = await upstream(reply({"ok": 1}))
    server = await hypercorn_server(make_config({"u": up}, endpoint("/x", call("u", "u"))),
                                    command=command)
    url = server.url.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession() as session:
        served, fresh = await session.ws_connect(url), await session.ws_connect(url)
        await served.send_str(orjson.dumps({"id": "r", "path": path}).decode())
        while orjson.loads(await served.receive_str(timeout=5))["type"] != "result":
            pass

        started = time.monotonic()
        os.killpg(server.process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        for ws in (served, fresh):
            message = await ws.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.CLOSE
            # The code the gateway sent: 1001, going away (it was 1011, after graceful_timeout).
            # (`ws.close_code` may say 1006: the worker can be gone before aiohttp replies.)
            assert (message.data, message.extra) == (1001, "server shutting down")
        closed_s = time.monotonic() - started
        returncode = await asyncio.wait_for(server.process.wait(), 15)
        exited_s = time.monotonic() - started
    await asyncio.sleep(0.2)  # the fixture's reader takes the last of the output
    output = server.output()

    assert closed_s < 1.0, closed_s
    assert exited_s < 5.0, exited_s
    assert returncode == 0
    for noise in ("Traceback", "CancelledError", "Exception", "ERROR"):
        assert noise not in output, output


def test_idle_sockets_are_closed_by_the_gateway_before_hypercorn_cuts_them() -> None:
    # Hypercorn drops a connection that sent nothing for read_timeout, without a close frame
    # (1006). Its websocket_ping_interval would prevent that, but its ping task then keeps
    # every closed socket's connection open until the next ping, and shutdown waits for it.
    shipped = HypercornConfig.from_toml(REPO / "hypercorn.toml")
    assert shipped.websocket_ping_interval is None
    assert shipped.read_timeout is not None
    assert WebsocketSettings().idle_timeout < shipped.read_timeout


async def test_an_idle_socket_is_closed_with_1001(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(reply({"ok": 1}))
    config = make_config({"u": up}, endpoint("/x", call("u", "u")))
    config["websocket"] = {"idle_timeout": 1.5}
    server = await hypercorn_server(config)
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
        started = time.monotonic()
        message = await ws.receive(timeout=10)
        idle_s = time.monotonic() - started
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert (message.data, message.extra) == (1001, "idle timeout")
    assert 1.0 < idle_s < 5.0
