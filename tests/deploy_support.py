"""Debian's `nginx`, run in the foreground with `deploy/nginx.conf`, for the deployment tests.

The conf is the one the README documents, as shipped: only its addresses change (the
listening port and the two gateway processes', all random free loopback ports). The
substitution fails loudly if the file no longer has the lines it expects, so a conf that
drifts from its test cannot pass unnoticed. nginx runs with its own prefix (a temp
directory: pid file, logs, temp paths) and `daemon off`, and is stopped with SIGQUIT
(graceful) at the end.

Skipped (with the reason) when nginx is missing, except under CI=true, where that is a
failure: `.ci/run` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from support import REPO, LiveServer, free_port

NGINX_CONF = REPO / "deploy" / "nginx.conf"
DEBIAN_NGINX = "/usr/sbin/nginx"
START_TIMEOUT = 10.0
LISTEN = "listen 127.0.0.1:8080;"
GATEWAYS = ("server 127.0.0.1:8001;", "server 127.0.0.1:8002;")


def nginx_binary() -> str:
    path = shutil.which("nginx") or (DEBIAN_NGINX if Path(DEBIAN_NGINX).exists() else None)
    if path is None:
        message = "nginx is not installed (apt-get install nginx)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def render_conf(port: int, gateway_ports: Sequence[int]) -> str:
    """deploy/nginx.conf with our addresses in place of its own."""
    text = NGINX_CONF.read_text()
    lines = [LISTEN, *GATEWAYS]
    for line in lines:
        assert text.count(line) == 1, f"deploy/nginx.conf no longer has {line!r} once"
    assert len(gateway_ports) == len(GATEWAYS)
    text = text.replace(LISTEN, f"listen 127.0.0.1:{port};")
    for line, gateway_port in zip(GATEWAYS, gateway_ports, strict=True):
        text = text.replace(line, f"server 127.0.0.1:{gateway_port};")
    return text


class Nginx:
    """One foreground nginx; `url` is where clients talk to it."""

    def __init__(self, binary: str, prefix: Path, gateway_ports: Sequence[int]) -> None:
        self.binary = binary
        self.prefix = prefix
        self.port = free_port()
        self.conf = prefix / "nginx.conf"
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        (prefix / "tmp").mkdir(exist_ok=True)
        self.conf.write_text(render_conf(self.port, gateway_ports))
        self.process: asyncio.subprocess.Process | None = None
        self._stderr = (prefix / "logs" / "stderr.log").open("wb")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> str:
        path = self.prefix / "logs" / "access.log"
        return path.read_text() if path.exists() else ""

    def _argv(self) -> list[str]:
        directives = "daemon off;"
        if os.geteuid() == 0:
            # As root, nginx's workers would switch to `nobody`, who cannot enter pytest's
            # private temp directories (mode 0700) that hold the prefix.
            directives += " user root;"
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr",
                "-g", directives]

    async def start(self) -> None:
        check = await asyncio.create_subprocess_exec(
            *self._argv(), "-t", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        out, _ = await check.communicate()
        assert check.returncode == 0, f"nginx -t refused deploy/nginx.conf:\n{out.decode()}"
        self.process = await asyncio.create_subprocess_exec(
            *self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + START_TIMEOUT
        while loop.time() < give_up:
            if self.process.returncode is not None:
                pytest.fail(f"nginx exited with {self.process.returncode}:\n{self.errors()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return
        pytest.fail(f"nginx did not listen on {self.port}:\n{self.errors()}")

    def errors(self) -> str:
        path = self.prefix / "logs" / "stderr.log"
        return path.read_text() if path.exists() else ""

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)  # fast shutdown: nothing to finish in a test
            try:
                await asyncio.wait_for(process.wait(), START_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._stderr.close()


@asynccontextmanager
async def running_nginx(prefix: Path, gateway_ports: Sequence[int]) -> AsyncIterator[Nginx]:
    nginx = Nginx(nginx_binary(), prefix, gateway_ports)
    await nginx.start()
    try:
        yield nginx
    finally:
        await nginx.stop()


@asynccontextmanager
async def running_gateway(config: Path) -> AsyncIterator[LiveServer]:
    """`gateway serve --config config` on a free port, until the block ends.

    The conftest's `hypercorn_server` is per test; this one may live for a module.
    """
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        "--bind", f"127.0.0.1:{port}", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = LiveServer(process, port)
    reader = asyncio.create_task(server._collect())
    try:
        await _wait_ready(server)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), START_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)


async def _wait_ready(server: LiveServer) -> None:
    give_up = time.monotonic() + 2 * START_TIMEOUT
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < give_up:
            if server.process.returncode is not None:
                pytest.fail(f"gateway exited with {server.process.returncode}:\n"
                            f"{server.output()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(server.url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    pytest.fail(f"gateway not ready:\n{server.output()}")
