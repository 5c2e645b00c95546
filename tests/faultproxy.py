"""An asyncio TCP proxy that puts network faults between the gateway and a real upstream.

    proxy = FaultProxy(upstream.port); await proxy.start()
    proxy.fault = Fault(latency=2.0)        # every new exchange from now on
    ... point the gateway's upstream url at proxy.url ...
    await proxy.close()

Faults act on the response direction (what the gateway reads), per connection:

    latency      seconds before the first response byte is forwarded
    bandwidth    response bytes per second (sent in 20 slices a second)
    drip         seconds between single response bytes
    reset_after  forward this many response bytes, then reset the connection (RST)
    close_after_headers  forward the response head, then close (FIN) before the body
    blackhole    accept and read, never connect upstream, never answer
    garbage      answer these bytes instead of the upstream's response, keep the socket open

`connections` counts accepted connections and `bytes_in` the request bytes received, so a
test can tell that calls never reached the proxy (a breaker shedding them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

_READ = 64 * 1024


@dataclass(frozen=True)
class Fault:
    latency: float = 0.0
    bandwidth: int | None = None
    drip: float | None = None
    reset_after: int | None = None
    close_after_headers: bool = False
    blackhole: bool = False
    garbage: bytes | None = None


CLEAN = Fault()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.fault = CLEAN
        self.connections = 0
        self.bytes_in = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        fault = self.fault
        try:
            if fault.blackhole:
                await self._count(reader)
            elif fault.garbage is not None:
                await self._garbage(reader, writer, fault.garbage)
            else:
                await self._proxy(reader, writer, fault)
        except* (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # a fault or a side leaving: this connection is over
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _count(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(_READ):
            self.bytes_in += len(data)

    async def _garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       garbage: bytes) -> None:
        first = await reader.read(_READ)
        self.bytes_in += len(first)
        writer.write(garbage)
        await writer.drain()
        await self._count(reader)  # stay open: the client must fail on the bytes themselves

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     fault: Fault) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._requests(reader, up_writer))
                tg.create_task(self._responses(up_reader, writer, fault))
        finally:
            up_writer.close()

    async def _requests(self, reader: asyncio.StreamReader,
                        up_writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(_READ):
            self.bytes_in += len(data)
            up_writer.write(data)
            await up_writer.drain()
        raise ConnectionResetError  # the client left: tear the pair down

    async def _responses(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         fault: Fault) -> None:
        sent = 0
        head = b""
        first = True
        while data := await up_reader.read(_READ):
            if first and fault.latency:
                await asyncio.sleep(fault.latency)
            first = False
            if fault.close_after_headers:
                head += data
                end = head.find(b"\r\n\r\n")
                if end >= 0:
                    writer.write(head[: end + 4])
                    await writer.drain()
                    raise ConnectionResetError  # closes both sides with FIN
                continue
            if fault.reset_after is not None and sent + len(data) >= fault.reset_after:
                writer.write(data[: fault.reset_after - sent])
                await writer.drain()
                _reset(writer)
                raise ConnectionResetError
            await self._send(writer, data, fault)
            sent += len(data)
        raise ConnectionResetError

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, fault: Fault) -> None:
        if fault.drip is not None:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(fault.drip)
        elif fault.bandwidth is not None:
            step = max(1, fault.bandwidth // 20)
            for i in range(0, len(data), step):
                writer.write(data[i : i + step])
                await writer.drain()
                await asyncio.sleep(0.05)
        else:
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: linger on, timeout zero."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    transport.abort()
