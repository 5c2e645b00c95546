"""Prometheus metrics: one `CollectorRegistry` per `Runtime`, served at `/metrics`.

    gateway_requests_total{endpoint,method,status}               incoming requests
    gateway_request_duration_seconds{endpoint,method,status}     their latency (histogram)
    gateway_upstream_calls_total{upstream,outcome}               calls, by how they ended
    gateway_upstream_call_duration_seconds{upstream,outcome}     their latency (histogram)
    gateway_upstream_retries_total{upstream}                     retries made
    gateway_upstream_retries_refused_total{upstream}             retries the budget refused
    gateway_upstream_queue_wait_seconds{upstream}                waits for a connection slot
    gateway_upstream_batch_keys{upstream}                        keys per batch call
    gateway_breaker_state{upstream}                              0 closed, 1 half-open, 2 open
    gateway_breaker_opened_total{upstream}                       times the breaker opened
    gateway_cache_hits_total / gateway_cache_misses_total{upstream}
    gateway_singleflight_shared_total{upstream}                  calls served by another's call
    gateway_jobs_total{state}                                    jobs that entered each state
    gateway_jobs_in_store{state}                                 jobs in the store now (all
                                                                 processes sharing it)
    gateway_config_reloads_total{result}                         SIGHUP reloads, ok / refused
    gateway_memory_budget_exhausted_total                        calls failed because the
                                                                 process held max_buffered_bytes
    gateway_auth_failures_total{reason}                          refused credentials: missing,
                                                                 invalid_token, expired,
                                                                 invalid_api_key,
                                                                 insufficient_scope,
                                                                 keys_unavailable
    gateway_rate_limited_total{endpoint}                         429s of the rate/concurrency
                                                                 limits, by route template
    gateway_limits_store_errors_total                            limit checks the store could
                                                                 not answer (let through)

`outcome` is ok, cached, client_error (an upstream 4xx), error, timeout or circuit_open.
`endpoint` is the route template (`/dashboard/<int:user_id>`), never the raw path, so the
number of series stays bounded; requests that match no route count as `unmatched`.

Several worker processes: when `PROMETHEUS_MULTIPROC_DIR` is set (before the process
starts; `gateway serve --workers N` sets it to a fresh directory) prometheus-client runs
in multiprocess mode: every worker writes its values to files there and `/metrics`, in
whichever worker answers, adds up every worker's. Without it each worker counts alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)

from .breaker import STATE_VALUES
from .errors import CallError, CircuitOpen, UpstreamStatus, UpstreamTimeout

# The classic text format, which every Prometheus version scrapes (generate_latest writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("ok", "cached", "client_error", "error", "timeout", "circuit_open")
UNMATCHED = "unmatched"
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
AUTH_REASONS = ("missing", "invalid_token", "expired", "invalid_api_key", "insufficient_scope",
                "keys_unavailable")


def multiprocess_mode() -> bool:
    """True when prometheus-client stores values in PROMETHEUS_MULTIPROC_DIR files.

    prometheus-client decides once, at import, from the environment; ask it, not the
    environment, so a variable set too late cannot make `/metrics` read an empty directory.
    """
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def outcome(error: CallError) -> str:
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamStatus) and error.status is not None and error.status < 500:
        return "client_error"
    return "error"


class Metrics:
    """Every metric of one gateway; `upstream(name)` hands out pre-bound children."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        r = self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Incoming requests.",
                                ["endpoint", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds", "Incoming request latency.",
            ["endpoint", "method", "status"], registry=r)
        self.calls = Counter("gateway_upstream_calls", "Upstream calls, by outcome.",
                             ["upstream", "outcome"], registry=r)
        self.call_seconds = Histogram(
            "gateway_upstream_call_duration_seconds",
            "Upstream call latency, retries and queueing included.",
            ["upstream", "outcome"], registry=r)
        self.retries = Counter("gateway_upstream_retries", "Retries sent to an upstream.",
                               ["upstream"], registry=r)
        self.retries_refused = Counter(
            "gateway_upstream_retries_refused",
            "Retries not sent because the upstream's retry budget was spent.",
            ["upstream"], registry=r)
        self.queue_seconds = Histogram(
            "gateway_upstream_queue_wait_seconds",
            "Time calls waited for a free connection slot (max_connections).",
            ["upstream"], registry=r)
        self.batch_keys = Histogram("gateway_upstream_batch_keys",
                                    "Keys per batch call.", ["upstream"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.breaker_state = Gauge("gateway_breaker_state",
                                   "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                                   ["upstream"], multiprocess_mode="livemax", registry=r)
        self.breaker_opened = Counter("gateway_breaker_opened", "Times a breaker opened.",
                                      ["upstream"], registry=r)
        self.cache_hits = Counter("gateway_cache_hits", "GET replies served from the cache.",
                                  ["upstream"], registry=r)
        self.cache_misses = Counter("gateway_cache_misses",
                                    "Cacheable GETs the cache could not serve.",
                                    ["upstream"], registry=r)
        self.shared = Counter("gateway_singleflight_shared",
                              "GETs served by an identical call already in flight.",
                              ["upstream"], registry=r)
        self.jobs = Counter("gateway_jobs", "Jobs that entered each state.", ["state"],
                            registry=r)
        # Read from the store at each scrape: already deployment-wide, so the latest wins.
        self.jobs_in_store = Gauge("gateway_jobs_in_store",
                                   "Jobs in the job store by state, whole deployment.",
                                   ["state"], multiprocess_mode="livemostrecent", registry=r)
        self.reloads = Counter("gateway_config_reloads", "Config reloads, by result.",
                               ["result"], registry=r)
        for result in ("ok", "refused"):
            self.reloads.labels(result)
        self.budget_exhausted = Counter(
            "gateway_memory_budget_exhausted",
            "Upstream calls failed because bodies in flight filled gateway.max_buffered_bytes.",
            registry=r)
        self.auth_failures = Counter("gateway_auth_failures",
                                     "Messages refused by authentication, by reason.",
                                     ["reason"], registry=r)
        for reason in AUTH_REASONS:
            self.auth_failures.labels(reason)
        self.rate_limited_total = Counter(
            "gateway_rate_limited", "Messages refused by the rate or concurrency limits.",
            ["endpoint"], registry=r)
        self.limits_store_errors = Counter(
            "gateway_limits_store_errors",
            "Limit checks the store (Redis) could not answer; the request was let through.",
            registry=r)
        if not self.multiprocess:  # custom collectors do not work in multiprocess mode
            ProcessCollector(registry=r)
            GCCollector(registry=r)
        self._request_children: dict[tuple[str, str, int],
                                     tuple[Counter, Histogram]] = {}

    def upstream(self, name: str) -> UpstreamMetrics:
        return UpstreamMetrics(self, name)

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (endpoint, method, str(status))
            children = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def auth_failure(self, reason: str) -> None:
        """One refusal of authentication; `reason` is one of `AUTH_REASONS`."""
        self.auth_failures.labels(reason).inc()

    def rate_limited(self, endpoint: str) -> None:
        """One 429 of the limits; `endpoint` is the route template (bounded)."""
        self.rate_limited_total.labels(endpoint).inc()

    def limits_store_error(self) -> None:
        self.limits_store_errors.inc()

    def job(self, state: str) -> None:
        """Count a job entering `state` (queued, running, succeeded, failed, canceled...)."""
        self.jobs.labels(state).inc()

    def job_counts(self, counts: Mapping[str, int]) -> None:
        """The job store's current count of jobs per state."""
        for state, count in counts.items():
            self.jobs_in_store.labels(state).set(count)

    def exposition(self) -> bytes:
        """The text format; reads files in multiprocess mode, so run it off the event loop."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        if self.multiprocess:  # this worker's live gauges (breaker state) leave with it
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class UpstreamMetrics:
    """The children of one upstream, bound once so a call pays no label lookup."""

    __slots__ = ("_batch", "_breaker", "_calls", "_hits", "_misses", "_opened", "_queue",
                 "_refused", "_retries", "_shared")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._calls = {o: (metrics.calls.labels(name, o), metrics.call_seconds.labels(name, o))
                       for o in OUTCOMES}
        self._retries = metrics.retries.labels(name)
        self._refused = metrics.retries_refused.labels(name)
        self._queue = metrics.queue_seconds.labels(name)
        self._batch = metrics.batch_keys.labels(name)
        self._breaker = metrics.breaker_state.labels(name)
        self._opened = metrics.breaker_opened.labels(name)
        self._hits = metrics.cache_hits.labels(name)
        self._misses = metrics.cache_misses.labels(name)
        self._shared = metrics.shared.labels(name)
        self._breaker.set(0)

    def call(self, outcome: str, seconds: float) -> None:
        counter, histogram = self._calls[outcome]
        counter.inc()
        histogram.observe(seconds)

    def retry(self) -> None:
        self._retries.inc()

    def retry_refused(self) -> None:
        self._refused.inc()

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def batch(self, keys: int) -> None:
        self._batch.observe(keys)

    def breaker(self, state: str) -> None:
        self._breaker.set(STATE_VALUES[state])
        if state == "open":
            self._opened.inc()

    def breaker_now(self, state: str) -> None:
        """Refresh the gauge at scrape time (open turns half-open by the clock, unseen)."""
        self._breaker.set(STATE_VALUES[state])

    def cache(self, hit: bool) -> None:
        (self._hits if hit else self._misses).inc()

    def shared(self) -> None:
        self._shared.inc()
