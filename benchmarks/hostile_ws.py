"""The `/ws` flood: WebSocket clients that send as fast as they can and never read.

    python benchmarks/hostile_ws.py [--seconds 30] [--clients 4] [--json PATH]

Each client opens `/ws` on a raw socket with a small receive buffer, then writes
1 KiB text frames that are not JSON (each costs the gateway an `error` reply)
as fast as the socket takes them, and never reads a byte. Before the gateway
bounded its inbound side, 4 such clients took a worker from 59 MB to 916 MB in
37 s; now the client's writes stall once the socket buffers are full (TCP
backpressure) and RSS stays flat. `run_ws_flood` reports the gateway's RSS
before, at its peak and 5 s after the flood, and `/healthz` latency during it;
benchmarks/hostile.py imports it, tests/test_stream_bounds.py uses `flood`.
All traffic stays on 127.0.0.1 and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import httpx

REPO = Path(__file__).resolve().parent.parent
FRAME_BYTES = 1024
BATCH = 32  # frames per write: the client is never the bottleneck
CLIENT_RCVBUF = 8 * 1024  # bytes; the replies back up at once, as with a client that hangs
SETTLE_SECONDS = 5.0  # after the flood, before RSS "after" is read
CONFIG = """\
[upstreams.u]
url = "http://127.0.0.1:9"

[[endpoints]]
route = "/x"

  [[endpoints.calls]]
  name = "u"
  upstream = "u"
  path = "/"
"""


@dataclass(frozen=True, slots=True)
class FloodResult:
    sent_bytes: int  # what the socket accepted from this client
    longest_wait: float  # seconds of the longest write that waited: backpressure
    reset: bool  # the gateway closed the connection (a write failed)


def text_frame(payload: bytes) -> bytes:
    """One masked client text frame (RFC 6455 5.2); the all-zero mask leaves it as is."""
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def connect(host: str, port: int, path: str = "/ws"
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake on a socket with a small receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=CLIENT_RCVBUF)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
    return reader, writer


async def flood(host: str, port: int, seconds: float, payload: bytes = b"x" * FRAME_BYTES
                ) -> FloodResult:
    """Write `payload` frames (default: 1 KiB, not JSON) for `seconds`, never reading."""
    batch = text_frame(payload) * BATCH
    sent, longest, reset = 0, 0.0, False
    _, writer = await connect(host, port)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            while True:
                started = time.perf_counter()
                writer.write(batch)
                await writer.drain()  # waits while the gateway does not read: backpressure
                sent += len(batch)
                longest = max(longest, time.perf_counter() - started)
    except TimeoutError:
        longest = max(longest, time.perf_counter() - started)  # the write still waiting
    except ConnectionError:
        reset = True
    finally:
        writer.transport.abort()  # a hostile client does not say goodbye
    return FloodResult(sent, longest, reset)


def tree_rss_mib(pid: int) -> float:
    return sum(harness.rss_kib(p) for p in harness.process_tree(pid)) / 1024


async def run_ws_flood(*, url: str | None = None, pid: int | None = None, clients: int = 4,
                       seconds: float = 30.0, frame_bytes: int = FRAME_BYTES) -> dict[str, Any]:
    """Flood a gateway's `/ws`; starts `gateway serve` itself unless `url` and `pid` are given.

    RSS (MiB) is the gateway process and its children, sampled every 0.25 s;
    `/healthz` is asked every 0.2 s during the flood.
    """
    async with contextlib.AsyncExitStack() as stack:
        if url is None or pid is None:
            url, pid = await stack.enter_async_context(_gateway())
        split = httpx.URL(url)
        host, port = split.host, split.port or 80
        before = await asyncio.to_thread(tree_rss_mib, pid)
        samples: list[float] = [before]
        latencies: list[float] = []
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_sample_rss(pid, samples, stop))
            tg.create_task(_probe_healthz(url, latencies, stop))
            results = await asyncio.gather(
                *(flood(host, port, seconds, b"x" * frame_bytes) for _ in range(clients)))
            stop.set()
        await asyncio.sleep(SETTLE_SECONDS)
        after = await asyncio.to_thread(tree_rss_mib, pid)
    peak = max(samples)
    return {
        "name": "ws_flood",
        "clients": clients,
        "seconds": seconds,
        "frame_bytes": frame_bytes,
        "sent_mib": round(sum(r.sent_bytes for r in results) / 2**20, 1),
        "resets": sum(r.reset for r in results),
        "longest_write_wait_s": round(max(r.longest_wait for r in results), 2),
        "rss_mib": {"before": round(before, 1), "peak": round(peak, 1),
                    "after": round(after, 1)},
        "rss_growth_mib": round(peak - before, 1),
        "healthz_ms": _percentiles(latencies),
    }


async def _sample_rss(pid: int, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(await asyncio.to_thread(tree_rss_mib, pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _probe_healthz(url: str, latencies: list[float], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        while not stop.is_set():
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


def _percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(ordered), "p50": round(statistics.median(ordered), 1),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
            "max": round(ordered[-1], 1)}


@contextlib.asynccontextmanager
async def _gateway() -> Any:
    """`gateway serve` on a free port with a one-endpoint config; yields (url, pid)."""
    with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "gateway.log").open("wb") as log:
        config = Path(tmp) / "gateway.toml"
        config.write_text(CONFIG)
        port = harness.free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config),
            "--bind", f"127.0.0.1:{port}", cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(url, process, Path(log.name))
            yield url, process.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                os.killpg(process.pid, 9)
                await process.wait()


async def _wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        for _ in range(300):
            if process.returncode is not None:
                output = await asyncio.to_thread(log.read_text, errors="replace")
                raise RuntimeError(f"gateway serve exited with {process.returncode}:\n{output}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway serve did not answer /healthz within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--frame-bytes", type=int, default=FRAME_BYTES)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    result = asyncio.run(run_ws_flood(clients=args.clients, seconds=args.seconds,
                                      frame_bytes=args.frame_bytes))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
