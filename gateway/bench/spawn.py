"""A gateway in a subprocess for `gateway bench --config`: started on a free loopback
port, entered once `/healthz` answers, stopped (SIGTERM, then SIGKILL) afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Sequence

import httpx

READY_TIMEOUT = 20.0  # seconds for a spawned gateway to answer /healthz
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_POLL_INTERVAL = 0.05
_STDERR_TAIL = 4096  # bytes of a spawned gateway's stderr kept to explain an early exit


class _GatewayStartError(Exception):
    """The gateway subprocess exited or never became healthy: there is nothing to bench."""


def free_port() -> int:
    """A port free right now; the tiny race until the child binds it is acceptable for a tool."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_argv(config: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "gateway", "serve",
        "--config", config, "--bind", f"127.0.0.1:{port}", "--workers", "1",
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def spawned(
    argv: Sequence[str], base_url: str, *, ready_timeout: float = READY_TIMEOUT
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `argv` until the block ends, entering only once `base_url/healthz` answers 200.

    Stderr is drained all along (a full pipe would stall the server mid-bench) and its
    tail kept, so an early exit can be explained in one line.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    tail = bytearray()
    drain = asyncio.create_task(_drain(proc, tail))
    try:
        await _wait_healthy(proc, base_url, ready_timeout)
        if proc.returncode is not None:
            # bounded: a grandchild may still hold the pipe open
            await asyncio.wait([drain], timeout=1.0)
            raise _GatewayStartError(
                f"gateway exited with code {proc.returncode} before it was ready: {_one_line(tail)}"
            )
        yield proc
    finally:
        await _stop(proc)
        drain.cancel()
        await asyncio.wait([drain])


async def _drain(proc: asyncio.subprocess.Process, tail: bytearray) -> None:
    assert proc.stderr is not None
    while chunk := await proc.stderr.read(65536):
        tail += chunk
        del tail[:-_STDERR_TAIL]


def _one_line(output: bytes | bytearray) -> str:
    lines = [line.strip() for line in output.decode(errors="replace").splitlines()]
    said = "; ".join(line for line in lines if line)
    return ("..." + said[-500:] if len(said) > 500 else said) or "nothing on stderr"


async def _wait_healthy(
    proc: asyncio.subprocess.Process, base_url: str, ready_timeout: float
) -> None:
    """Poll /healthz until 200 or until the process exits (the caller reports that)."""
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        try:
            async with asyncio.timeout(ready_timeout):
                while proc.returncode is None:
                    with contextlib.suppress(httpx.HTTPError):  # not listening yet
                        response = await client.get(f"{base_url}/healthz")
                        if response.status_code == 200:
                            return
                    await asyncio.sleep(_POLL_INTERVAL)
        except TimeoutError:
            raise _GatewayStartError(
                f"gateway did not answer GET /healthz with 200 within {ready_timeout:g} s"
            ) from None


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM for a graceful shutdown; SIGKILL if it is not gone after the grace period."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(STOP_GRACE):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
