"""Latency benchmark: what the gateway adds to one request, and what parallelism saves.

1. Overhead: the three upstream calls each take 50 ms; one client sends
   requests one after another (keep-alive). overhead = p50 - 50 ms, the
   time the server adds on top of its slowest call. A direct call to the
   upstream is measured the same way, so its own cost (~50 ms + loopback)
   can be told apart from the server's.
2. Strategy: the calls take 100, 200 and 300 ms. The same route is called
   with `X-Gateway-Strategy: parallel` and `: sequential`; ideally
   sequential / parallel = (100+200+300) / 300 = 2.0.

    python benchmarks/latency.py [--only gateway,aiohttp] [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import harness
from harness import LOAD_CPUS, BenchError, Procs, Server

CALL_MS = 50.0
STRATEGY_DELAYS = "a=100,b=200,c=300"
IDEAL_SPEEDUP = (100 + 200 + 300) / 300
ROUNDS = 4  # the overhead's requests, in alternating rounds over all servers
TUNED_GOAL = 0.8  # the gateway's overhead over a direct call / quart_tuned's (issue 14 item 2)


class Client:
    """One keep-alive connection, requests one at a time: nothing but the server is measured."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self._conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=30
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[float, int, bytes]:
        """-> (milliseconds, status, body)."""
        start = time.perf_counter()
        self._conn.request("GET", path, headers=headers or {})
        response = self._conn.getresponse()
        body = response.read()
        return (time.perf_counter() - start) * 1000, response.status, body

    def close(self) -> None:
        self._conn.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def sample(base: str, path: str, n: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    client = Client(base)
    try:
        for _ in range(min(10, n)):  # warm the connection and the server's pools
            client.get(path, headers)
        times, bodies, errors = [], [], 0
        for _ in range(n):
            ms, status, body = client.get(path, headers)
            times.append(ms)
            if status != 200:
                errors += 1
            bodies.append(body)
    finally:
        client.close()
    return {
        "n": n,
        "errors": errors,
        "p50_ms": statistics.median(times),
        "p99_ms": percentile(times, 99),
        "min_ms": min(times),
        "times": times,
        "bodies": bodies,
    }


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One sample of several rounds' samples."""
    times = [t for p in parts for t in p["times"]]
    return {
        "n": len(times),
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": statistics.median(times),
        "p99_ms": percentile(times, 99),
        "min_ms": min(times),
        "bodies": [b for p in parts for b in p["bodies"]],
    }


def _meta(bodies: list[bytes]) -> list[dict[str, Any]]:
    """The gateway's `meta` objects (empty for servers that do not send one)."""
    metas = []
    for body in bodies:
        try:
            meta = json.loads(body).get("meta")
        except (ValueError, AttributeError):
            continue
        if isinstance(meta, dict):
            metas.append(meta)
    return metas


def overhead(servers: list[Server], n: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """All servers up at once, sampled in alternating rounds (n / rounds requests each), so
    that a drift of a shared machine lands on every server alike."""
    rows: list[dict[str, Any]] = []
    with Procs() as procs, contextlib.ExitStack() as running:
        upstream = harness.start_upstream(
            procs, "upstream-50ms", f"a={CALL_MS},b={CALL_MS},c={CALL_MS}"
        )
        bases: dict[str, str] = {"direct upstream call": upstream}
        for server in servers:
            reason = server.unavailable()
            if reason:
                print(f"  {server.name}: skipped ({reason})", file=sys.stderr)
                rows.append({"name": server.name, "skipped": reason})
                continue
            try:
                _, bases[server.name] = running.enter_context(
                    harness.running(procs, server, upstream))
            except BenchError as exc:
                print(f"  {server.name}: FAILED: {exc}", file=sys.stderr)
                rows.append({"name": server.name, "skipped": exc.summary})
        per_round = max(1, n // rounds)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in bases}
        for i in range(rounds):
            print(f"  round {i + 1}/{rounds}: {per_round} sequential requests each ...",
                  file=sys.stderr, flush=True)
            for name, base in bases.items():
                path = "/a/1" if name == "direct upstream call" else "/fanout/1"
                samples[name].append(sample(base, path, per_round))
        for name, parts in samples.items():
            result = _merged(parts)
            processing = [
                m["processing_time_ms"]
                for m in _meta(result["bodies"])
                if "processing_time_ms" in m
            ]
            if processing:
                result["reported_processing_p50_ms"] = statistics.median(processing)
            rows.insert(len([r for r in rows if "p50_ms" in r]), {"name": name, **result})
    direct = next(r for r in rows if r["name"] == "direct upstream call")
    for row in rows:
        row.pop("bodies", None)
        row.pop("times", None)
        if "p50_ms" in row:
            row["overhead_p50_ms"] = row["p50_ms"] - CALL_MS
            row["overhead_vs_direct_ms"] = row["p50_ms"] - direct["p50_ms"]

    table = []
    for r in rows:
        if "skipped" in r:
            table.append([r["name"], "-", "-", "-", "-", "-", r["skipped"]])
            continue
        reported = r.get("reported_processing_p50_ms")
        table.append(
            [
                r["name"],
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['overhead_p50_ms']:.2f}",
                f"{r['overhead_vs_direct_ms']:.2f}",
                f"{reported:.2f}" if reported is not None else "-",
                f"{r['errors']} errors" if r["errors"] else "",
            ]
        )
    print(f"\n## Latency: 3 concurrent {CALL_MS:.0f} ms calls, one client, {n} requests\n")
    print(
        harness.markdown_table(
            ["server", "p50 ms", "p99 ms", "p50 - 50 ms", "p50 - direct p50", "meta p50 ms", ""],
            table,
        )
    )
    by_name = {r["name"]: r for r in rows if "overhead_vs_direct_ms" in r}
    gateway, tuned = by_name.get("gateway"), by_name.get("quart-httpx-aiohttp")
    out: dict[str, Any] = {"call_ms": CALL_MS, "rows": rows}
    if gateway and tuned and tuned["overhead_vs_direct_ms"] > 0:
        ratio = gateway["overhead_vs_direct_ms"] / tuned["overhead_vs_direct_ms"]
        out["gateway_over_quart_tuned"] = ratio
        met = "met" if ratio <= TUNED_GOAL else "not met"
        print(f"\ngateway's overhead / quart_tuned's: {ratio:.2f}x (goal <= {TUNED_GOAL}x: {met})")
    return out


def strategies(gateway: Server, n: int) -> dict[str, Any]:
    reason = gateway.unavailable()
    if reason:
        print(f"\n## Parallel vs sequential: skipped ({reason})")
        return {"skipped": reason}
    results: dict[str, Any] = {"ideal": IDEAL_SPEEDUP}
    with Procs() as procs:
        upstream = harness.start_upstream(procs, "upstream-100-200-300", STRATEGY_DELAYS)
        print(f"  {gateway.name}: {n} parallel + {n} sequential ...", file=sys.stderr, flush=True)
        with harness.running(procs, gateway, upstream) as (_, base):
            for strategy in ("parallel", "sequential"):
                result = sample(base, "/fanout/1", n, {"X-Gateway-Strategy": strategy})
                ran = {m.get("strategy") for m in _meta(result.pop("bodies"))}
                result["meta_strategy"] = sorted(str(s) for s in ran)
                results[strategy] = result
    par, seq = results["parallel"], results["sequential"]
    results["speedup"] = seq["p50_ms"] / par["p50_ms"]
    print("\n## Parallel vs sequential: calls of 100, 200, 300 ms\n")
    print(
        harness.markdown_table(
            ["strategy", "p50 ms", "p99 ms", "ideal ms", "meta.strategy", ""],
            [
                [
                    s,
                    f"{results[s]['p50_ms']:.1f}",
                    f"{results[s]['p99_ms']:.1f}",
                    ideal,
                    ",".join(results[s]["meta_strategy"]) or "-",
                    f"{results[s]['errors']} errors" if results[s]["errors"] else "",
                ]
                for s, ideal in (("parallel", "300"), ("sequential", "600"))
            ],
        )
    )
    print(
        f"\nspeedup sequential/parallel = {results['speedup']:.3f} "
        f"(ideal {IDEAL_SPEEDUP:.1f}; {100 * results['speedup'] / IDEAL_SPEEDUP:.1f}% of ideal)"
    )
    if results["parallel"]["meta_strategy"] != ["parallel"] or results["sequential"][
        "meta_strategy"
    ] != ["sequential"]:
        print("! meta.strategy does not match the X-Gateway-Strategy header sent")
    return results


def run(servers: list[Server], n: int, strategy_n: int) -> dict[str, Any]:
    out = {"overhead": overhead(servers, n)}
    out["strategies"] = strategies(harness.SERVERS["gateway"], strategy_n)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(harness.SERVERS)}")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--strategy-requests", type=int, default=20)
    args = parser.parse_args()
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    run(harness.select_servers(args.only), args.requests, args.strategy_requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
