"""A `gateway serve` worker: graceful stop with `Connection: close`, the listen backlog."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import HypercornFactory, UpstreamFactory, call, endpoint, make_config, reply

from gateway.serving import CloseWhenDraining, Drain, Message, Scope, signalled_trigger

CONFIG = make_config({"up": "http://127.0.0.1:1"}, endpoint("/r", call("c", "up")))


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail("the request never reached the upstream")


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_response_finished_during_shutdown_says_connection_close(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, workers: int
) -> None:
    slow = await upstream(reply({"slow": True}, delay=1.5))
    command = [sys.executable, "-m", "gateway", "serve", "--config", "{config}",
               "--bind", "127.0.0.1:{port}", "--workers", str(workers)]
    server = await hypercorn_server(make_config({"slow": slow}, endpoint(
        "/slow", call("c", "slow", "/x"))), command=command)
    limits = httpx.Limits(max_connections=1)  # one keep-alive connection for both requests
    async with httpx.AsyncClient(trust_env=False, timeout=10, limits=limits) as http:
        first = await http.get(server.url + "/healthz")
        assert first.status_code == 200
        assert "connection" not in first.headers  # kept alive
        in_flight = asyncio.create_task(http.get(server.url + "/slow"))
        await until(lambda: bool(slow.requests))  # in the gateway, waiting on the upstream
        os.kill(server.process.pid, signal.SIGTERM)
        response = await in_flight
    assert response.status_code == 200
    assert response.json()["data"]["c"] == {"slow": True}
    assert response.headers["connection"] == "close"
    assert await asyncio.wait_for(server.process.wait(), 10) == 0


async def test_only_http1_responses_started_while_draining_get_connection_close() -> None:
    sent: list[Message] = []

    async def app(scope: Scope, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"Connection", b"keep-alive"), (b"x-a", b"1")]})

    async def record(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {}

    drain = Drain()
    middleware = CloseWhenDraining(app, drain)
    http11: Scope = {"type": "http", "http_version": "1.1"}
    await middleware(http11, receive, record)
    drain.closing = True
    await middleware(http11, receive, record)
    await middleware({"type": "http", "http_version": "2"}, receive, record)
    assert [m["headers"] for m in sent] == [
        [(b"Connection", b"keep-alive"), (b"x-a", b"1")],
        [(b"x-a", b"1"), (b"connection", b"close")],
        [(b"Connection", b"keep-alive"), (b"x-a", b"1")],  # HTTP/2 forbids the header
    ]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_the_listen_backlog_is_the_one_in_hypercorn_toml(
    hypercorn_server: HypercornFactory
) -> None:
    server = await hypercorn_server(CONFIG)
    ss = await asyncio.create_subprocess_exec(
        "ss", "-ltnH", f"sport = :{server.port}", stdout=asyncio.subprocess.PIPE)
    listing = (await ss.communicate())[0].decode().split()
    assert listing[0] == "LISTEN"
    assert int(listing[2]) == min(2048, somaxconn())  # Send-Q of a listener: its backlog


async def test_the_signal_trigger_takes_its_handlers_off_the_loop_when_serving_ends() -> None:
    loop = asyncio.get_running_loop()
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with signalled_trigger(None) as trigger:
            waiting = asyncio.ensure_future(trigger())
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the loop: ends the trigger
            await asyncio.wait_for(waiting, 5)
        for signum in before:  # gone: a later Ctrl-C is the process's again, not the loop's
            assert not loop.remove_signal_handler(signum)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
