"""Width curve (issue 14 items 1 and 2): server time per request at 1, 3, 10, 30 upstream calls.

    python benchmarks/width.py [--widths 1,3,10,30] [--only gateway,aiohttp] [--duration 5]
    python benchmarks/width.py --json benchmarks/results/width.json && \\
        python benchmarks/chart.py benchmarks/results/width.json   # docs/width.png

Every server answers `GET /fanout/<id>` with N concurrent upstream GETs
(`CALLS=N` for the servers in servers/, a generated config with N calls for
the gateway, all to one upstream with its default pool of 100 connections),
on one core (core 0), under `wrk -t1 -c32` from core 1, all in one run. The
figure is the server's CPU time per request (CPU seconds of its process tree /
requests answered): with the server core saturated it equals 1e6 / req/s, and
unlike req/s it does not count the time other processes on a shared machine
took from that core (1e6 / req/s is saved too, as wall_us_per_request). The
slope is the least-squares fit of it against N: the marginal cost of one call.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import configs
import harness
from harness import LOAD_CPUS, SERVER_CPUS, BenchError, Procs, Server

WIDTHS = (1, 3, 10, 30)
PEERS = ("gateway", "aiohttp", "quart-httpx-aiohttp", "quart-httpx", "flask-asyncio")
LABELS = {
    "gateway": "gateway",
    "aiohttp": "aiohttp server + client",
    "quart-httpx-aiohttp": "quart_tuned (Quart + one httpx client over httpx-aiohttp)",
    "quart-httpx": "minimal Quart + httpx view",
    "flask-asyncio": "Flask + asyncio.run (gunicorn threads)",
}
SLOPE_GOAL = 1.3  # gateway slope / aiohttp slope (issue 14 item 1)
TUNED_GOAL = 1.2  # quart_tuned's time / the gateway's at 3 calls (issue 14 item 2)


def gateway_config(calls: int) -> dict[str, Any]:
    src = ["abc"[i % 3] for i in range(calls)]
    return {
        "gateway": {"strategy": "parallel", "timeout": 5.0, "deadline": 10.0},
        "upstreams": {"up": {"url": "${UPSTREAM}"}},
        "endpoints": [
            {
                "route": "/fanout/<int:id>",
                "method": "GET",
                "calls": [
                    {"name": f"{s}{i}", "upstream": "up", "path": f"/{s}/{{id}}"}
                    for i, s in enumerate(src)
                ],
            }
        ],
    }


def _server(procs: Procs, name: str, calls: int) -> Server:
    if name == "gateway":
        path = procs.file(f"gateway-{calls}.toml", configs.dumps(gateway_config(calls)))
        return harness.gateway_server("gateway", path)
    base = harness.SERVERS[name]
    return dataclasses.replace(base, env={**base.env, "CALLS": str(calls)})


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (calls, us/request)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def run(names: list[str], widths: list[int], duration: float, warmup: float) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with Procs() as procs:
        upstream = harness.start_upstream(procs)
        for calls in widths:
            for name in names:
                server = _server(procs, name, calls)
                reason = server.unavailable()
                if reason:
                    rows.append({"name": name, "calls": calls, "skipped": reason})
                    continue
                print(f"  {name}: {calls} calls ...", file=sys.stderr, flush=True)
                load = os.getloadavg()[0]
                try:
                    with harness.running(procs, server, upstream, 1, SERVER_CPUS) as (proc, base):
                        url = f"{base}/fanout/1"
                        harness.wrk(url, warmup, 32, timeout_s=30)
                        cpu0, t0 = harness.cpu_seconds(proc.pid), time.monotonic()
                        result = harness.wrk(url, duration, 32, timeout_s=30)
                        cpu_s = harness.cpu_seconds(proc.pid) - cpu0
                        cpu = cpu_s / (time.monotonic() - t0)
                except BenchError as exc:
                    print(f"  {name}: FAILED: {exc}", file=sys.stderr)
                    rows.append({"name": name, "calls": calls, "skipped": exc.summary})
                    continue
                if not result.requests:
                    rows.append({"name": name, "calls": calls, "skipped": "none answered"})
                    continue
                rows.append(
                    {
                        "name": name,
                        "calls": calls,
                        "rps": result.rps,
                        "requests": result.requests,
                        "us_per_request": 1e6 * cpu_s / result.requests,
                        "wall_us_per_request": 1e6 / result.rps,
                        "errors": result.errors,
                        "server_cpu": cpu,
                        "loadavg": load,
                    }
                )
    return {"rows": rows, "summary": summarise(rows, names)}


def summarise(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        points = [
            (r["calls"], r["us_per_request"])
            for r in rows
            if r["name"] == name and r.get("requests") and not r["errors"]
        ]
        if len(points) >= 2:
            out[name] = {"slope_us_per_call": slope(points), "points": dict(points)}
    gw, ai = out.get("gateway"), out.get("aiohttp")
    if gw and ai and ai["slope_us_per_call"]:
        out["slope_ratio_gateway_to_aiohttp"] = gw["slope_us_per_call"] / ai["slope_us_per_call"]
    tuned = out.get("quart-httpx-aiohttp")
    if gw and tuned:
        common = sorted(set(gw["points"]) & set(tuned["points"]))
        out["quart_tuned_over_gateway"] = {
            str(n): tuned["points"][n] / gw["points"][n] for n in common
        }
    return out


def table(result: dict[str, Any], widths: list[int]) -> str:
    rows, summary = result["rows"], result["summary"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    aiohttp_slope = summary.get("aiohttp", {}).get("slope_us_per_call")
    body = []
    for name in names:
        cells = []
        for n in widths:
            r = next((r for r in rows if r["name"] == name and r["calls"] == n), None)
            if r is None or "rps" not in r:
                cells.append("-")
            else:
                mark = f" ({r['errors']} errors)" if r["errors"] else ""
                cells.append(f"{r['us_per_request']:,.0f}{mark}")
        s = summary.get(name, {}).get("slope_us_per_call")
        ratio = f"{s / aiohttp_slope:.2f}x" if s is not None and aiohttp_slope else "-"
        body.append([LABELS.get(name, name), *cells, f"{s:,.0f}" if s is not None else "-", ratio])
    head = [
        "server (CPU us/request)",
        *(f"{n} call{'s' if n > 1 else ''}" for n in widths),
        "slope us/call",
        "slope vs aiohttp",
    ]
    loads = [r["loadavg"] for r in rows if "loadavg" in r]
    lines = [
        "## Width: server CPU us per request, one core, wrk -c32",
        "",
        harness.markdown_table(head, body),
        "",
    ]
    if "slope_ratio_gateway_to_aiohttp" in summary:
        ratio = summary["slope_ratio_gateway_to_aiohttp"]
        met = "met" if ratio <= SLOPE_GOAL else "not met"
        lines.append(f"gateway slope / aiohttp slope: {ratio:.2f}x (goal <= {SLOPE_GOAL}x: {met})")
    for n, r in summary.get("quart_tuned_over_gateway", {}).items():
        goal = ""
        if n == "3":
            goal = f" (goal >= {TUNED_GOAL}x: {'met' if r >= TUNED_GOAL else 'not met'})"
        lines.append(f"quart_tuned / gateway at {n} calls: {r:.2f}x the gateway's time{goal}")
    if loads:
        lines.append(f"load average during the run: {min(loads):.1f} .. {max(loads):.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default=",".join(str(w) for w in WIDTHS))
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(PEERS)}")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; choose from {', '.join(PEERS)}")
    widths = [int(w) for w in args.widths.split(",")]
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    try:
        result = run(names, widths, args.duration, args.warmup)
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    result["environment"] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "widths": widths,
        "duration_s": args.duration,
    }
    print(table(result, widths))
    if args.json:
        harness.save_json(args.json, {"width": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
