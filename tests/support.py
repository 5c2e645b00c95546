"""Plain helpers for end-to-end tests: upstream handlers, a raw socket server, config builders.

The fixtures that start and stop things live in `conftest.py`; this module holds what
tests import by name (`from support import echo, make_config, ...`).

    the factory types of the fixtures in `conftest.py`, and `LiveServer`
    RecordingServer  a `webserver.WebServer` (aiohttp.web) that also keeps every request it
                     received (`seen`)
    RawServer        the raw-socket fault server, for replies no real server would send
                     (garbage, bad framing, drip-feed, endless chunked bodies): the handler
                     writes bytes to the socket itself
    echo, reply      handlers: echo the request as JSON / answer a fixed body after a delay
    make_config      a config dict (the TOML's shape) from servers and endpoint dicts
    to_toml          that dict as a TOML file, for `gateway serve --config`
    chromium_or_skip Debian's chromium for Playwright, or a skip (a failure under CI=true)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol
from webserver import Handler, Request, Response, WebServer, bytes_response, json_response

from gateway import Gateway

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class RecordingServer(WebServer):
    """A `WebServer` that records each request before its handler runs.

    `requests` counts requests, `cancelled` counts handlers cancelled because the client
    (the gateway) went away, `seen` holds the parsed requests (raw, still-encoded path).
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.seen: list[Request] = []

        async def record(request: Request) -> Response:
            self.seen.append(request)
            return await handler(request)

        super().__init__(record, host, port)

    @property
    def last(self) -> Request:
        assert self.seen, "the upstream received no request"
        return self.seen[-1]


async def echo(request: Request) -> Response:
    """Answers with what it received: method, raw path, query, headers, body."""
    body: Any = request.body.decode("utf-8", "replace")
    if request.headers.get("content-type", "").startswith("application/json") and body:
        body = json.loads(body)
    return json_response({
        "method": request.method,
        "path": request.path,
        "raw_query": request.raw_query,
        "query": request.query,
        "headers": request.headers,
        "body": body,
    })


def reply(body: Any = None, status: int = 200, delay: float = 0.0,
          headers: Mapping[str, str] | None = None, raw_body: bytes | None = None) -> Handler:
    """A handler that waits `delay` seconds, then answers `body` as JSON (or `raw_body`)."""

    async def handle(request: Request) -> Response:
        if delay:
            await asyncio.sleep(delay)
        if raw_body is not None:
            return bytes_response(raw_body, status, headers, content_type="text/plain")
        return json_response(body if body is not None else {"ok": True}, status, headers)

    return handle


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server whose handler writes the HTTP response bytes itself.

    For upstreams a real server cannot play: headers then a body that trickles forever.
    `connections` counts accepted connections, `bytes_sent` what handlers wrote through
    `send`, and `disconnected` is set when a write fails because the peer went away.
    """

    def __init__(self, handler: RawHandler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0
        self.bytes_sent = 0
        self.disconnected = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write and flush; raises `ConnectionError` once the gateway has hung up."""
        writer.write(data)
        await writer.drain()
        self.bytes_sent += len(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")  # the request head; these tests send no body
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            self._tasks.discard(task)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()


def contention() -> float:
    """Seconds this thread has so far spent ready to run but waiting for a CPU.

    The second field of /proc/thread-self/schedstat. On a busy machine (four engineers'
    suites on two cores) that wait stretches every wall-clock time a test measures; an
    elapsed time less the growth of `contention()` over it is what it would have been on
    an idle machine, so a bound asserted on that is the same bound, without the load.
    0.0 where the kernel does not say (no correction then).
    """
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def free_port() -> int:
    """A loopback port nothing listens on (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """A gateway subprocess listening on 127.0.0.1:`port`; `output()` is what it printed."""

    process: asyncio.subprocess.Process
    port: int
    _output: bytearray = field(default_factory=bytearray)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self._output.decode(errors="replace")

    async def _collect(self) -> None:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.read(65536):
            self._output += chunk


UpstreamFactory = Callable[..., Awaitable[RecordingServer]]
RawUpstreamFactory = Callable[[RawHandler], Awaitable[RawServer]]
GatewayClientFactory = Callable[[Mapping[str, Any] | Gateway | Quart],
                                Awaitable[TestClientProtocol]]
HypercornFactory = Callable[..., Awaitable[LiveServer]]

UpstreamSpec = str | WebServer | RawServer | Mapping[str, Any]


def make_config(upstreams: Mapping[str, UpstreamSpec], *endpoints: Mapping[str, Any],
                **gateway: Any) -> dict[str, Any]:
    """A config dict: `upstreams` maps names to a server, a URL or an upstream table
    (whose `url` may itself be a server); `gateway` holds `[gateway]` keys."""
    ups: dict[str, Any] = {}
    for name, spec in upstreams.items():
        table = dict(spec) if isinstance(spec, Mapping) else {"url": spec}
        url = table["url"]
        if isinstance(url, WebServer | RawServer):
            table["url"] = url.url
        ups[name] = table
    config: dict[str, Any] = {"upstreams": ups, "endpoints": [dict(e) for e in endpoints]}
    if gateway:
        config["gateway"] = gateway
    return config


def endpoint(route: str, *calls: Mapping[str, Any], **keys: Any) -> dict[str, Any]:
    """An `[[endpoints]]` table."""
    return {"route": route, "calls": [dict(c) for c in calls], **keys}


def call(name: str, upstream: str, path: str = "/", **keys: Any) -> dict[str, Any]:
    """An `[[endpoints.calls]]` table (`path` defaults to "/")."""
    return {"name": name, "upstream": upstream, "path": path, **keys}


def to_toml(config: Mapping[str, Any], path: Path) -> Path:
    """Write a config dict as TOML (inline tables; `None` values are left out)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in config.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_key(key: str) -> str:
    return json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                          for k, v in value.items() if v is not None)
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def chromium_or_skip() -> str:
    """The browser Playwright drives (never `playwright install`): Debian's chromium.

    Skips with the reason when it or the playwright package is missing, except under
    CI=true, where a browser test that cannot run is a failure.
    """
    reason = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if reason is None and found is None:
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test, but {reason}")
        pytest.skip(reason)
    assert found is not None
    return found
