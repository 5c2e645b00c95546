"""The gateway of two source trees, A/B in one run: does a change cost throughput?

    git worktree add /tmp/before main      # or: git archive REV | tar -x -C /tmp/before
    python benchmarks/ab_checkout.py --before /tmp/before [--rounds 3] [--duration 10]
    python benchmarks/ab_checkout.py --before /tmp/before --calls 1,30   # per-call slope

Both run the same `benchmarks/gateway.toml` 3-call fan-out, one after the other
and alternating (before, after, before, after...) against one upstream, so a
drift of the machine lands on both. "before" is this venv's `gateway` with
`PYTHONPATH` pointing at the other tree (its package shadows the editable
install); "after" is this checkout. Prints req/s and the server's CPU per
request for each round, and the medians. `--calls` runs width.py's route with
each number of calls instead, and prints the slope of CPU per request per call.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

import configs
import harness
import run
import width
from harness import SERVER_CPUS, Procs, Server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path, help="the other source tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--calls", help="e.g. 1,30: width.py's route with that many calls")
    args = parser.parse_args()
    if args.calls:
        return _slopes(args, [int(n) for n in args.calls.split(",")])
    if not (args.before / "gateway" / "__init__.py").is_file():
        raise SystemExit(f"{args.before} holds no gateway package")
    harness.install_sigterm_handler()
    after = harness.SERVERS["gateway"]
    before = dataclasses.replace(after, name="before",
                                 env={**after.env, "PYTHONPATH": str(args.before.resolve())})
    after = dataclasses.replace(after, name="after")
    rows: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with Procs() as procs:
        upstream = harness.start_upstream(procs)
        for n in range(args.rounds):
            for server in (before, after):
                row, us = _cpu_per_request(procs, server, upstream, args)
                rows[server.name].append({"rps": row["rps"], "cpu_us": us})
                print(f"round {n + 1} {server.name:>6}: {row['rps']:8.1f} req/s  "
                      f"{us:7.0f} us CPU/request  load core {row['load_core_busy']:.0%}",
                      file=sys.stderr, flush=True)
    b, a = (statistics.median(r["rps"] for r in rows[k]) for k in ("before", "after"))
    bc, ac = (statistics.median(r["cpu_us"] for r in rows[k]) for k in ("before", "after"))
    print(f"| tree | req/s (median of {args.rounds}) | server CPU us/request |\n|---|--:|--:|")
    print(f"| before | {b:.1f} | {bc:.0f} |\n| after | {a:.1f} | {ac:.0f} |")
    print(f"after/before: throughput {a / b:.3f}x, CPU per request {ac / bc:.3f}x")
    return 0


def _cpu_per_request(procs: Procs, server: Server, upstream: str,
                     args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """One measured wrk run of `server` on the server core: its row and CPU µs/request."""
    row = run._measure(procs, server, upstream, args.duration, args.warmup,
                       args.connections, 1, SERVER_CPUS)
    if "skipped" in row or row["errors"]:
        raise SystemExit(f"{server.name}: {row.get('skipped') or 'errors'}")
    return row, row["server_cpu"] * 1e6 / row["rps"]


def _slopes(args: argparse.Namespace, widths: list[int]) -> int:
    """CPU per request at each width for both trees, alternating; the slope per call."""
    harness.install_sigterm_handler()
    env = {"PYTHONPATH": str(args.before.resolve())}
    cpu: dict[tuple[str, int], list[float]] = {}
    with Procs() as procs:
        upstream = harness.start_upstream(procs)
        for _ in range(args.rounds):
            for n in widths:
                path = procs.file(f"gateway-{n}.toml", configs.dumps(width.gateway_config(n)))
                after: Server = harness.gateway_server("after", path)
                before = dataclasses.replace(after, name="before", env=env)
                for server in (before, after):
                    _, us = _cpu_per_request(procs, server, upstream, args)
                    cpu.setdefault((server.name, n), []).append(us)
                    print(f"{server.name:>6} {n:3} calls: {us:8.0f} us CPU/request",
                          file=sys.stderr, flush=True)
    lo, hi = min(widths), max(widths)
    for name in ("before", "after"):
        med = {n: statistics.median(cpu[(name, n)]) for n in widths}
        slope = (med[hi] - med[lo]) / (hi - lo) if hi > lo else 0.0
        cells = ", ".join(f"{n}: {med[n]:.0f}" for n in widths)
        print(f"{name}: CPU us/request {cells}; slope {slope:.0f} us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
