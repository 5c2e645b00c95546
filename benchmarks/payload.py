"""Payload curve (issue 14 item 3): gateway CPU per MB of upstream reply vs orjson alone.

    python benchmarks/payload.py [--sizes 1000,100000,1000000,5000000] [--megabytes 200]

For each size, a gateway (one worker, core 0) whose one route makes one call to
upstream.py's `/big/{bytes}` (a JSON object of many small objects, core 1) gets
requests one after another on one keep-alive connection, ~`--megabytes` of
replies in all (at least 20 requests, at most 3000), so that every CPU second
counted belongs to a finished request (under wrk, 5 MB requests still in flight
at the end would be counted too). CPU time of the gateway per request, per MB
of reply, and the marginal cost per MB against the smallest size (what the bytes
cost, without the per-request overhead). The reference: `orjson.loads`
then `orjson.dumps` of the same bytes in a process on the same core, CPU time per
MB. The goal is a marginal cost of at most 1.5x that reference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import configs
import harness
import latency
from harness import BIN, LOAD_CPUS, SERVER_CPUS, Procs

SIZES = (1_000, 100_000, 1_000_000, 5_000_000)
GOAL = 1.5

# Runs on the server core: CPU seconds per MB of orjson.loads + orjson.dumps of stdin.
_REFERENCE = """
import sys, time, orjson
raw = sys.stdin.buffer.read()
n = max(3, int(2e8 // max(len(raw), 1)))  # ~200 MB of JSON in all, at least 3 rounds
start = time.process_time()
for _ in range(n):
    orjson.dumps(orjson.loads(raw))
print((time.process_time() - start) / n / (len(raw) / 1e6))
"""


def gateway_config(size: int) -> dict[str, Any]:
    return {
        "gateway": {"max_upstream_bytes": max(10 * 1024 * 1024, 2 * size)},
        "upstreams": {"big": {"url": "${UPSTREAM}"}},
        "endpoints": [
            {
                "route": "/fanout/<int:id>",
                "method": "GET",
                "calls": [{"name": "big", "upstream": "big", "path": f"/big/{size}"}],
            }
        ],
    }


def reference_cpu_per_mb(raw: bytes) -> float:
    cmd = [str(BIN / "python"), "-c", _REFERENCE]
    if os.cpu_count() and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", SERVER_CPUS, *cmd]
    out = subprocess.run(cmd, input=raw, capture_output=True, check=True, timeout=300)
    return float(out.stdout)


def run(sizes: list[int], megabytes: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Procs() as procs:
        upstream = harness.start_upstream(procs)
        for size in sizes:
            with urllib.request.urlopen(f"{upstream}/big/{size}", timeout=30) as response:
                raw = response.read()
            mb = len(raw) / 1e6
            text = configs.dumps(gateway_config(size))
            server = harness.gateway_server(f"gateway-{size}", procs.file(f"{size}.toml", text))
            print(f"  {len(raw)} bytes ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            n = max(20, min(3000, round(megabytes * 1e6 / len(raw))))
            with harness.running(procs, server, upstream, 1, SERVER_CPUS) as (proc, base):
                client = latency.Client(base)
                try:
                    for _ in range(3):
                        client.get("/fanout/1")  # warm: pools, allocator
                    cpu0, t0 = harness.cpu_seconds(proc.pid), time.perf_counter()
                    statuses = [client.get(f"/fanout/{i}")[1] for i in range(n)]
                    wall = time.perf_counter() - t0
                    time.sleep(0.1)  # the last reply's cleanup
                    cpu = harness.cpu_seconds(proc.pid) - cpu0
                finally:
                    client.close()
            per_request = cpu / n
            rows.append(
                {
                    "bytes": len(raw),
                    "rps": n / wall,
                    "requests": n,
                    "errors": sum(1 for s in statuses if s != 200),
                    "cpu_ms_per_request": 1000 * per_request,
                    "cpu_ms_per_mb": 1000 * per_request / mb,
                    "orjson_ms_per_mb": 1000 * reference_cpu_per_mb(raw),
                    "loadavg": load,
                }
            )
    base_row = rows[0]
    for row in rows[1:]:
        extra_mb = (row["bytes"] - base_row["bytes"]) / 1e6
        extra_ms = row["cpu_ms_per_request"] - base_row["cpu_ms_per_request"]
        row["marginal_ms_per_mb"] = extra_ms / extra_mb
        row["ratio"] = row["marginal_ms_per_mb"] / row["orjson_ms_per_mb"]
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        marginal = f"{r['marginal_ms_per_mb']:.2f}" if "marginal_ms_per_mb" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        body.append(
            [
                f"{r['bytes'] / 1000:,.0f} KB",
                f"{r['rps']:.0f}",
                f"{r['cpu_ms_per_request']:.2f}",
                f"{r['cpu_ms_per_mb']:.2f}",
                marginal,
                f"{r['orjson_ms_per_mb']:.2f}",
                ratio,
                str(r["errors"]),
                f"{r['loadavg']:.1f}",
            ]
        )
    head = [
        "reply",
        "req/s",
        "CPU ms/req",
        "CPU ms/MB",
        "marginal ms/MB",
        "orjson loads+dumps ms/MB",
        f"ratio (goal <= {GOAL:g}x)",
        "errors",
        "load avg",
    ]
    return "## Payload: one call, reply size varies\n\n" + harness.markdown_table(head, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--megabytes", type=float, default=200.0, help="of replies per size")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    try:
        rows = run([int(s) for s in args.sizes.split(",")], args.megabytes)
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    print(table(rows))
    if args.json:
        harness.save_json(args.json, {"payload": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
