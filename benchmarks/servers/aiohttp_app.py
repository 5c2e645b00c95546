"""The fastest common pure-Python stack: aiohttp.web with one aiohttp ClientSession, on uvloop.

UPSTREAM=http://127.0.0.1:9001 python benchmarks/servers/aiohttp_app.py --port 8002
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9001")
# Upstream calls per request (the width curve); 3 = the usual /a, /b, /c fan-out.
CALLS = int(os.environ.get("CALLS", "3"))
SOURCES = [
    ("abc"[i % 3], "abc"[i % 3] if CALLS <= 3 else f"{'abc'[i % 3]}{i}") for i in range(CALLS)
]  # (path prefix, key in the reply)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(base_url=UPSTREAM) as session:
        app[SESSION] = session
        yield


async def _get(session: aiohttp.ClientSession, path: str) -> object:
    async with session.get(path, raise_for_status=True) as response:
        return await response.json()


async def fanout(request: web.Request) -> web.Response:
    item_id = request.match_info["item_id"]
    session = request.app[SESSION]
    replies = await asyncio.gather(*(_get(session, f"/{src}/{item_id}") for src, _ in SOURCES))
    return web.json_response({key: r for (_, key), r in zip(SOURCES, replies, strict=True)})


def make_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(_session)
    app.router.add_get(r"/fanout/{item_id:\d+}", fanout)
    return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8002")))
    port = parser.parse_args().port
    uvloop.run(_serve(port))


if __name__ == "__main__":
    main()
