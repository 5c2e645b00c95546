"""Batching under a burst (issue 14 item 4): how many upstream batch calls carry its keys?

    python benchmarks/batching.py [--bursts 10] [--requests 20] [--window-ms 5] [--steady-s 4]

`--requests` requests (default 20), 2 keys each (`GET /pair/<a>/<b>`, two keyed
calls), are written at once over as many warm keep-alive connections
(burst.py) to `gateway serve` (one worker, core 0), whose upstream is
upstream.py's `/batch` endpoint (core 1). Two configs, the bursts alternating
between them: `fixed` sets `max_wait_ms = window_ms`, i.e. the batch goes when
the window ends, as before issue 14; `idle` is the default, the batch also
waits for an idle loop pass (up to `max_wait_ms`, 4 windows by default). The
count of batch calls and keys comes from the gateway's own
`gateway_upstream_batch_keys` histogram, read before and after each burst.

The clients (burst.py), each over `--requests` connections warmed first: `held`
writes the burst with the gateway stopped (SIGSTOP), so it finds all of it at
once; `raw` writes every request before reading any answer; `aiohttp` and
`httpx_each` (one httpx client per connection) are ordinary async clients firing
with `asyncio.gather`; `httpx` is one httpx client over one pool, which spends ms
of its own CPU per request and so sends them one by one. Per client: when the
last request was written, its CPU per request, and connections it opened during
the burst (0: the pool was warm). Then, under steady load (`--steady-s` seconds of
wrk at 1 and 32 connections on `/fanout/<id>`, one key a request), what waiting for
an idle loop costs a worker that is never idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import urllib.request
from typing import Any

import burst
import configs
import harness
from harness import LOAD_CPUS, SERVER_CPUS, Procs


def gateway_config(window_ms: float, fixed: bool) -> dict[str, Any]:
    batch: dict[str, Any] = {"path": "/batch", "param": "ids", "key": "id", "window_ms": window_ms}
    if fixed:
        batch["max_wait_ms"] = window_ms
    keyed = [
        {"name": n, "upstream": "people", "batch_key": k}
        for n, k in (("first", "{a}"), ("second", "{b}"))
    ]
    return {
        "upstreams": {"people": {"url": "${UPSTREAM}", "batch": batch}},
        "endpoints": [
            {"route": "/pair/<int:a>/<int:b>", "method": "GET", "calls": keyed},
            # harness.running() waits for /fanout/1 to answer 200
            {
                "route": "/fanout/<int:id>",
                "method": "GET",
                "calls": [{"name": "x", "upstream": "people", "batch_key": "{id}"}],
            },
        ],
    }


def _batch_counts(base: str) -> tuple[float, float]:
    """(batch calls, keys) so far, from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()

    def value(series: str) -> float:
        match = re.search(
            rf'^gateway_upstream_batch_keys_{series}{{upstream="people"}} (\S+)$', text, re.M
        )
        return float(match[1]) if match else 0.0

    return value("count"), value("sum")


def _fire(client: str, base: str, paths: list[str], pgid: int) -> burst.Fired:
    port = int(base.rsplit(":", 1)[1])
    if client in ("held", "raw"):
        hold = pgid if client == "held" else None
        return asyncio.run(burst.raw_burst("127.0.0.1", port, paths, warm="/healthz", hold=hold))
    fire = {
        "aiohttp": burst.aiohttp_burst,
        "httpx_each": burst.httpx_per_connection_burst,
        "httpx": burst.httpx_burst,
    }[client]
    return asyncio.run(fire(base, paths, "/healthz"))


def _one_burst(base: str, n: int, first_key: int, client: str, pgid: int) -> dict[str, Any]:
    paths = [f"/pair/{first_key + 2 * i}/{first_key + 2 * i + 1}" for i in range(n)]
    calls0, keys0 = _batch_counts(base)
    fired = _fire(client, base, paths, pgid)
    calls1, keys1 = _batch_counts(base)
    return {
        "calls": int(calls1 - calls0),
        "keys": int(keys1 - keys0),
        "errors": sum(1 for status in fired.statuses if status != 200),
        "wall_ms": 1000 * fired.wall,
        "written_ms": 1000 * fired.written,
        "client_cpu_us": 1e6 * fired.cpu / n,
        "connects": fired.connects,
    }


CLIENTS = ("held", "raw", "aiohttp", "httpx_each", "httpx")
DESIGNS = ("fixed", "idle")


STEADY_CONNECTIONS = (1, 32)


def _steady(running: dict[str, tuple[harness.Proc, str]], seconds: float) -> list[dict[str, Any]]:
    """wrk on /fanout/<id> (one key a request, ids 1..1000), each design in turn twice
    (means of the two): what waiting for an idle loop costs a worker never idle."""
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    for connections in STEADY_CONNECTIONS:
        for turn in range(2):
            for name in DESIGNS if turn == 0 else DESIGNS[::-1]:
                base = running[name][1]
                calls0, keys0 = _batch_counts(base)
                result = harness.wrk(f"{base}/fanout/1", seconds, connections=connections)
                calls1, keys1 = _batch_counts(base)
                runs.setdefault((connections, name), []).append(
                    {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                     "keys_per_call": (keys1 - keys0) / max(calls1 - calls0, 1),
                     "errors": result.errors})
    return [
        {"connections": connections, "name": name, "runs": rs,
         **{k: statistics.mean(r[k] for r in rs) for k in rs[0]}}
        for (connections, name), rs in runs.items()
    ]


def run(bursts: int, requests: int, window_ms: float,
        steady_s: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {
        (c, d): [] for c in CLIENTS for d in DESIGNS
    }
    with Procs() as procs, contextlib.ExitStack() as stack:
        upstream = harness.start_upstream(procs)
        running = {}
        for name in DESIGNS:
            text = configs.dumps(gateway_config(window_ms, fixed=name == "fixed"))
            server = harness.gateway_server(f"gateway-{name}", procs.file(f"{name}.toml", text))
            running[name] = stack.enter_context(
                harness.running(procs, server, upstream, 1, SERVER_CPUS)
            )
        key = 1
        for i in range(bursts + 1):  # the first round warms everything up and is not counted
            for client in CLIENTS:
                for name in DESIGNS if i % 2 == 0 else DESIGNS[::-1]:
                    proc, base = running[name]
                    result = _one_burst(base, requests, key, client, proc.pid)
                    key += 2 * requests
                    if i:
                        results[client, name].append(result)
        steady = _steady(running, steady_s) if steady_s > 0 else []
    rows = []
    for (client, name), rs in results.items():
        calls = [r["calls"] for r in rs]
        rows.append(
            {
                "client": client,
                "name": name,
                "bursts": rs,
                "calls_median": statistics.median(calls),
                "calls_max": max(calls),
                "keys_per_call": sum(r["keys"] for r in rs) / max(sum(calls), 1),
                "wall_ms_median": statistics.median(r["wall_ms"] for r in rs),
                "written_ms_median": statistics.median(r["written_ms"] for r in rs),
                "client_cpu_us_median": statistics.median(r["client_cpu_us"] for r in rs),
                "connects": sum(r["connects"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "loadavg": [load_before, os.getloadavg()[0]],
            }
        )
    return rows, steady


def table(rows: list[dict[str, Any]], requests: int, window_ms: float) -> str:
    clients = {
        "held": "arrive at once (server held)",
        "raw": "all written at once",
        "aiohttp": "aiohttp.ClientSession, gather",
        "httpx_each": "httpx, a client per connection",
        "httpx": "httpx, one client (one pool)",
    }
    titles = {
        "fixed": f"fixed {window_ms:g} ms window (before)",
        "idle": "window + idle loop (now)",
    }
    body = [
        [
            clients[r["client"]],
            titles[r["name"]],
            f"{r['calls_median']:g}",
            str(r["calls_max"]),
            f"{r['keys_per_call']:.1f}",
            f"{r['written_ms_median']:.1f}",
            f"{r['client_cpu_us_median']:.0f}",
            f"{r['wall_ms_median']:.1f}",
            str(r["connects"]),
            str(r["errors"]),
        ]
        for r in rows
    ]
    head = [
        "client",
        "batching",
        "calls/burst (median)",
        "max",
        "keys/call",
        "last written ms",
        "client CPU us/req",
        "burst ms",
        "new conns",
        "errors",
    ]
    return (
        f"## Batching: {requests} requests x 2 keys at once, window_ms = {window_ms:g}\n\n"
        + harness.markdown_table(head, body)
    )


def steady_table(rows: list[dict[str, Any]], window_ms: float) -> str:
    body = [
        [
            str(r["connections"]),
            "fixed window (before)" if r["name"] == "fixed" else "window + idle loop (now)",
            f"{r['rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['keys_per_call']:.1f}",
            f"{r['errors']:g}",
        ]
        for r in rows
    ]
    head = ["wrk -c", "batching", "req/s", "p50 ms", "p99 ms", "keys/call", "errors"]
    return (
        f"## Steady load: wrk on /fanout/<1..1000> (1 key each), window_ms = {window_ms:g}, "
        "means of 2 runs\n\n"
        + harness.markdown_table(head, body)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=10, help="bursts per config")
    parser.add_argument("--requests", type=int, default=20, help="requests (connections) a burst")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--steady-s", type=float, default=4.0,
                        help="seconds of each wrk run under steady load (0: none)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    try:
        rows, steady = run(args.bursts, args.requests, args.window_ms, args.steady_s)
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    print(table(rows, args.requests, args.window_ms))
    if steady:
        print("\n" + steady_table(steady, args.window_ms))
    load = rows[0]["loadavg"]
    print(f"\nload average {load[0]:.1f} before, {load[1]:.1f} after")
    if args.json:
        harness.save_json(args.json, {"batching": rows, "steady": steady})
    return 0


if __name__ == "__main__":
    sys.exit(main())
