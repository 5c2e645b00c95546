"""All mutable state of a serving gateway, in one object opened at start and closed at stop."""

from __future__ import annotations

from .config import Config
from .recent import Recent
from .upstream import Upstream


class Runtime:
    """Upstream clients (and, as they arrive, breakers, caches, job store, metrics)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams = {name: Upstream(cfg, config.gateway)
                          for name, cfg in config.upstreams.items()}
        self.recent = Recent()  # the last requests, for the dashboard

    async def start(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.start()

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()
