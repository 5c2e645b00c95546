"""A burst: N requests written at once over N warm keep-alive connections (issue 14 item 4).

Used by benchmarks/batching.py and tests/test_batch.py. Each connection is
opened and warmed with one request first (so no connect or first-request cost
falls inside the burst); then every request is written before any answer is
read, which is what "20 requests fired at once" means to the server: they all
arrive within a fraction of a millisecond.

The same burst from ordinary async clients, for comparison: aiohttp (one
session), httpx with one client per connection, and httpx with one client (one
pool), whose own CPU per request spreads the requests out (`httpx_burst`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

import aiohttp
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
    answers, wall, _, _ = await _raw(host, port, paths, warm, hold)
    return answers, wall


async def _raw(
    host: str, port: int, paths: list[str], warm: str, hold: int | None
) -> tuple[list[tuple[int, bytes]], float, float, float]:
    """-> (answers, seconds to the last answer, seconds to the last request written,
    CPU seconds of the burst)."""
    conns = [await Connection.open(host, port) for _ in paths]
    try:
        for conn in conns:
            status, body = await conn.get(warm)
            if status != 200:
                raise RuntimeError(f"warm-up {warm} answered {status}: {body[:200]!r}")
        cpu, start = time.process_time(), time.perf_counter()
        if hold is not None:
            os.killpg(hold, signal.SIGSTOP)
        try:
            for conn, path in zip(conns, paths, strict=True):
                conn.send(path)  # all written before any is read
        finally:
            if hold is not None:
                os.killpg(hold, signal.SIGCONT)
        written = time.perf_counter() - start
        answers = list(await asyncio.gather(*(conn.receive() for conn in conns)))
        return answers, time.perf_counter() - start, written, time.process_time() - cpu
    finally:
        for conn in conns:
            await conn.close()


@dataclass
class Fired:
    """What a client did in one burst, besides the answers."""

    statuses: list[int]
    wall: float  # seconds, first request started to last answer read
    written: float  # seconds, first request started to last request's bytes written
    cpu: float  # this process's CPU seconds over the burst (process_time)
    connects: int  # connections opened during the burst: 0 when the pool was warm


async def raw_burst(host: str, port: int, paths: list[str], warm: str,
                    hold: int | None = None) -> Fired:
    """`timed_burst` as a `Fired`."""
    answers, wall, written, cpu = await _raw(host, port, paths, warm, hold)
    return Fired([status for status, _ in answers], wall, written, cpu, 0)


async def httpx_burst(base: str, paths: list[str], warm: str) -> Fired:
    """The burst from one httpx.AsyncClient (`asyncio.gather` over its pool of
    len(paths) connections, warmed by `warm` on each).

    httpcore 1.0's pool walks every connection and queued request on each request
    it assigns (and polls each idle socket), so at 20 in flight this client spends
    ~3 ms of CPU per request before it writes it: the requests leave it one by one."""
    limits = httpx.Limits(max_connections=len(paths), max_keepalive_connections=len(paths))
    async with httpx.AsyncClient(base_url=base, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(client.get(warm) for _ in paths))
        return await _httpx_fire([client] * len(paths), paths)


async def httpx_per_connection_burst(base: str, paths: list[str], warm: str) -> Fired:
    """The burst from len(paths) httpx.AsyncClients of one warm connection each, so
    that no pool has more than one connection to walk: httpx fired at once."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, limits=limits, trust_env=False))
            for _ in paths
        ]
        await asyncio.gather(*(client.get(warm) for client in clients))
        return await _httpx_fire(clients, paths)


async def _httpx_fire(clients: list[httpx.AsyncClient], paths: list[str]) -> Fired:
    written: list[float] = []
    connects = 0

    async def trace(event: str, info: dict[str, object]) -> None:
        nonlocal connects
        if event == "http11.send_request_body.complete":
            written.append(time.perf_counter())
        elif event == "connection.connect_tcp.started":
            connects += 1

    requests = [client.build_request("GET", path, extensions={"trace": trace})
                for client, path in zip(clients, paths, strict=True)]
    cpu, start = time.process_time(), time.perf_counter()
    responses = await asyncio.gather(
        *(client.send(request) for client, request in zip(clients, requests, strict=True)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Fired([r.status_code for r in responses], wall, max(written) - start, cpu,
                 connects)


async def aiohttp_burst(base: str, paths: list[str], warm: str) -> Fired:
    """The burst from one aiohttp.ClientSession (`asyncio.gather` over a pool of
    len(paths) connections, warmed by `warm` on each)."""
    written: list[float] = []
    connects = 0

    async def on_sent(session: object, context: object, params: object) -> None:
        written.append(time.perf_counter())

    async def on_connect(session: object, context: object, params: object) -> None:
        nonlocal connects
        connects += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(on_sent)
    tracing.on_connection_create_start.append(on_connect)
    connector = aiohttp.TCPConnector(limit=len(paths))
    async with aiohttp.ClientSession(base, connector=connector,
                                     trace_configs=[tracing]) as session:

        async def get(path: str) -> int:
            async with session.get(path) as response:
                await response.read()
                return response.status

        await asyncio.gather(*(get(warm) for _ in paths))
        written.clear()
        connects = 0
        cpu, start = time.process_time(), time.perf_counter()
        statuses = await asyncio.gather(*(get(path) for path in paths))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Fired(list(statuses), wall, max(written) - start, cpu, connects)
