"""A burst: N requests written at once over N warm keep-alive connections (issue 14 item 4).

Used by benchmarks/batching.py and tests/test_batch_burst.py. Each connection is
opened and warmed with one request first (so no connect or first-request cost
falls inside the burst); then every request is written before any answer is
read, which is what "20 requests fired at once" means to the server: they all
arrive within a fraction of a millisecond.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import h11
import httpx


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time (h11)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._h11 = h11.Connection(h11.CLIENT)
        host, port = writer.get_extra_info("peername")[:2]
        self._host = f"{host}:{port}"

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, path: str) -> None:
        """Queue the request on the socket (written at once; no wait)."""
        request = h11.Request(method="GET", target=path, headers=[("Host", self._host)])
        self._writer.write(self._h11.send(request) + self._h11.send(h11.EndOfMessage()))

    async def receive(self) -> tuple[int, bytes]:
        """-> (status, body) of the answer to the last request sent."""
        status, body = 0, bytearray()
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self._h11.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._h11.start_next_cycle()
                return status, bytes(body)

    async def get(self, path: str) -> tuple[int, bytes]:
        self.send(path)
        await self._writer.drain()
        return await self.receive()

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def burst(
    host: str, port: int, paths: list[str], warm: str, hold: int | None = None
) -> list[tuple[int, bytes]]:
    """Open len(paths) connections, GET `warm` on each, then fire `paths` at once.

    `hold`: a process group id (the server's own session) that is stopped (SIGSTOP)
    while the requests are written and continued after, so that they reach the server
    in one piece even when this client is descheduled between two writes (a busy
    machine): the kernel buffers them, and the server finds all of them readable."""
    answers, _ = await timed_burst(host, port, paths, warm, hold)
    return answers


async def timed_burst(
    host: str, port: int, paths: list[str], warm: str, hold: int | None = None
) -> tuple[list[tuple[int, bytes]], float]:
    """`burst`, and the seconds from the first request written to the last answer read."""
    conns = [await Connection.open(host, port) for _ in paths]
    try:
        for conn in conns:
            status, body = await conn.get(warm)
            if status != 200:
                raise RuntimeError(f"warm-up {warm} answered {status}: {body[:200]!r}")
        start = time.perf_counter()
        if hold is not None:
            os.killpg(hold, signal.SIGSTOP)
        try:
            for conn, path in zip(conns, paths, strict=True):
                conn.send(path)  # all written before any is read
        finally:
            if hold is not None:
                os.killpg(hold, signal.SIGCONT)
        answers = list(await asyncio.gather(*(conn.receive() for conn in conns)))
        return answers, time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.close()


async def httpx_burst(base: str, paths: list[str], warm: str) -> tuple[list[int], float]:
    """The same burst from an httpx.AsyncClient (`asyncio.gather` over a warm pool of
    len(paths) connections): a client that takes ~0.2 ms of its own CPU per request, so
    the requests reach the server spread out. -> (statuses, seconds)."""
    limits = httpx.Limits(max_connections=len(paths), max_keepalive_connections=len(paths))
    async with httpx.AsyncClient(base_url=base, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(client.get(warm) for _ in paths))
        start = time.perf_counter()
        responses = await asyncio.gather(*(client.get(p) for p in paths))
        return [r.status_code for r in responses], time.perf_counter() - start
