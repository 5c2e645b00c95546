"""`gateway bench`: measure what parallel fan-out saves on one route.

The same route is run with `X-Gateway-Strategy: parallel` and then `sequential`,
so the only difference between the two runs is how the gateway schedules its
calls. Latency is measured by the client (what a frontend sees); the ideal
speedup comes from the per-call `elapsed_ms` the gateway reports in `meta.calls`.

With `--config` the gateway is started as a subprocess on a free loopback port
and stopped afterwards, so one command measures a config without any setup.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

STRATEGY_HEADER = "X-Gateway-Strategy"
STRATEGIES = ("parallel", "sequential")

READY_TIMEOUT = 20.0  # seconds for a spawned gateway to answer /healthz
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_POLL_INTERVAL = 0.05
_STDERR_TAIL = 4096  # bytes of a spawned gateway's stderr kept to explain an early exit
_PROGRESS_INTERVAL = 0.05  # seconds between redraws of the progress line
MAX_REASONS = 10  # distinct failure reasons kept per strategy; more count under "other"
_MAX_REASON_CHARS = 200

Progress = Callable[[str], None]


class GatewayStartError(Exception):
    """The gateway subprocess exited or never became healthy: there is nothing to bench."""


@dataclass(frozen=True)
class StrategyStats:
    """One strategy's run. Latencies cover 2xx responses only, so fast errors cannot flatter them.

    The latency fields and `ideal_speedup` are None when no response could provide them.
    """

    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    rps: float
    ideal_speedup: float | None
    failures: Mapping[str, int] = field(default_factory=dict)  # e.g. {"HTTP 502": 3}
    # e.g. {"HTTP 503: upstream 'users' is unreachable": 3}: the envelope's `error` line
    reasons: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "p99_ms": _round(self.p99_ms),
            "mean_ms": _round(self.mean_ms),
            "rps": _round(self.rps),
            "ideal_speedup": _round(self.ideal_speedup),
            "failures": dict(self.failures),
            "reasons": dict(self.reasons),
        }


@dataclass(frozen=True)
class BenchReport:
    url: str
    route: str
    requests: int  # per strategy, warm-up excluded
    concurrency: int
    warmup: int
    parallel: StrategyStats
    sequential: StrategyStats
    speedup_measured: float | None  # sequential p50 / parallel p50
    speedup_ideal: float | None  # mean over responses of sum(call times) / critical path

    @property
    def all_failed(self) -> bool:
        return all(s.errors == s.requests for s in (self.parallel, self.sequential))

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "route": self.route,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "warmup": self.warmup,
            "strategies": {
                "parallel": self.parallel.to_dict(),
                "sequential": self.sequential.to_dict(),
            },
            "speedup": {
                "measured": _round(self.speedup_measured),
                "ideal": _round(self.speedup_ideal),
            },
        }


# --- pure parts -------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile: always a value that was actually observed, never interpolated."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    # round() so that e.g. 99.9% of 1000 is rank 999, not 1000 through float error
    rank = math.ceil(round(p * len(ordered) / 100, 9))
    return ordered[max(rank, 1) - 1]


def critical_path_ms(elapsed: Mapping[str, float], deps: Mapping[str, Sequence[str]]) -> float:
    """Longest chain of call times through `deps`; with no deps it is simply the slowest call.

    Unknown names are ignored and a cycle is cut where it closes: the gateway rejects
    cyclic configs, so a cycle here can only be bad input and must not hang the bench.
    """
    finish: dict[str, float] = {}
    visiting: set[str] = set()

    def finish_of(name: str) -> float:
        if name in finish:
            return finish[name]
        visiting.add(name)
        before = [finish_of(d) for d in deps.get(name, ()) if d in elapsed and d not in visiting]
        visiting.discard(name)
        finish[name] = elapsed[name] + max(before, default=0.0)
        return finish[name]

    return max((finish_of(name) for name in elapsed), default=0.0)


def ideal_speedup(calls: Mapping[str, Any]) -> float | None:
    """Sum of call times / critical path, from one envelope's `meta.calls`.

    That is what perfect concurrency would save over running the calls one by one.
    Entries may carry `"deps": [names]`; without them the critical path is the slowest call.
    """
    elapsed: dict[str, float] = {}
    deps: dict[str, list[str]] = {}
    for name, call in calls.items():
        if not isinstance(call, Mapping):
            continue
        ms = call.get("elapsed_ms")
        if isinstance(ms, int | float) and not isinstance(ms, bool):
            elapsed[name] = float(ms)
            named = call.get("deps")
            if isinstance(named, list):
                deps[name] = [d for d in named if isinstance(d, str)]
    path = critical_path_ms(elapsed, deps)
    return sum(elapsed.values()) / path if path > 0 else None


@dataclass(frozen=True, slots=True)
class _Sample:
    latency_ms: float
    failure: str | None  # None for a 2xx response
    ideal: float | None
    reason: str | None = None  # the error envelope's one line, when the gateway sent one


def _summarise(samples: Sequence[_Sample], wall_s: float) -> StrategyStats:
    ok = [s.latency_ms for s in samples if s.failure is None]
    ideals = [s.ideal for s in samples if s.ideal is not None]
    failures = collections.Counter(s.failure for s in samples if s.failure is not None)
    reasons: collections.Counter[str] = collections.Counter()
    for s in samples:
        if s.failure is not None and s.reason is not None:
            key = f"{s.failure}: {s.reason}"
            reasons[key if key in reasons or len(reasons) < MAX_REASONS
                    else f"{s.failure}: other reasons"] += 1
    return StrategyStats(
        requests=len(samples),
        errors=failures.total(),
        p50_ms=percentile(ok, 50) if ok else None,
        p95_ms=percentile(ok, 95) if ok else None,
        p99_ms=percentile(ok, 99) if ok else None,
        mean_ms=fmean(ok) if ok else None,
        rps=len(samples) / wall_s if wall_s > 0 else 0.0,
        ideal_speedup=fmean(ideals) if ideals else None,
        failures=dict(failures.most_common()),
        reasons=dict(reasons.most_common()),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def format_report(report: BenchReport) -> str:
    """The human table: one row per strategy, then the measured and ideal speedup."""

    def num(value: float | None, suffix: str = "") -> str:
        return "-" if value is None else f"{value:.1f}{suffix}"

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = [
        f"GET {report.url.rstrip('/')}{report.route}",
        f"{report.requests} requests per strategy, concurrency {report.concurrency}, "
        f"warm-up {report.warmup}",
        "",
        f"{'strategy':<10} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'mean ms':>8} {'req/s':>8} {'ideal':>6}",
    ]
    for name, s in (("parallel", report.parallel), ("sequential", report.sequential)):
        lines.append(
            f"{name:<10} {s.requests:>8} {s.errors:>6} {num(s.p50_ms):>8} {num(s.p95_ms):>8} "
            f"{num(s.p99_ms):>8} {num(s.mean_ms):>8} {num(s.rps):>8} "
            f"{ratio(s.ideal_speedup):>6}"
        )
    lines += [
        "",
        f"speedup  measured {ratio(report.speedup_measured):>6}  (sequential p50 / parallel p50)",
        f"         ideal    {ratio(report.speedup_ideal):>6}  (sum of call times / slowest call)",
    ]
    for name, s in (("parallel", report.parallel), ("sequential", report.sequential)):
        if s.failures:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in s.failures.items())
            lines.append(f"failures {name}: {kinds}")
            for reason, count in s.reasons.items():
                kind, _, text = reason.partition(": ")
                lines.append(f"  {kind} x{count}: {text}")
    return "\n".join(lines)


# --- the load generator -----------------------------------------------------


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
            stats[strategy] = _summarise(samples, wall_s)
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
) -> Callable[[Sequence[_Sample]], None]:
    """Report at most every `_PROGRESS_INTERVAL`, and always the last count of a phase."""
    last = 0.0

    def tick(samples: Sequence[_Sample]) -> None:
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
    tick: Callable[[Sequence[_Sample]], None],
) -> tuple[list[_Sample], float]:
    """Closed loop: `concurrency` workers, each sending its next request when one returns."""
    samples: list[_Sample] = []
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


async def _one(client: httpx.AsyncClient, target: str, strategy: str) -> _Sample:
    started = time.perf_counter()
    try:
        response = await client.get(target, headers={STRATEGY_HEADER: strategy})
    except httpx.HTTPError as exc:  # a failed request is a data point, not a crash
        return _Sample((time.perf_counter() - started) * 1000, type(exc).__name__, None)
    latency_ms = (time.perf_counter() - started) * 1000
    if not response.is_success:
        return _Sample(latency_ms, f"HTTP {response.status_code}", None, _error_line(response))
    return _Sample(latency_ms, None, _ideal_from_body(response))


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


# --- a gateway in a subprocess ----------------------------------------------


def _free_port() -> int:
    """A port free right now; the tiny race until the child binds it is acceptable for a tool."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve_argv(config: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "gateway", "serve",
        "--config", config, "--bind", f"127.0.0.1:{port}", "--workers", "1",
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def _spawned(
    argv: Sequence[str], base_url: str, *, ready_timeout: float = READY_TIMEOUT
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `argv` until the block ends, entering only once `base_url/healthz` answers 200.

    Stderr is drained all along (a full pipe would stall the server mid-bench) and its
    tail kept, so an early exit can be explained in one line.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    tail = bytearray()
    drain = asyncio.create_task(_drain(proc, tail))
    try:
        await _wait_healthy(proc, base_url, ready_timeout)
        if proc.returncode is not None:
            # bounded: a grandchild may still hold the pipe open
            await asyncio.wait([drain], timeout=1.0)
            raise GatewayStartError(
                f"gateway exited with code {proc.returncode} before it was ready: {_one_line(tail)}"
            )
        yield proc
    finally:
        await _stop(proc)
        drain.cancel()
        await asyncio.wait([drain])


async def _drain(proc: asyncio.subprocess.Process, tail: bytearray) -> None:
    assert proc.stderr is not None
    while chunk := await proc.stderr.read(65536):
        tail += chunk
        del tail[:-_STDERR_TAIL]


def _one_line(output: bytes | bytearray) -> str:
    lines = [line.strip() for line in output.decode(errors="replace").splitlines()]
    said = "; ".join(line for line in lines if line)
    return ("..." + said[-500:] if len(said) > 500 else said) or "nothing on stderr"


async def _wait_healthy(
    proc: asyncio.subprocess.Process, base_url: str, ready_timeout: float
) -> None:
    """Poll /healthz until 200 or until the process exits (the caller reports that)."""
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        try:
            async with asyncio.timeout(ready_timeout):
                while proc.returncode is None:
                    with contextlib.suppress(httpx.HTTPError):  # not listening yet
                        response = await client.get(f"{base_url}/healthz")
                        if response.status_code == 200:
                            return
                    await asyncio.sleep(_POLL_INTERVAL)
        except TimeoutError:
            raise GatewayStartError(
                f"gateway did not answer GET /healthz with 200 within {ready_timeout:g} s"
            ) from None


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM for a graceful shutdown; SIGKILL if it is not gone after the grace period."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(STOP_GRACE):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# --- command line -----------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `gateway bench` arguments to `parser` (the CLI owns the subcommand itself)."""
    parser.add_argument(
        "route", metavar="ROUTE", type=_route, help="path to run, e.g. /dashboard/7"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--config", metavar="PATH", help="start a gateway with this config for the run"
    )
    target.add_argument(
        "--url", type=_base_url, help="a running gateway, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument(
        "--requests", type=_count(1), default=200, metavar="N",
        help="measured requests per strategy (default 200)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_count(1), default=10, metavar="C",
        help="requests in flight at once (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=_count(0), default=10, metavar="N",
        help="uncounted requests per strategy before measuring (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="SECONDS",
        help="per-request timeout (default 30)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Exit code: 0 measured, 1 every request failed or the gateway would not start, 2 bad usage."""
    if args.config is not None and not os.path.isfile(args.config):
        print(f"gateway bench: config file not found: {args.config}", file=sys.stderr)
        return 2
    progress = _TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        report = asyncio.run(_bench(args, progress))
    except GatewayStartError as exc:
        print(f"gateway bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.clear()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    if report.all_failed:
        hint = ""
        if args.config is not None:
            hint = ("; the config's upstreams must be running (examples/gateway.toml's are the "
                    "demo's: `make run` in another shell)")
        print(f"gateway bench: every request failed{hint}", file=sys.stderr)
        return 1
    return 0


async def _bench(args: argparse.Namespace, progress: Progress | None) -> BenchReport:
    options: dict[str, Any] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "request_timeout": args.timeout,
        "progress": progress,
    }
    if args.url is not None:
        return await bench_url(args.url, args.route, **options)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    async with _spawned(_serve_argv(args.config, port), url):
        return await bench_url(url, args.route, **options)


class _TerminalProgress:
    """Redraws one status line in place; used only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = False

    def __call__(self, line: str) -> None:
        self._stream.write(f"\r{line}\x1b[K")
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _route(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(f"route must start with '/': {value!r}")
    return value


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {value!r}")
    return value.rstrip("/")


def _count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number
