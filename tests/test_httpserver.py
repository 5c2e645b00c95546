"""The loopback HTTP server that every other end-to-end test uses as its upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from gateway._httpserver import HTTPServer, Request, Response, json_response


async def echo(request: Request) -> Response:
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "raw_query": request.raw_query,
            "headers": request.headers,
            "body": request.body.decode(),
        },
        headers={"x-echo": "yes"},
    )


@pytest.fixture
async def server() -> AsyncIterator[HTTPServer]:
    async with HTTPServer(echo) as srv:
        yield srv


@pytest.fixture
async def client(server: HTTPServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url) as c:
        yield c


async def test_get_keeps_raw_path_and_parses_query(
    server: HTTPServer, client: httpx.AsyncClient
) -> None:
    response = await client.get("/a%20b/c?x=1&y=&x=2")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-echo"] == "yes"
    data = response.json()
    assert data["method"] == "GET"
    assert data["path"] == "/a%20b/c"
    assert data["raw_query"] == "x=1&y=&x=2"
    assert data["query"] == {"x": "2", "y": ""}
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


async def test_post_body_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", content=b'{"a": 1}')
    assert response.json()["method"] == "POST"
    assert response.json()["body"] == '{"a": 1}'


async def test_chunked_request_body_is_decoded(client: httpx.AsyncClient) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"hello ", b"chunked ", b"world"):
            yield part

    response = await client.post("/stream", content=parts())
    data = response.json()
    assert data["headers"]["transfer-encoding"] == "chunked"
    assert data["body"] == "hello chunked world"


async def test_header_names_are_lower_cased(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers={"X-Custom-Thing": "Mixed Case Value"})
    assert response.json()["headers"]["x-custom-thing"] == "Mixed Case Value"


async def test_keep_alive_reuses_one_connection(
    server: HTTPServer, client: httpx.AsyncClient
) -> None:
    await client.get("/one")
    await client.get("/two")
    assert (server.requests, server.connections) == (2, 1)


async def test_connection_close_is_honoured(server: HTTPServer, client: httpx.AsyncClient) -> None:
    response = await client.get("/one", headers={"connection": "close"})
    assert response.headers["connection"] == "close"
    await client.get("/two")
    assert server.connections == 2


async def test_handler_exception_gives_500_json_and_connection_survives() -> None:
    async def broken(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("kaput")
        return json_response({"ok": True})

    async with HTTPServer(broken) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        response = await c.get("/boom")
        assert response.status_code == 500
        assert "kaput" in response.json()["error"]
        assert (await c.get("/fine")).json() == {"ok": True}
        assert srv.connections == 1


async def test_content_type_none_and_custom_status() -> None:
    async def plain(request: Request) -> Response:
        return Response(status=299, body=b"text", content_type=None)

    async with HTTPServer(plain) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        response = await c.get("/")
        assert response.status_code == 299
        assert "content-type" not in response.headers
        assert response.headers["content-length"] == "4"
        assert response.content == b"text"


@pytest.mark.parametrize(
    ("raw", "close_after"),
    [
        (b"this is not http\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ntruncated", True),
    ],
)
async def test_raw_fault_responses_break_the_client(raw: bytes, close_after: bool) -> None:
    async def faulty(request: Request) -> Response:
        return Response(raw=raw, close_after=close_after)

    async with HTTPServer(faulty) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/")


async def test_raw_bytes_are_sent_verbatim() -> None:
    raw = b"HTTP/1.1 203 Whatever\r\nx-raw: 1\r\ncontent-length: 2\r\n\r\nhi"

    async def verbatim(request: Request) -> Response:
        return Response(raw=raw)

    async with HTTPServer(verbatim) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        response = await c.get("/")
        assert (response.status_code, response.headers["x-raw"], response.text) == (203, "1", "hi")


async def test_client_disconnect_cancels_the_handler() -> None:
    started, saw_cancel = asyncio.Event(), asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return json_response({})

    async with HTTPServer(slow) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        call = asyncio.create_task(c.get("/slow"))
        await asyncio.wait_for(started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(saw_cancel.wait(), 5)
        assert srv.cancelled == 1


async def test_close_cancels_running_handlers_without_counting_them() -> None:
    started, saw_cancel = asyncio.Event(), asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return json_response({})

    srv = HTTPServer(slow)
    await srv.start()
    async with httpx.AsyncClient(base_url=srv.url) as c:
        call = asyncio.create_task(c.get("/slow"))
        await asyncio.wait_for(started.wait(), 5)
        await srv.close()
        assert saw_cancel.is_set()
        assert srv.cancelled == 0
        with pytest.raises(httpx.RemoteProtocolError):
            await call


async def test_oversized_headers_get_431_and_close(server: HTTPServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)  # until EOF: the server closes
    writer.close()
    await writer.wait_closed()
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in reply
    assert server.requests == 0


async def test_http10_closes_after_response(server: HTTPServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /old HTTP/1.0\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert orjson.loads(body)["path"] == "/old"
