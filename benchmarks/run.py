"""Benchmarks: our gateway against the same 3-call fan-out on other stacks.

    python benchmarks/run.py                     # throughput table (make bench)
    python benchmarks/run.py --latency           # overhead and parallel-vs-sequential
    python benchmarks/run.py --workers           # gateway with 1 vs 2 workers
    python benchmarks/run.py --memory            # gateway RSS after 1k and 100k requests
    python benchmarks/run.py --throughput --latency --json benchmarks/results/all.json
    python benchmarks/run.py ab --key limits.rate --on 1000000/second   # one key A/B (ab.py)

Core 0 runs the server under test; core 1 runs wrk, the upstream and this
script. See benchmarks/README.md for what every number means.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

import harness
import latency
import memory
from harness import ALL_CPUS, LOAD_CPUS, SERVER_CPUS, BenchError, Procs, Server


def throughput(
    servers: list[Server], duration: float, warmup: float, connections: int
) -> list[dict[str, Any]]:
    """wrk against each server in turn, all against one upstream; one row per server."""
    rows: list[dict[str, Any]] = []
    with Procs() as procs:
        upstream = harness.start_upstream(procs)
        for server in servers:
            rows.append(
                _measure(procs, server, upstream, duration, warmup, connections, 1, SERVER_CPUS)
            )
    return rows


def workers(
    servers: list[Server], duration: float, warmup: float, connections: int
) -> list[dict[str, Any]]:
    """1 worker pinned to core 0, 1 worker unpinned, 2 workers unpinned.

    The machine has two cores and core 1 also runs wrk and the upstream, so the 2-worker
    rows share a core with the load. The upstream is nginx serving the three replies as
    static files where nginx is installed (a few µs a request), not upstream.py (whose
    ~25 µs a request, three per fan-out, filled the load core before a second worker
    could show); `upstream` in the JSON says which.
    """
    rows: list[dict[str, Any]] = []
    with Procs() as procs:
        try:
            upstream, kind = harness.start_nginx_upstream(procs), "nginx"
        except BenchError as exc:
            print(f"  {exc.summary}: upstream.py instead", file=sys.stderr)
            upstream, kind = harness.start_upstream(procs), "upstream.py"
        for server in servers:
            if not server.multi_worker:
                print(f"  {server.name}: single-process server, skipped", file=sys.stderr)
                continue
            for n, cpus in ((1, SERVER_CPUS), (1, ALL_CPUS), (2, ALL_CPUS)):
                row = _measure(procs, server, upstream, duration, warmup, connections, n, cpus)
                row["name"] = f"{server.name} w={n} cpus={cpus}"
                row["upstream"] = kind
                rows.append(row)
    return rows


def workers_summary(rows: list[dict[str, Any]]) -> str:
    """2 workers against 1 pinned worker: in req/s, and in req/s per CPU-second of the server
    (1.00x = the second worker turns the CPU it gets into requests as well as the first)."""
    done = [r for r in rows if "rps" in r and r.get("server_cpu")]
    one = next((r for r in done if r["workers"] == 1), None)
    two = next((r for r in done if r["workers"] == 2), None)
    if one is None or two is None:
        return ""
    per_cpu = (two["rps"] / two["server_cpu"]) / (one["rps"] / one["server_cpu"])
    return (
        f"\n2 workers: {two['rps'] / one['rps']:.2f}x one pinned worker (goal >= 1.85x); "
        f"server CPU {100 * two['server_cpu']:.0f}% vs {100 * one['server_cpu']:.0f}%; "
        f"req/s per server CPU-second {per_cpu:.2f}x; "
        f"load core {100 * two['load_core_busy']:.0f}%; upstream {two.get('upstream')}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def _measure(
    procs: Procs,
    server: Server,
    upstream: str,
    duration: float,
    warmup: float,
    connections: int,
    n_workers: int,
    cpus: str,
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": server.name, "title": server.title, "workers": n_workers}
    reason = server.unavailable()
    if reason:
        print(f"  {server.name}: skipped ({reason})", file=sys.stderr)
        return {**row, "skipped": reason}
    print(f"  {server.name}: workers={n_workers} cpus={cpus} ...", file=sys.stderr, flush=True)
    try:
        with harness.running(procs, server, upstream, n_workers, cpus) as (proc, base):
            url = f"{base}/fanout/1"
            if warmup > 0:
                harness.wrk(url, warmup, connections)
            load_core = int(LOAD_CPUS)
            cpu0, t0 = harness.cpu_seconds(proc.pid), time.monotonic()
            load0 = harness.core_ticks(load_core)
            result = harness.wrk(url, duration, connections)
            cpu = (harness.cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            load = harness.core_busy(load0, harness.core_ticks(load_core))
    except BenchError as exc:
        print(f"  {server.name}: FAILED: {exc}", file=sys.stderr)
        return {**row, "skipped": f"failed: {exc.summary}"}
    return {
        **row,
        **asdict(result),
        "errors": result.errors,
        "server_cpu": cpu,
        "load_core_busy": load,
    }


def throughput_table(rows: list[dict[str, Any]], reference: str = "gateway") -> str:
    ref = next((r for r in rows if r["name"].startswith(reference) and "rps" in r), None)
    table = []
    for r in rows:
        if "rps" not in r:
            table.append([r["name"], *["-"] * 7, f"skipped: {r['skipped']}"])
            continue
        ratio = f"{r['rps'] / ref['rps']:.2f}x" if ref else "n/a"
        table.append(
            [
                r["name"],
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                ratio,
                str(r["errors"]),
                f"{100 * r['server_cpu']:.0f}%",
                f"{100 * r['load_core_busy']:.0f}%",
                "",
            ]
        )
    headers = [
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        f"vs {reference}",
        "errors",
        "server CPU",
        "load core",
        "",
    ]
    return harness.markdown_table(headers, table)


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "wrk": wrk_version.splitlines()[0] if wrk_version else "?",
        "duration_s": args.duration,
        "connections": args.connections,
    }


def main() -> int:
    if sys.argv[1:2] == ["ab"]:
        import ab

        return ab.main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per server")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured wrk first")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(harness.SERVERS)}")
    parser.add_argument("--json", metavar="PATH", help="also save all results as JSON")
    parser.add_argument("--throughput", action="store_true", help="the req/s table (the default)")
    parser.add_argument("--latency", action="store_true", help="overhead and parallel/sequential")
    parser.add_argument("--workers", action="store_true", help="gateway with 1 vs 2 workers")
    parser.add_argument("--memory", action="store_true", help="gateway RSS after 1k/100k requests")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--strategy-requests", type=int, default=20)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--memory-max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    if not (args.latency or args.workers or args.memory):
        args.throughput = True

    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    results: dict[str, Any] = {"environment": _environment(args)}
    env = results["environment"]
    print(
        f"# {env['cpus']} CPUs, Python {env['python']}, {env['wrk']}; server on core "
        f"{SERVER_CPUS}, wrk/upstream on core {LOAD_CPUS}; -t1 -c{args.connections} "
        f"-d{args.duration:g}s",
        file=sys.stderr,
    )
    try:
        if args.throughput:
            rows = throughput(
                harness.select_servers(args.only), args.duration, args.warmup, args.connections
            )
            results["throughput"] = rows
            print("\n## Throughput: GET /fanout/<id>, 3 upstream calls each\n")
            print(throughput_table(rows))
        if args.latency:
            results["latency"] = latency.run(
                harness.select_servers(args.only), args.latency_requests, args.strategy_requests
            )
        if args.workers:
            rows = workers(
                harness.select_servers(args.only, ["gateway"]),
                args.duration,
                args.warmup,
                args.connections,
            )
            results["workers"] = rows
            print("\n## Workers (caveat: 2 cores; the unpinned rows share core 1 with the load)\n")
            print(throughput_table(rows, reference=rows[0]["name"] if rows else "gateway"))
            print(workers_summary(rows))
        if args.memory:
            results["memory"] = memory.run(
                harness.select_servers(args.only, ["gateway"]),
                args.memory_requests,
                args.memory_max_seconds,
                args.connections,
            )
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    finally:
        if args.json:
            harness.save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
