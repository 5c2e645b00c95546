"""The test upstreams every end-to-end test relies on: `webserver.WebServer` and `RawServer`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from support import RawServer, echo
from webserver import Handler, Request, Response, WebServer, bytes_response, json_response


@pytest.fixture
async def server() -> AsyncIterator[WebServer]:
    async with WebServer(echo) as srv:
        yield srv


@pytest.fixture
async def client(server: WebServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as c:
        yield c


async def _raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    reply = await asyncio.wait_for(reader.read(), 5)  # until EOF: each request closes
    writer.close()
    await writer.wait_closed()
    return reply


async def test_listens_on_a_random_loopback_port(server: WebServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


async def test_handler_sees_raw_path_and_parsed_query(
    server: WebServer, client: httpx.AsyncClient
) -> None:
    response = await client.get("/a%20b/%2e%2e/c?x=1&y=&x=2")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["method"] == "GET"
    assert data["path"] == "/a%20b/%2e%2e/c"
    assert data["raw_query"] == "x=1&y=&x=2"
    assert data["query"] == {"x": "2", "y": ""}
    assert server.requests == 1


async def test_dot_segments_and_double_slashes_arrive_as_sent(server: WebServer) -> None:
    reply = await _raw_exchange(server.port, b"GET //a/../b HTTP/1.1\r\nhost: x\r\n"
                                             b"connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b'"path":"//a/../b"' in reply


async def test_request_bodies_are_read_before_the_handler(client: httpx.AsyncClient) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"hello ", b"chunked ", b"world"):
            yield part

    plain = (await client.post("/items", content=b"x" * 2_000_000)).json()
    chunked = (await client.post("/stream", content=parts())).json()
    assert (plain["method"], len(plain["body"])) == ("POST", 2_000_000)
    assert chunked["headers"]["transfer-encoding"] == "chunked"
    assert chunked["body"] == "hello chunked world"


async def test_headers_are_lower_cased_latin1_and_may_be_long() -> None:
    seen: list[Request] = []

    async def keep(request: Request) -> Response:
        seen.append(request)
        return json_response({})

    async with WebServer(keep) as srv:
        reply = await _raw_exchange(srv.port, b"GET / HTTP/1.1\r\nhost: x\r\nX-Tenant: caf\xe9\r\n"
                                              b"x-big: " + b"a" * 30_000 + b"\r\n"
                                              b"connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert seen[0].headers["x-tenant"] == "caf\xe9"
    assert len(seen[0].headers["x-big"]) == 30_000


async def test_replies_keep_status_headers_and_bytes() -> None:
    async def plain(request: Request) -> Response:
        if request.path == "/typed":
            return bytes_response(b"<x/>", 299, {"Content-Type": "text/xml", "x-a": "1"})
        return bytes_response(b"text", 418, [("x-a", "1"), ("x-a", "2")], content_type="text/plain")

    async with WebServer(plain) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        typed, teapot = await c.get("/typed"), await c.get("/")
    assert (typed.status_code, typed.headers["content-type"], typed.content) == (
        299, "text/xml", b"<x/>")
    assert (teapot.status_code, teapot.content) == (418, b"text")
    assert teapot.headers["content-type"].startswith("text/plain")
    assert teapot.headers.get_list("x-a") == ["1", "2"]


async def test_handler_exception_gives_500_json_and_the_server_goes_on() -> None:
    async def broken(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("kaput")
        return json_response({"ok": True})

    async with WebServer(broken) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        response = await c.get("/boom")
        assert response.status_code == 500
        assert response.json() == {"error": "RuntimeError: kaput"}
        assert (await c.get("/fine")).json() == {"ok": True}
        assert srv.requests == 2
    assert len(srv.errors) == 1
    assert "RuntimeError: kaput" in srv.errors[0]


def _slow(started: asyncio.Event, saw_cancel: asyncio.Event) -> Handler:
    async def slow(request: Request) -> Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return json_response({})

    return slow


async def test_client_disconnect_cancels_the_handler_and_counts_it() -> None:
    started, saw_cancel = asyncio.Event(), asyncio.Event()
    async with WebServer(_slow(started, saw_cancel)) as srv, \
            httpx.AsyncClient(base_url=srv.url) as c:
        call = asyncio.create_task(c.get("/slow"))
        await asyncio.wait_for(started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(saw_cancel.wait(), 5)
        assert (srv.requests, srv.cancelled) == (1, 1)


async def test_close_cancels_running_handlers_without_counting_them() -> None:
    started, saw_cancel = asyncio.Event(), asyncio.Event()
    srv = WebServer(_slow(started, saw_cancel))
    await srv.start()
    async with httpx.AsyncClient(base_url=srv.url) as c:
        call = asyncio.create_task(c.get("/slow"))
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(srv.close(), 5)
        assert saw_cancel.is_set()
        assert srv.cancelled == 0
        with pytest.raises(httpx.RemoteProtocolError):
            await call


@pytest.mark.parametrize(
    "raw",
    [b"this is not http\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ntruncated"],
    ids=["garbage", "truncated"],
)
async def test_raw_server_sends_replies_no_real_server_would(raw: bytes) -> None:
    async def faulty(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)

    srv = RawServer(faulty)
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get("/")
        assert srv.connections == 1
    finally:
        await srv.close()
