"""Memory benchmark: RSS of the server (parent + workers) at fixed request counts.

wrk runs in segments with a Lua script that stops it after N responses
(lua/fanout_count.lua), so RSS is read after ~1k, 10k, 50k and 100k
requests. Steady state is what matters: RSS may rise while pools, caches
and allocator arenas warm up, but must not keep rising from 10k to 100k.

    python benchmarks/memory.py [--only gateway,quart-httpx] [--requests 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import harness
from harness import LOAD_CPUS, BenchError, Procs, Server

# Growth in the second half of the run above both of these is reported as a leak.
LEAK_MIB = 5.0
LEAK_FRACTION = 0.05


def checkpoints(total: int) -> list[int]:
    points = [p for p in (1_000, 10_000, total // 2) if p < total]
    return sorted({*points, total})


def rss_mib(pid: int) -> tuple[float, dict[int, float]]:
    per_pid = {p: harness.rss_kib(p) / 1024 for p in harness.process_tree(pid)}
    return sum(per_pid.values()), per_pid


def measure(
    procs: Procs, server: Server, upstream: str, total: int, max_seconds: float, connections: int
) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    deadline = time.monotonic() + max_seconds
    with harness.running(procs, server, upstream) as (proc, base):
        rss, _ = rss_mib(proc.pid)
        points.append({"checkpoint": 0, "requests": 0, "rss_mib": rss})
        done = 0
        for target in checkpoints(total):
            remaining = deadline - time.monotonic()
            if remaining < 1:
                print(f"  {server.name}: time budget spent at {done} requests", file=sys.stderr)
                break
            result = harness.wrk(
                f"{base}/fanout/1",
                duration=remaining,
                connections=connections,
                stop_after=target - done,
            )
            done += result.requests
            time.sleep(0.5)  # let the last responses and their cleanup finish
            rss, per_pid = rss_mib(proc.pid)
            points.append(
                {
                    "checkpoint": target,
                    "requests": done,
                    "rss_mib": rss,
                    "per_pid_mib": per_pid,
                    "rps": result.rps,
                    "errors": result.errors,
                }
            )
            print(f"  {server.name}: {done:>7} requests  RSS {rss:7.1f} MiB", file=sys.stderr)
    return {"name": server.name, "points": points, **_verdict(points)}


def _verdict(points: list[dict[str, Any]]) -> dict[str, Any]:
    after_1k = next((p for p in points if p["requests"] >= 1_000), None)
    if after_1k is None or points[-1] is after_1k:
        return {"verdict": "not enough requests to judge"}
    # Judge the second half of the run, after warm-up.
    last = points[-1]
    mid = min(
        (p for p in points if p["requests"] >= last["requests"] // 2 and p is not last),
        key=lambda p: p["requests"],
        default=after_1k,
    )
    late_growth = last["rss_mib"] - mid["rss_mib"]
    leak = late_growth > max(LEAK_MIB, LEAK_FRACTION * mid["rss_mib"])
    return {
        "growth_1k_to_last_mib": last["rss_mib"] - after_1k["rss_mib"],
        "growth_late_mib": late_growth,
        "verdict": "GROWING" if leak else "flat",
    }


def run(
    servers: list[Server], total: int, max_seconds: float, connections: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with Procs() as procs:
        upstream = harness.start_upstream(procs)
        for server in servers:
            reason = server.unavailable()
            if reason:
                print(f"  {server.name}: skipped ({reason})", file=sys.stderr)
                results.append({"name": server.name, "skipped": reason})
                continue
            try:
                results.append(measure(procs, server, upstream, total, max_seconds, connections))
            except BenchError as exc:
                print(f"  {server.name}: FAILED: {exc}", file=sys.stderr)
                results.append({"name": server.name, "skipped": exc.summary})

    counts = sorted(
        {p["checkpoint"] for r in results for p in r.get("points", []) if p["checkpoint"]}
    )
    headers = ["server", *(f"RSS MiB @{c:,}" for c in counts), "1k->last", "2nd half", "verdict"]
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["name"], *("-" for _ in counts), "-", "-", r["skipped"]])
            continue
        by_count = {p["checkpoint"]: p["rss_mib"] for p in r["points"]}
        rows.append(
            [
                r["name"],
                *(f"{by_count[c]:.1f}" if c in by_count else "-" for c in counts),
                f"{r.get('growth_1k_to_last_mib', 0):+.1f}",
                f"{r.get('growth_late_mib', 0):+.1f}",
                r["verdict"],
            ]
        )
    print("\n## Memory: RSS of the server process tree (parent + workers)\n")
    print(harness.markdown_table(headers, rows))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="gateway")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    run(harness.select_servers(args.only), args.requests, args.max_seconds, args.connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
