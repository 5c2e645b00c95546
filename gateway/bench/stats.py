"""The pure parts of `gateway bench`: percentiles, the critical path of one envelope's
calls, the per-strategy summary and the report with its human table."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

MAX_REASONS = 10  # distinct failure reasons kept per strategy; more count under "other"


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
class Sample:
    """One request's outcome, as the load generator saw it."""

    latency_ms: float
    failure: str | None  # None for a 2xx response
    ideal: float | None
    reason: str | None = None  # the error envelope's one line, when the gateway sent one


def summarise(samples: Sequence[Sample], wall_s: float) -> StrategyStats:
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
