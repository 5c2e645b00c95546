"""Payload curve (issue 14 item 3): gateway CPU per MB of upstream reply vs orjson alone.

    python benchmarks/payload.py [--sizes 1000,100000,1000000,5000000] [--megabytes 200]

For each size, a gateway (one worker, core 0) serves two routes, each one call to
upstream.py (core 1): `/fanout/<id>` gets `/big/{bytes}` (a JSON object of many small
objects), `/base/<id>` gets `/big/0` (`{"items":[]}`, 12 bytes). Requests go one after
another on one keep-alive connection, in blocks that alternate between the two routes
(~`--megabytes` of replies in all), so that every CPU second counted belongs to a
finished request and both routes see the same machine. Marginal cost per MB = (CPU per
request of `/fanout` - CPU per request of `/base`) / the extra bytes: what the reply's
bytes cost, without the per-request overhead (which width.py measures).

The reference, as the issue words it, is `orjson.loads` then `orjson.dumps` of the same
bytes **in the same process**: after the gateway's requests, a `combine` hook on a third
route (`/reference`) runs that loop on the gateway worker's event loop (its heap, its
collector settings, its allocator), a slice of ~REFERENCE_MB / BLOCKS after each pair of
blocks (so that it sees the same load as they do), and reports the loop thread's CPU time
per MB. A fresh process on the same core runs it too (as this script did before the
in-process reference; both are printed). Goal: marginal cost at most 1.5x the in-process
reference. The ratio's noise (± one standard error) comes from the spread of the block
pairs; at 1 KB the reply's cost is lost in it ("within noise").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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
BLOCKS = 6  # per route: /base and /fanout alternate, BLOCKS times each
REFERENCE_MB = 150  # of JSON parsed and encoded for each reference figure

# Runs on the server core: CPU seconds per MB of orjson.loads + orjson.dumps of stdin.
_REFERENCE = """
import sys, time, orjson
raw = sys.stdin.buffer.read()
n = max(3, int(__MB__ * 1e6 // max(len(raw), 1)))
start = time.process_time()
for _ in range(n):
    orjson.dumps(orjson.loads(raw))
print((time.process_time() - start) / n / (len(raw) / 1e6))
""".replace("__MB__", str(REFERENCE_MB))

# A combine hook module beside the config: the same loop inside the gateway worker.
_HOOK = '''
import time
import orjson

RAW = open(__PATH__, "rb").read()


async def measure(results, ctx):
    n = max(1, round(__MB__ * 1e6 / len(RAW)))
    start = time.thread_time()  # the event loop's thread: this loop alone
    for _ in range(n):
        orjson.dumps(orjson.loads(RAW))
    return {"cpu_s": time.thread_time() - start, "mb": n * len(RAW) / 1e6}
'''


def gateway_config(size: int) -> dict[str, Any]:
    def route(path: str, target: str, **extra: Any) -> dict[str, Any]:
        call = {"name": "big", "upstream": "big", "path": target}
        return {"route": path, "method": "GET", "calls": [call], **extra}

    return {
        "gateway": {"max_upstream_bytes": max(10 * 1024 * 1024, 2 * size)},
        "upstreams": {"big": {"url": "${UPSTREAM}"}},
        "endpoints": [
            route("/fanout/<int:id>", f"/big/{size}"),
            route("/base/<int:id>", "/big/0"),
            route("/reference", "/big/0", combine="payload_reference:measure", deadline=300),
        ],
    }


def reference_cpu_per_mb(raw: bytes) -> float:
    """The reference in a fresh process pinned to the server core."""
    cmd = [str(BIN / "python"), "-c", _REFERENCE]
    if (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", SERVER_CPUS, *cmd]
    out = subprocess.run(cmd, input=raw, capture_output=True, check=True, timeout=300)
    return float(out.stdout)


def in_process_reference(client: latency.Client) -> tuple[float, float]:
    """A slice of the reference inside the gateway worker (the `/reference` route's hook):
    (CPU seconds of its event loop's thread, MB parsed and encoded)."""
    _, status, body = client.get("/reference")
    if status != 200:
        raise harness.BenchError(f"/reference answered {status}: {body[:200]!r}")
    data = json.loads(body)["data"]
    return float(data["cpu_s"]), float(data["mb"])


def _block(client: latency.Client, pid: int, route: str, count: int) -> tuple[float, int]:
    """CPU seconds of the gateway for `count` requests to `route`, and how many failed."""
    cpu0 = harness.cpu_seconds(pid)
    errors = sum(1 for i in range(count) if client.get(f"/{route}/{i}")[1] != 200)
    time.sleep(0.05)  # the last reply's cleanup
    return harness.cpu_seconds(pid) - cpu0, errors


def measure(procs: Procs, upstream: str, size: int, megabytes: float) -> dict[str, Any]:
    with urllib.request.urlopen(f"{upstream}/big/{size}", timeout=30) as response:
        raw = response.read()
    with urllib.request.urlopen(f"{upstream}/big/0", timeout=30) as response:
        base_bytes = len(response.read())
    reply = procs.file(f"{size}.json", "")
    reply.write_bytes(raw)
    hook = _HOOK.replace("__PATH__", repr(str(reply))).replace(
        "__MB__", str(REFERENCE_MB / BLOCKS))
    procs.file("payload_reference.py", hook)
    server = harness.gateway_server(
        f"gateway-{size}", procs.file(f"{size}.toml", configs.dumps(gateway_config(size))))
    print(f"  {len(raw)} bytes ...", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    n = max(20, min(6000, round(megabytes * 1e6 / len(raw))))
    per_block = max(5, n // BLOCKS)
    cpu: dict[str, list[float]] = {"base": [], "fanout": []}
    reference = [0.0, 0.0]  # CPU seconds, MB: a slice after each pair of blocks
    errors = 0
    wall = 0.0
    with harness.running(procs, server, upstream, 1, SERVER_CPUS) as (proc, base):
        client = latency.Client(base)
        try:
            for route in ("base", "fanout", "base", "fanout"):
                client.get(f"/{route}/1")  # warm: pools, allocator
            for _ in range(BLOCKS):
                for route in ("base", "fanout"):
                    t0 = time.perf_counter()
                    spent, failed = _block(client, proc.pid, route, per_block)
                    if route == "fanout":
                        wall += time.perf_counter() - t0
                    cpu[route].append(spent / per_block)
                    errors += failed
                spent_s, mb = in_process_reference(client)  # under the same load as the pair
                reference[0] += spent_s
                reference[1] += mb
        finally:
            client.close()
    in_process = reference[0] / reference[1]
    requests = per_block * BLOCKS
    per_request = statistics.fmean(cpu["fanout"])
    base_per_request = statistics.fmean(cpu["base"])
    extra_mb = (len(raw) - base_bytes) / 1e6
    marginal = (per_request - base_per_request) / extra_mb
    # Each pair of neighbouring blocks is one estimate: their spread is the noise.
    pairs = [(f - b) / extra_mb for f, b in zip(cpu["fanout"], cpu["base"], strict=True)]
    noise = statistics.stdev(pairs) / math.sqrt(len(pairs))
    fresh = reference_cpu_per_mb(raw)
    return {
        "bytes": len(raw),
        "rps": requests / wall,
        "requests": requests,
        "errors": errors,
        "cpu_ms_per_request": 1000 * per_request,
        "base_cpu_ms_per_request": 1000 * base_per_request,
        "cpu_ms_per_mb": 1000 * per_request / (len(raw) / 1e6),
        "marginal_ms_per_mb": 1000 * marginal,
        "marginal_stderr_ms_per_mb": 1000 * noise,
        "orjson_ms_per_mb": 1000 * in_process,
        "orjson_fresh_ms_per_mb": 1000 * fresh,
        "ratio": marginal / in_process,
        "ratio_fresh": marginal / fresh,
        "loadavg": load,
    }


def run(sizes: list[int], megabytes: float) -> list[dict[str, Any]]:
    with Procs() as procs:
        upstream = harness.start_upstream(procs)
        return [measure(procs, upstream, size, megabytes) for size in sizes]


def table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        error = r["marginal_stderr_ms_per_mb"] / r["orjson_ms_per_mb"]
        verdict = "met" if r["ratio"] <= GOAL else "NOT met"
        if 2 * error > GOAL:  # 1 KB: the reply's cost is lost in the per-request noise
            verdict = "within noise"
        body.append(
            [
                f"{r['bytes'] / 1000:,.0f} KB",
                f"{r['rps']:.0f}",
                f"{r['cpu_ms_per_request']:.2f}",
                f"{r['base_cpu_ms_per_request']:.2f}",
                f"{r['marginal_ms_per_mb']:.2f} ± {r['marginal_stderr_ms_per_mb']:.2f}",
                f"{r['orjson_ms_per_mb']:.2f}",
                f"{r['orjson_fresh_ms_per_mb']:.2f}",
                f"{r['ratio']:.2f}x ± {error:.2f} {verdict}",
                f"{r['ratio_fresh']:.2f}x",
                str(r["errors"]),
                f"{r['loadavg']:.1f}",
            ]
        )
    head = [
        "reply",
        "req/s",
        "CPU ms/req",
        "12-byte reply ms/req",
        "marginal ms/MB (± std. error)",
        "orjson loads+dumps ms/MB, in the gateway",
        "same, fresh process",
        f"ratio (goal <= {GOAL:g}x)",
        "ratio vs fresh process",
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
