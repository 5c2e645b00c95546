"""Which transport under `httpx.AsyncClient`? CPU time per upstream call, measured side by side.

Each variant makes the same 3-call fan-outs (concurrency 32) to one fast
local upstream running in its own process on the other core, and we read the
client process's CPU time (`time.process_time`), which is far less sensitive
than wall time to whatever else the machine is doing. Run:

    .venv/bin/python benchmarks/transport.py [--calls 6000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

# This checkout's `gateway` unless PYTHONPATH names another (an A/B of two revisions).
sys.path.insert(0 if not os.environ.get("PYTHONPATH") else len(sys.path),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UPSTREAM_CODE = """
import asyncio, sys, orjson, uvloop
from aiohttp import web
async def handler(req):
    body = orjson.dumps({"id": 7, "name": "Ada", "path": req.raw_path})
    return web.Response(body=body, content_type="application/json")
async def main():
    runner = web.ServerRunner(web.Server(handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Call = Callable[[str], Awaitable[bytes]]


async def _variant_httpx(sniffio: bool) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=32,
                                                   max_keepalive_connections=32),
                               trust_env=False, follow_redirects=False)

    async def call(url: str) -> bytes:
        async with client.stream("GET", url) as r:
            return b"".join([c async for c in r.aiter_bytes()])

    return call, client.aclose


async def _variant_httpx_aiohttp() -> tuple[Call, Callable[[], Awaitable[None]]]:
    from httpx_aiohttp import AiohttpTransport

    client = httpx.AsyncClient(transport=AiohttpTransport(trust_env=False), trust_env=False)

    async def call(url: str) -> bytes:
        async with client.stream("GET", url) as r:
            return b"".join([c async for c in r.aiter_bytes()])

    return call, client.aclose


async def _variant_ours() -> tuple[Call, Callable[[], Awaitable[None]]]:
    from gateway.transport import AiohttpTransport

    transport = AiohttpTransport(max_connections=32)
    client = httpx.AsyncClient(transport=transport, trust_env=False)

    async def call(url: str) -> bytes:
        async with client.stream("GET", url) as r:
            return b"".join([c async for c in r.aiter_bytes()])

    return call, client.aclose


async def _variant_ours_request() -> tuple[Call, Callable[[], Awaitable[None]]]:
    """Ours, with the httpx.Request built directly (skips build_request's merging)."""
    from gateway.transport import AiohttpTransport

    client = httpx.AsyncClient(transport=AiohttpTransport(max_connections=32), trust_env=False)
    headers = [("accept", "application/json")]

    async def call(url: str) -> bytes:
        response = await client.send(httpx.Request("GET", url, headers=headers), stream=True)
        try:
            return b"".join([c async for c in response.aiter_bytes()])
        finally:
            await response.aclose()

    return call, client.aclose


async def _variant_ours_transport() -> tuple[Call, Callable[[], Awaitable[None]]]:
    """Ours, through the transport interface directly (no client send pipeline)."""
    from gateway.transport import AiohttpTransport

    transport = AiohttpTransport(max_connections=32)
    headers = [("accept", "application/json")]

    async def call(url: str) -> bytes:
        response = await transport.handle_async_request(httpx.Request("GET", url,
                                                                      headers=headers))
        try:
            return b"".join([c async for c in response.aiter_bytes()])
        finally:
            await response.aclose()

    return call, transport.aclose


async def _variant_upstream(config: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The gateway's whole per-call path: `Upstream.call` (its layers and wire), metrics on."""
    from gateway.config import load_config
    from gateway.metrics import Metrics
    from gateway.upstream import Upstream

    base = os.environ["UPSTREAM"]
    raw = {"gateway": {"timeout": 5.0},
           "upstreams": {"u": {"url": base, **_UPSTREAM_KEYS[config]}}}
    settings = load_config(raw, env={})
    upstream = Upstream(settings.upstreams["u"], settings.gateway,
                        metrics=Metrics().upstream("u"))
    await upstream.start()
    headers = upstream.outgoing_headers({}, "bench")

    async def call(url: str) -> bytes:
        reply = await upstream.call("GET", url[len(base):], headers)
        return b"" if reply.data is None else b"x"

    return call, upstream.close


# What each `Upstream.call` variant adds to the upstream's config.
_UPSTREAM_KEYS: dict[str, dict[str, object]] = {
    "default": {},
    "retries+breaker": {"retries": 2, "breaker": {"failures": 5, "reset": 30.0}},
}


async def _variant_aiohttp() -> tuple[Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))

    async def call(url: str) -> bytes:
        async with session.get(url) as r:
            return await r.read()

    return call, session.close


VARIANTS = {
    "httpx (httpcore, no sniffio)": lambda: _variant_httpx(False),
    "httpx + AiohttpTransport (httpx-aiohttp)": _variant_httpx_aiohttp,
    "httpx + gateway.transport (ours)": _variant_ours,
    "httpx + ours, Request built directly, client.send": _variant_ours_request,
    "httpx + ours, transport.handle_async_request": _variant_ours_transport,
    "aiohttp ClientSession (reference)": _variant_aiohttp,
    "gateway Upstream.call (pipeline + wire), default upstream": lambda: _variant_upstream(
        "default"),
    "gateway Upstream.call, retries + breaker": lambda: _variant_upstream("retries+breaker"),
}


async def _measure(make: Callable[[], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]],
                   base: str, calls: int) -> float:
    call, close = await make()
    try:
        sem = asyncio.Semaphore(32)

        async def fanout(i: int) -> None:
            async with sem:
                await asyncio.gather(call(f"{base}/a/{i}"), call(f"{base}/b/{i}"),
                                     call(f"{base}/c/{i}"))

        await asyncio.gather(*(fanout(i) for i in range(100)))  # warm-up
        cpu0 = time.process_time()
        await asyncio.gather(*(fanout(i) for i in range(calls // 3)))
        return (time.process_time() - cpu0) / calls * 1e6
    finally:
        await close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    port = _free_port()
    upstream = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", UPSTREAM_CODE,
                                 str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert upstream.stdout is not None
        upstream.stdout.readline()
        os.sched_setaffinity(0, {0})
        import uvloop

        base = f"http://127.0.0.1:{port}"
        os.environ["UPSTREAM"] = base
        results: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, make in VARIANTS.items():
                if args.only and args.only not in name:
                    continue
                results.setdefault(name, []).append(uvloop.run(_measure(make, base, args.calls)))
        print(f"CPU per upstream call, median of {args.rounds} rounds, {args.calls} calls each")
        print("| transport | CPU us/call |\n|---|---|")
        for name, values in results.items():
            print(f"| {name} | {statistics.median(values):.0f} |")
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
