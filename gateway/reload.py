"""Config reload on SIGHUP (and, with `GATEWAY_WATCH=1`, when the file changes).

The file is read and validated off the event loop exactly as at start; an invalid one is
refused with the same `key.path: reason` lines and the running config stays. A valid one
takes over at one instant: the `Router` (immutable) is swapped whole, so a request in
flight finishes on the plan it matched. Unchanged upstreams keep their client, breaker
and cache; new or changed ones get new ones, and the ones they replace are closed once
their calls in flight are done. `[jobs]`, `[auth]`, `[limits]`, `gateway.dashboard`,
`gateway.log_format` and switching CORS on or off need a restart: a reload keeps their
running values and says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from .config import Config, load_config
from .errors import ConfigError
from .plan import Plan, compile_plans
from .routing import Router

if TYPE_CHECKING:
    from .app import Gateway
    from .runtime import Runtime
    from .upstream import Upstream

log = logging.getLogger("gateway")

WATCH_ENV = "GATEWAY_WATCH"  # "1": also reload when the config file changes
WATCH_INTERVAL = 1.0  # seconds between looks at the file


class Reloader:
    """Reloads one gateway's config; owns its signal handler and watch task."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._signal = False

    async def reload(self) -> bool:
        """Re-read the config file; True if the new config now serves."""
        async with self._lock:  # one at a time: two quick SIGHUPs must not interleave
            return await self._reload()

    async def _reload(self) -> bool:
        gw = self.gw
        source = gw.config.source
        runtime = gw.runtime
        if source is None:
            log.warning("config reload skipped: the config was not loaded from a file")
            return False
        try:
            config, plans = await asyncio.to_thread(_load, source)
            router = Router(plans, gw.router.views)
        except (ConfigError, ValueError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("config reload refused: %s is invalid; still serving the previous "
                      "config: %s", source, "; ".join(problems))
            if runtime is not None:
                runtime.metrics.reloads.labels("refused").inc()
            return False
        config, kept = _keep_restart_only(gw.config, config)
        if runtime is not None:
            upstreams, fresh = await _prepare(runtime, config)
            if gw.runtime is not runtime:  # stopped while the new clients were starting
                for upstream in fresh:
                    await upstream.close()
                return False
            runtime.switch(config, upstreams)
            runtime.metrics.reloads.labels("ok").inc()
        gw.swap_config(config, router)
        if kept:
            log.warning("config reloaded from %s, but %s need a restart to change",
                        source, ", ".join(kept))
        log.info("config reloaded from %s: %d endpoints, %d upstreams", source,
                 len(plans), len(config.upstreams))
        return True

    def trigger(self) -> None:
        """Start a reload in the background (from a signal handler or the watcher)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        source = self.gw.config.source
        if source is None:
            return
        loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGHUP, self.trigger)
                self._signal = True
            except (NotImplementedError, RuntimeError, ValueError):  # no signals here
                log.warning("SIGHUP reload is not available on this event loop")
        if os.environ.get(WATCH_ENV) == "1":
            stamp = await asyncio.to_thread(_stamp, source)
            self._watcher = loop.create_task(self._watch(source, stamp))

    async def stop(self) -> None:
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
        tasks: list[asyncio.Task[None] | asyncio.Task[bool]] = list(self._tasks)
        if self._watcher is not None:
            tasks.append(self._watcher)
            self._watcher = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _watch(self, path: str, last: tuple[int, int] | None) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            stamp = await asyncio.to_thread(_stamp, path)
            if stamp != last:
                last = stamp
                await self.reload()


def register(gw: Gateway) -> Reloader:
    """SIGHUP (and the optional file watch) reloads this gateway while it serves."""
    reloader = Reloader(gw)
    gw.app.before_serving(reloader.start)
    gw.app.after_serving(reloader.stop)
    return reloader


def _load(source: str) -> tuple[Config, tuple[Plan, ...]]:
    config = load_config(source)
    return config, compile_plans(config)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The new config, with the running values of what only a restart can change."""
    kept = []
    if new.jobs != old.jobs:
        kept.append("[jobs]")
    if new.auth != old.auth:  # the JWKS cache and the API keys are built at start
        kept.append("[auth]")
    if new.limits != old.limits:  # the counters' store is opened at start
        kept.append("[limits]")
    settings = new.gateway
    if settings.dashboard != old.gateway.dashboard:
        kept.append("gateway.dashboard")
        settings = replace(settings, dashboard=old.gateway.dashboard)
    if settings.log_format != old.gateway.log_format:
        kept.append("gateway.log_format")
        settings = replace(settings, log_format=old.gateway.log_format)
    if bool(settings.cors_origins) != bool(old.gateway.cors_origins):
        kept.append("gateway.cors_origins (on/off)")
        settings = replace(settings, cors_origins=old.gateway.cors_origins)
    return replace(new, jobs=old.jobs, auth=old.auth, limits=old.limits, gateway=settings), kept


async def _prepare(runtime: Runtime, config: Config) -> tuple[dict[str, Upstream],
                                                              list[Upstream]]:
    """The upstreams of `config`: unchanged ones kept, new or changed ones started."""
    new: dict[str, Upstream] = {}
    fresh: list[Upstream] = []
    for name, upstream_config in config.upstreams.items():
        current = runtime.upstreams.get(name)
        if (current is not None and current.config == upstream_config
                and current.max_bytes == config.gateway.max_upstream_bytes):
            new[name] = current
            continue
        upstream = runtime.new_upstream(upstream_config, config)
        await upstream.start()
        new[name] = upstream
        fresh.append(upstream)
    return new, fresh
