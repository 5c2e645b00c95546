"""Hostile load (issue 11, SPEC section 13): floods a gateway as an attacker would.

For each flood: RSS of the gateway's process tree before, at its peak (sampled
every 50 ms) and after it settles, `/healthz` p50/p99 while it runs, and the
flood's own targets. Everything runs on 127.0.0.1, bounded in count and time.

    python benchmarks/hostile.py                 # all floods (make bench runs this)
    python benchmarks/hostile.py --only jobs,workers
    python benchmarks/hostile.py --json benchmarks/results/hostile.json

| name      | module              | flood                                                       |
|-----------|---------------------|-------------------------------------------------------------|
| `jobs`    | hostile_jobs.py     | 150 background jobs of ~2 MB results, memory store          |
| `ws`      | hostile_ws.py       | `/ws` clients that never read and send as fast as they can  |
| `bodies`  | hostile_bodies.py   | 300 gzip-bomb and 300 chunked-50 MB upstream bodies at c=50 |
| `workers` | hostile_workers.py  | `kill -9` of one of 2 workers while clients send requests   |

A flood module exports one `run_...(procs: harness.Procs, settle: float = ...)`
returning a `flood.FloodResult` (or a list of them); `flood.Watch` measures it.
A module not written yet is reported as "not available yet".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import harness
from flood import MIB, FloodResult
from harness import LOAD_CPUS, BenchError, Procs

FLOODS: dict[str, tuple[str, str]] = {  # name -> (module, function)
    "jobs": ("hostile_jobs", "run_jobs_flood"),
    "ws": ("hostile_ws", "run_ws_flood"),
    "bodies": ("hostile_bodies", "run_body_floods"),
    "workers": ("hostile_workers", "run_workers_flood"),
}


def load(name: str) -> Callable[..., Any] | str:
    """The flood's function, or why it cannot run."""
    module_name, function = FLOODS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return f"not available yet (benchmarks/{module_name}.py is missing)"
        raise
    run = getattr(module, function, None)
    if not callable(run):
        return f"not available yet ({module_name}.{function} is missing)"
    return run  # type: ignore[no-any-return]


def run_one(name: str, settle: float | None) -> list[FloodResult] | str:
    run = load(name)
    if isinstance(run, str):
        return run
    params = inspect.signature(run).parameters
    kwargs: dict[str, Any] = {}
    if settle is not None and "settle" in params:
        kwargs["settle"] = settle
    with Procs() as procs:
        out = run(procs, **kwargs) if "procs" in params else run(**kwargs)
        if inspect.isawaitable(out):
            out = asyncio.run(_awaited(out))
    items = [] if out is None else list(out) if isinstance(out, list | tuple) else [out]
    settle_default = float(getattr(sys.modules[run.__module__], "SETTLE_SECONDS", 0.0))
    results = [r if isinstance(r, FloodResult) else from_dict(name, r, settle_default)
               for r in items]
    for result in results:
        if not result.checks and name in TARGETS:
            TARGETS[name](result)
    return results


async def _awaited(out: Awaitable[Any]) -> Any:
    return await out


def from_dict(name: str, raw: dict[str, Any], settle: float = 0.0) -> FloodResult:
    """A flood that reports a dict: `rss_mib` {before, peak, after}, `healthz_ms` {p50, p99,
    count}; every other key becomes a figure."""
    rss = raw.get("rss_mib", {})
    healthz = raw.get("healthz_ms", {})
    result = FloodResult(str(raw.get("name", name)), float(rss.get("before", 0.0)),
                         float(rss.get("peak", 0.0)), float(rss.get("after", 0.0)),
                         float(raw.get("settle_s", raw.get("settle", settle))),
                         duration=float(raw.get("seconds", 0.0)))
    if "p50" in healthz:
        result.reported = {0.5: float(healthz["p50"]), 0.99: float(healthz["p99"])}
        result.healthz_answered = int(healthz.get("count", 0))
    skip = {"name", "rss_mib", "healthz_ms", "settle_s", "settle", "seconds", "checks"}
    result.figures.update({k: str(v) for k, v in raw.items() if k not in skip})
    for target, met in raw.get("checks", []):
        result.check(str(target), bool(met))
    return result


def _growth_mb(result: FloodResult) -> float:
    return result.peak_growth_mib * MIB / 1e6


def _ws_targets(result: FloodResult) -> None:
    growth = _growth_mb(result)
    result.check(f"RSS growth under 150 MB (+{growth:.0f} MB)", growth < 150)


TARGETS: dict[str, Callable[[FloodResult], None]] = {"ws": _ws_targets}


def summary(rows: list[tuple[str, FloodResult | str]]) -> str:
    table = []
    for name, res in rows:
        if isinstance(res, str):
            table.append([name, res, "", "", "", "", ""])
            continue
        p50, p99 = res.percentile(0.5), res.percentile(0.99)
        met = sum(1 for _, ok in res.checks if ok)
        table.append([
            res.name, f"{res.rss_before:.0f}", f"{res.rss_peak:.0f} (+{res.peak_growth_mib:.0f})",
            f"{res.rss_after:.0f} ({res.after_growth_mib:+.0f})",
            "-" if p50 is None else f"{p50:.1f}", "-" if p99 is None else f"{p99:.1f}",
            f"{met}/{len(res.checks)}"])
    return harness.markdown_table(
        ["flood", "RSS before MiB", "peak MiB", "after MiB", "healthz p50 ms", "p99 ms",
         "targets met"], table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated, from: {', '.join(FLOODS)}")
    parser.add_argument("--settle", type=float,
                        help="seconds after each flood before RSS is read again "
                             "(default: each flood's own, 10 s for most)")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    names = [n.strip() for n in (args.only or ",".join(FLOODS)).split(",") if n.strip()]
    if unknown := [n for n in names if n not in FLOODS]:
        parser.error(f"unknown flood(s) {unknown}; choose from {', '.join(FLOODS)}")
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    rows: list[tuple[str, FloodResult | str]] = []
    started = time.monotonic()
    for name in names:
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        try:
            results = run_one(name, args.settle)
        except BenchError as exc:
            results = f"failed: {exc.summary}"
            print(exc, file=sys.stderr)
        except Exception as exc:  # one broken flood must not hide the others' figures
            first = (str(exc).splitlines() or [""])[0]
            results = f"failed: {type(exc).__name__}: {first}"
            traceback.print_exc()
        if isinstance(results, str):
            print(f"== {name}: {results}", flush=True)
            rows.append((name, results))
            continue
        for res in results:
            print(res.render(), flush=True)
            rows.append((name, res))
    print(f"\nHostile load: {os.cpu_count()} cores, {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{time.monotonic() - started:.0f} s\n")
    print(summary(rows))
    if args.json:
        harness.save_json(args.json, {"floods": [
            {"flood": name, **(res.as_dict() if isinstance(res, FloodResult) else
                               {"skipped": res})} for name, res in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
