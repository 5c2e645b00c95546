"""Fixtures for end-to-end tests: real upstreams on loopback, the app in-process, a real Hypercorn.

Every fixture here is a factory: call it as often as a test needs, everything it started is
stopped when the test ends. Plain helpers (handlers, config builders) are in `support.py`.

    upstream(handler=echo) -> RecordingServer
        aiohttp.web on 127.0.0.1:<random> (`webserver.py`); `.url`, `.requests`, `.cancelled`,
        `.seen`. A handler that raised fails the test at teardown.
        `await upstream(reply({"id": 1}, delay=0.1))`, `await upstream()` (echo).
    raw_upstream(raw_handler) -> RawServer
        A TCP server whose handler writes the response bytes itself (drip-feed, endless body).
    gateway_client(config) -> TestClientProtocol
        A Quart test client on a started app (`before_serving` ran, upstream clients open).
        `config` is a config dict, a `Gateway` (for code views) or a `Quart` app.
    hypercorn_server(config, *, command=None, env=None, cwd=REPO, ready=True) -> LiveServer
        A subprocess (`python -m gateway serve --config ... --bind 127.0.0.1:<port>` unless
        `command` says otherwise; `{config}` and `{port}` in it are filled in, and
        GATEWAY_CONFIG is set), returned once `/healthz` answers (`ready=False`: at once).
        `config` is a path or a config dict (written as TOML). Stopped with SIGTERM to its
        process group at teardown; `.output()` holds its stdout and stderr.
    http -> httpx.AsyncClient  (no env proxies) for talking to a `LiveServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from quart import Quart
from quart.typing import TestClientProtocol
from support import (
    REPO,
    GatewayClientFactory,
    HypercornFactory,
    LiveServer,
    RawHandler,
    RawServer,
    RawUpstreamFactory,
    RecordingServer,
    UpstreamFactory,
    echo,
    free_port,
    to_toml,
)
from webserver import Handler

from gateway import Gateway

pytest_plugins = ["teardown_guard"]  # a time limit on every teardown, also after a failure

READY_TIMEOUT = 20.0  # seconds for a subprocess to answer /healthz (spawned workers are slow)

# blockbuster: a blocking call (sync I/O, time.sleep, ...) made on an event loop's thread with
# one of these packages on the stack fails with BlockingError. They are the code that handles
# a request; tests and fixtures themselves may block.
REQUEST_PATH = ["gateway", "quart", "hypercorn", "werkzeug", "aiohttp", "httpx"]
BLOCKING_ALLOWED = [  # (file, functions): blocking below these frames is fine
    ("gateway/app.py", ["__init__"]),  # building a Gateway (config file, Quart app): start-up
    ("redis/utils.py", ["get_lib_version"]),  # redis-py reads its version per new connection
    ("prometheus_client/process_collector.py", ["collect"]),  # /proc/self: memory, no disk
]


@pytest.fixture(autouse=True, scope="session")
def no_blocking_on_the_event_loop() -> Iterator[BlockBuster]:
    with blockbuster_ctx(REQUEST_PATH) as detector:
        for function in detector.functions.values():
            for filename, names in BLOCKING_ALLOWED:
                function.can_block_in(filename, names)
        yield detector


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamFactory]:
    servers: list[RecordingServer] = []

    async def start(handler: Handler = echo) -> RecordingServer:
        server = RecordingServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
    errors = [error for server in servers for error in server.errors]
    assert not errors, "an upstream handler raised:\n" + "\n".join(errors)


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstreamFactory]:
    servers: list[RawServer] = []

    async def start(handler: RawHandler) -> RawServer:
        server = RawServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway_client() -> AsyncIterator[GatewayClientFactory]:
    async with AsyncExitStack() as stack:

        async def start(config: Mapping[str, Any] | Gateway | Quart) -> TestClientProtocol:
            if isinstance(config, Quart):
                app = config
            elif isinstance(config, Gateway):
                app = config.app
            else:
                app = Gateway(config).app
            test_app = app.test_app()
            await test_app.startup()  # runs before_serving: upstream clients open
            stack.push_async_callback(test_app.shutdown)
            client: TestClientProtocol = test_app.test_client()
            return client

        yield start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        yield client


@pytest.fixture
async def hypercorn_server(tmp_path: Path) -> AsyncIterator[HypercornFactory]:
    servers: list[LiveServer] = []
    readers: list[asyncio.Task[None]] = []

    async def start(config: str | Path | Mapping[str, Any], *,
                    command: Sequence[str] | None = None,
                    env: Mapping[str, str] | None = None,
                    cwd: Path = REPO, ready: bool = True) -> LiveServer:
        if isinstance(config, Mapping):
            config = to_toml(config, tmp_path / f"gateway-{len(servers)}.toml")
        config_path = str(cwd / config)  # relative paths are the server's, from its cwd
        port = free_port()
        argv = command or [sys.executable, "-m", "gateway", "serve", "--config", "{config}",
                           "--bind", "127.0.0.1:{port}"]
        argv = [a.replace("{config}", config_path).replace("{port}", str(port)) for a in argv]
        full_env = {**os.environ, "GATEWAY_CONFIG": config_path, "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        # Its own session, so that stopping it also stops the worker processes it spawns.
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=cwd, env=full_env, start_new_session=True)
        server = LiveServer(process, port)
        servers.append(server)
        readers.append(asyncio.create_task(server._collect()))
        if ready:
            await wait_ready(server)
        return server

    yield start
    for server in servers:
        await _stop(server.process)
    for reader in readers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)


async def wait_ready(server: LiveServer, path: str = "/healthz") -> None:
    """Poll `path` until it answers 200; fail with the server's output if it never does."""
    give_up = time.monotonic() + READY_TIMEOUT
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < give_up:
            if server.process.returncode is not None:
                pytest.fail(f"server exited with {server.process.returncode}:\n"
                            f"{server.output()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(server.url + path)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    pytest.fail(f"server not ready after {READY_TIMEOUT}s:\n{server.output()}")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:  # the leader is not reaped yet, so its group id is still ours
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
