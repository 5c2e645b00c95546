"""A real `redis-server` on a random loopback port, for the job-store tests.

Skipped (with the reason) when the binary is missing, except under CI=true,
where a missing Redis is a failure: CI installs it (`.ci/run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from support import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL; then as long again to reap it


def redis_binary() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _die_with_parent() -> list[str]:
    """util-linux's setpriv, so a test process that dies (teardown_guard) leaves no redis-server.

    PR_SET_PDEATHSIG fires when the thread that started it exits: the event loop's, the main
    thread of the test process.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class RedisServer:
    """One redis-server process; `stop()` and `start()` again keep its port (and lose data)."""

    def __init__(self, binary: str, workdir: Path, *, unix: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.socket = workdir / "r.sock" if unix else None  # also listening there
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket is not None, "started without unix=True"
        return f"unix://{self.socket}?db=0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *_die_with_parent(), self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning",
            *(["--unixsocket", str(self.socket)] if self.socket is not None else []),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await self._wait(up=True)
        except BaseException:  # never leave a server behind that no fixture will stop
            await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers: bounded, so a teardown cannot hang on it."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        await self._wait(up=False)

    async def _wait(self, up: bool) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + START_TIMEOUT
        while loop.time() < give_up:
            if await self._answers() == up:
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not {'start' if up else 'stop'}")

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()


@asynccontextmanager
async def running_redis(workdir: Path, *, unix: bool = False) -> AsyncIterator[RedisServer]:
    server = RedisServer(redis_binary(), workdir, unix=unix)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `condition()` holds; fail the test if it does not within `within` seconds."""
    give_up = time.monotonic() + within
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"condition still false after {within}s")
        await asyncio.sleep(0.01)
