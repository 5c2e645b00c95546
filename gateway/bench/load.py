"""The load generator: a closed loop of `concurrency` workers per strategy, after an
uncounted warm-up, each request's outcome kept as a `Sample`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import httpx

from .stats import BenchReport, Sample, StrategyStats, ideal_speedup, summarise

STRATEGY_HEADER = "X-Gateway-Strategy"
STRATEGIES = ("parallel", "sequential")

_PROGRESS_INTERVAL = 0.05  # seconds between redraws of the progress line
_MAX_REASON_CHARS = 200

Progress = Callable[[str], None]


async def bench_url(
    url: str,
    route: str,
    *,
    requests: int,
    concurrency: int,
    warmup: int = 10,
    progress: Progress | None = None,
    request_timeout: float = 30.0,
) -> BenchReport:
    """Run `route` on the gateway at `url` with each strategy; `warmup` requests each go uncounted.

    The warm-up fills the connection pool and the gateway's upstream pools, so neither
    strategy pays for connection set-up the other one does not.
    """
    if requests < 1 or concurrency < 1 or warmup < 0:
        raise ValueError("requests and concurrency must be >= 1, warmup >= 0")
    target = url.rstrip("/") + ("" if route.startswith("/") else "/") + route
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    stats: dict[str, StrategyStats] = {}
    async with httpx.AsyncClient(limits=limits, timeout=request_timeout, trust_env=False) as client:
        for strategy in STRATEGIES:
            if warmup:
                tick = _ticker(progress, f"{strategy} warm-up", warmup)
                await _load(client, target, strategy, warmup, concurrency, tick)
            tick = _ticker(progress, strategy, requests)
            samples, wall_s = await _load(client, target, strategy, requests, concurrency, tick)
            stats[strategy] = summarise(samples, wall_s)
    parallel, sequential = stats["parallel"], stats["sequential"]
    measured = None
    if parallel.p50_ms and sequential.p50_ms is not None:
        measured = sequential.p50_ms / parallel.p50_ms
    return BenchReport(
        url=url,
        route=route,
        requests=requests,
        concurrency=concurrency,
        warmup=warmup,
        parallel=parallel,
        sequential=sequential,
        speedup_measured=measured,
        # the parallel run's call times are the ones whose overlap is in question
        speedup_ideal=(
            parallel.ideal_speedup
            if parallel.ideal_speedup is not None
            else sequential.ideal_speedup
        ),
    )


def _ticker(
    progress: Progress | None, label: str, total: int
) -> Callable[[Sequence[Sample]], None]:
    """Report at most every `_PROGRESS_INTERVAL`, and always the last count of a phase."""
    last = 0.0

    def tick(samples: Sequence[Sample]) -> None:
        nonlocal last
        now = time.monotonic()
        if progress is None or (now - last < _PROGRESS_INTERVAL and len(samples) < total):
            return
        last = now
        errors = sum(1 for s in samples if s.failure is not None)
        progress(f"{label}: {len(samples)}/{total} requests, {errors} errors")

    return tick


async def _load(
    client: httpx.AsyncClient,
    target: str,
    strategy: str,
    requests: int,
    concurrency: int,
    tick: Callable[[Sequence[Sample]], None],
) -> tuple[list[Sample], float]:
    """Closed loop: `concurrency` workers, each sending its next request when one returns."""
    samples: list[Sample] = []
    pending = iter(range(requests))  # shared: each worker takes the next ticket

    async def worker() -> None:
        for _ in pending:
            samples.append(await _one(client, target, strategy))
            tick(samples)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, requests)):
            tg.create_task(worker())
    return samples, time.perf_counter() - started


async def _one(client: httpx.AsyncClient, target: str, strategy: str) -> Sample:
    started = time.perf_counter()
    try:
        response = await client.get(target, headers={STRATEGY_HEADER: strategy})
    except httpx.HTTPError as exc:  # a failed request is a data point, not a crash
        return Sample((time.perf_counter() - started) * 1000, type(exc).__name__, None)
    latency_ms = (time.perf_counter() - started) * 1000
    if not response.is_success:
        return Sample(latency_ms, f"HTTP {response.status_code}", None, _error_line(response))
    return Sample(latency_ms, None, _ideal_from_body(response))


def _error_line(response: httpx.Response) -> str | None:
    """The envelope's `error` (one line, by contract), cut short; None for any other body."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, str) or not error:
        return None
    line = " ".join(error.split())
    return line if len(line) <= _MAX_REASON_CHARS else line[:_MAX_REASON_CHARS] + "..."


def _ideal_from_body(response: httpx.Response) -> float | None:
    try:
        body = response.json()
    except ValueError:  # not JSON: still a success, just no call timings to learn from
        return None
    meta = body.get("meta") if isinstance(body, dict) else None
    calls = meta.get("calls") if isinstance(meta, dict) else None
    return ideal_speedup(calls) if isinstance(calls, dict) else None
