"""All mutable state of a serving gateway, in one object opened at start and closed at stop."""

from __future__ import annotations

import asyncio

import httpx

from . import allocator, collector
from .auth.authenticator import Authenticator
from .auth.jwks import JwksCache
from .budget import MemoryBudget
from .config import Config, UpstreamConfig
from .jobs.store import Execute, JobStore
from .limits.ratelimit import Concurrency, RateLimiter
from .limits.shared import RedisConcurrency
from .metrics import Metrics
from .reader import INFLATING
from .recent import Recent
from .upstream import Upstream

TRIM_AFTER_QUIET = 1.0  # seconds without an upstream body read before freed heap is returned


def required_upstreams(config: Config) -> frozenset[str]:
    """Upstreams some endpoint cannot answer without: `/readyz` watches their breakers."""
    return frozenset(call.upstream for endpoint in config.endpoints
                     for call in endpoint.calls if not call.optional)


class Runtime:
    """Upstream clients (and, as they arrive, breakers, caches, job store, metrics)."""

    def __init__(self, config: Config) -> None:
        allocator.tune()  # process-wide and idempotent: big buffers are returned when freed
        self.config = config
        self.metrics = Metrics()  # its own registry: two gateways in a process never mix
        # One budget for every upstream's bodies in flight; a reload changes its limit only.
        self.budget = MemoryBudget(config.gateway.max_buffered_bytes,
                                   on_exhausted=self.metrics.budget_exhausted.inc,
                                   on_drained=self._drained)
        self._trim: asyncio.TimerHandle | None = None
        self.inflating = asyncio.Semaphore(INFLATING)  # compressed bodies decoded at once
        self.upstreams = {name: self.new_upstream(cfg) for name, cfg in config.upstreams.items()}
        self.required = required_upstreams(config)  # for /readyz
        self._retired: dict[Upstream, asyncio.Task[None]] = {}  # replaced by a reload
        self.recent = Recent()  # the last requests, for the dashboard
        self.jobs: JobStore | None = None  # open_jobs(), once the runtime is serving
        self._open_access(config)

    def _open_access(self, config: Config) -> None:
        """[auth] and [limits] state: the JWKS cache, the counters (restart to change)."""
        auth, limits = config.auth, config.limits
        self._idp: httpx.AsyncClient | None = None
        self.jwks: JwksCache | None = None
        if auth.jwks_url is not None:
            self._idp = httpx.AsyncClient(trust_env=False, follow_redirects=False)
            self.jwks = JwksCache(auth.jwks_url, self._idp)
        self.authenticator = Authenticator(auth, self.jwks) if auth.enabled else None
        self.limiter = RateLimiter(limits.store, on_store_error=self.metrics.limits_store_error)
        self.concurrency: Concurrency | RedisConcurrency | None = None
        if limits.concurrency is not None:  # shared by every process with a redis store
            self.concurrency = (Concurrency(limits.concurrency) if limits.store == "memory"
                                else RedisConcurrency(limits.store, limits.concurrency,
                                                      self.limiter.store_failed))

    def new_upstream(self, config: UpstreamConfig, runtime_config: Config | None = None
                     ) -> Upstream:
        """An upstream with its breaker, cache, batcher and metrics (not started)."""
        settings = (runtime_config or self.config).gateway
        return Upstream(config, settings, metrics=self.metrics.upstream(config.name),
                        budget=self.budget, inflating=self.inflating)

    def _drained(self) -> None:
        """A burst of upstream bodies is over: return its freed heap once reading stops.

        `malloc_trim` stalls the loop for ~15 ms per 100 MB it returns, in a thread too
        (it holds the heap's lock), so it waits for a quiet second: no body read since.
        """
        if self._trim is None:
            self._trim_after_quiet(self.budget.takes)

    def _trim_after_quiet(self, takes: int) -> None:
        loop = asyncio.get_running_loop()
        self._trim = loop.call_later(TRIM_AFTER_QUIET, self._trim_if_quiet, takes)

    def _trim_if_quiet(self, takes: int) -> None:
        if self.budget.takes != takes or self.budget.held:
            self._trim_after_quiet(self.budget.takes)  # still reading: look again later
            return
        self._trim = None
        allocator.trim()

    def switch(self, config: Config, upstreams: dict[str, Upstream]) -> None:
        """A reload: serve `config` with `upstreams` (started) from this instant (no
        await); the upstreams no longer used are closed once their calls are done."""
        old = self.upstreams
        collector.thaw()  # what start-up froze can be freed once retired
        self.upstreams = upstreams
        self.config = config
        self.budget.limit = config.gateway.max_buffered_bytes
        self.required = required_upstreams(config)
        grace = config.gateway.deadline + 1.0  # nothing in flight outlives its request
        for name, upstream in old.items():
            if upstreams.get(name) is not upstream:
                self._retire(upstream, max(grace, upstream.timeout + 1.0))

    def _retire(self, upstream: Upstream, grace: float) -> None:
        """Close an upstream a reload replaced, once its calls in flight are done."""
        task = asyncio.get_running_loop().create_task(upstream.close_when_idle(grace))
        self._retired[upstream] = task
        task.add_done_callback(lambda _: self._retired.pop(upstream, None))

    async def start(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.start()
        if self.jwks is not None:  # fetched in its own task: start-up never waits on the IdP
            await self.jwks.start()

    async def open_jobs(self, store: JobStore, execute: Execute) -> None:
        """Start the job store; last, as a job may start at once (on this runtime)."""
        await store.start(execute)
        self.jobs = store

    async def close(self) -> None:
        if self.jobs is not None:  # first: running jobs finish on open upstream clients
            await self.jobs.close()
            self.jobs = None
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.jwks is not None:
            await self.jwks.close()
        if self._idp is not None:
            await self._idp.aclose()
        await self.limiter.close()
        if isinstance(self.concurrency, RedisConcurrency):
            await self.concurrency.close()
        retired = dict(self._retired)
        for task in retired.values():
            task.cancel()
        if retired:
            await asyncio.wait(retired.values())
        for upstream in retired:
            await upstream.close()
        self.metrics.close()
