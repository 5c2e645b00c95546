"""`gateway worker`: a process that runs jobs from a Redis store and serves no HTTP.

It starts the same app lifecycle as `gateway serve` (upstream clients, the
job store and its SAQ worker) without a listening socket, and stops on
SIGTERM or SIGINT the same way: running jobs get `jobs.grace` seconds.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from urllib.parse import urlsplit, urlunsplit

from ..app import Gateway
from ..wrappers import GatewayApp


def load_gateway(config: str, app: str | None) -> Gateway:
    """The gateway to run jobs for: `--app module:attr` (a Gateway or its Quart app), or the
    config alone (config-defined endpoints only)."""
    if app is None:
        return Gateway(config)
    module_name, _, attr = app.partition(":")
    obj = getattr(importlib.import_module(module_name), attr or "gw")
    if isinstance(obj, GatewayApp):
        obj = obj.gateway
    if not isinstance(obj, Gateway):
        raise TypeError(f"{app} is not a gateway.Gateway (or the app of one)")
    return obj


def run(config: str, app: str | None) -> int:
    gw = load_gateway(config, app)
    if gw.config.jobs.store == "memory":
        print("gateway worker: [jobs] store is \"memory\"; a worker needs a shared Redis "
              "store (store = \"redis://host:port/db\")", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(_work(gw))
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(_work(gw))
    return 0


async def _work(gw: Gateway) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gw.app.startup()  # before_serving: the runtime, its job store and SAQ worker
    jobs = gw.config.jobs
    print(f"gateway worker: running up to {jobs.max_running} jobs at once (deployment-wide) "
          f"from {redacted(jobs.store)}; SIGTERM stops it", flush=True)
    try:
        await stop.wait()
    finally:
        await gw.app.shutdown()  # running jobs get `jobs.grace` seconds, then fail


def redacted(url: str) -> str:
    """The store URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
