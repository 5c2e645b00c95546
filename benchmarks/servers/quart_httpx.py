"""The stack's floor: a minimal hand-written Quart view over one shared httpx.AsyncClient.

Served by Hypercorn with the uvloop worker class:

    UPSTREAM=http://127.0.0.1:9001 PYTHONPATH=benchmarks/servers \
        hypercorn --worker-class uvloop --bind 127.0.0.1:8001 quart_httpx:app

`HTTPX_TRANSPORT=aiohttp` swaps httpx's own transport (httpcore) for
httpx-aiohttp's AiohttpTransport; everything else stays the same.
"""

from __future__ import annotations

import asyncio
import os

import httpx
from quart import Quart

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9001")
TRANSPORT = os.environ.get("HTTPX_TRANSPORT", "httpx")
# Upstream calls per request (the width curve); 3 = the usual /a, /b, /c fan-out.
CALLS = int(os.environ.get("CALLS", "3"))
SOURCES = [
    ("abc"[i % 3], "abc"[i % 3] if CALLS <= 3 else f"{'abc'[i % 3]}{i}") for i in range(CALLS)
]  # (path prefix, key in the reply)

app = Quart(__name__)


@app.before_serving
async def _open_client() -> None:
    transport: httpx.AsyncBaseTransport | None = None
    if TRANSPORT == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport()
    app.config["CLIENT"] = httpx.AsyncClient(base_url=UPSTREAM, transport=transport)


@app.after_serving
async def _close_client() -> None:
    await app.config["CLIENT"].aclose()


async def _get(client: httpx.AsyncClient, path: str) -> object:
    response = await client.get(path)
    response.raise_for_status()
    return response.json()


@app.get("/fanout/<int:item_id>")
async def fanout(item_id: int) -> dict[str, object]:
    client: httpx.AsyncClient = app.config["CLIENT"]
    replies = await asyncio.gather(*(_get(client, f"/{src}/{item_id}") for src, _ in SOURCES))
    return {key: r for (_, key), r in zip(SOURCES, replies, strict=True)}


if __name__ == "__main__":
    import argparse

    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8001")))
    config = Config()
    config.bind = [f"127.0.0.1:{parser.parse_args().port}"]
    uvloop.run(serve(app, config))
