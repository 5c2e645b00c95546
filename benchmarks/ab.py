"""A/B of one config key: two gateways from the same config, differing in that key, same run.

    python benchmarks/run.py ab --key limits.rate --off absent --on 1000000/second
    python benchmarks/ab.py --key gateway.dashboard --off false --on true --rounds 5
    python benchmarks/ab.py --key auth.secret --on '"${SECRET}"' \\
        --key 'endpoints[*].auth' --on true --header "Authorization: Bearer $TOKEN"

Both gateways start at once, pinned to core 0 (only the one under load uses
it), against one upstream on core 1; wrk runs alternate between them
(off, on, on, off, off, on, ...) so that drift on a shared machine hits both
alike. Each round gives a paired ratio; the cost is the median of them. A key
given several times (`--key` with its `--on` and `--off` in the same order)
changes them all together. `absent` (the default `--off`) removes the key.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import configs
import harness
from harness import LOAD_CPUS, SERVER_CPUS, BenchError, Procs


def variants(base: Path, keys: list[str], on: list[str], off: list[str]) -> dict[str, str]:
    """-> {"off": toml text, "on": toml text}; raises ValueError on a bad key path."""
    texts = {}
    for side, values in (("off", off), ("on", on)):
        config = configs.load(base)
        for key, value in zip(keys, values, strict=True):
            configs.set_key(config, key, configs.parse_value(value))
        texts[side] = configs.dumps(config)
    return texts


def _run_once(base: str, proc: harness.Proc, args: argparse.Namespace) -> dict[str, Any]:
    cpu0 = harness.cpu_seconds(proc.pid)
    result = harness.wrk(
        f"{base}/fanout/1", args.duration, args.connections, headers=tuple(args.header)
    )
    cpu = harness.cpu_seconds(proc.pid) - cpu0
    return {
        "rps": result.rps,
        "requests": result.requests,
        "errors": result.errors,
        "cpu_us_per_request": 1e6 * cpu / max(result.requests, 1),
        "p50_ms": result.p50_ms,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    texts = variants(Path(args.config), args.key, args.on, args.off)
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    load_before = os.getloadavg()
    with Procs() as procs, contextlib.ExitStack() as stack:
        upstream = harness.start_upstream(procs)
        running = {}
        for side in ("off", "on"):
            config = procs.file(f"{side}.toml", texts[side])
            server = harness.gateway_server(f"gateway-{side}", config)
            running[side] = stack.enter_context(
                harness.running(procs, server, upstream, 1, SERVER_CPUS, tuple(args.header))
            )
        for _proc, base in running.values():
            if args.warmup > 0:
                harness.wrk(
                    f"{base}/fanout/1", args.warmup, args.connections, headers=tuple(args.header)
                )
        for i in range(args.rounds):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            for side in order:
                proc, base = running[side]
                rounds[side].append(_run_once(base, proc, args))
                r = rounds[side][-1]
                print(
                    f"  round {i + 1} {side:>3}: {r['rps']:8.0f} req/s  "
                    f"{r['cpu_us_per_request']:7.0f} us CPU/req  errors {r['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
    pairs = list(zip(rounds["off"], rounds["on"], strict=True))
    costs = [1 - on["rps"] / off["rps"] for off, on in pairs]
    cpu_costs = [on["cpu_us_per_request"] / off["cpu_us_per_request"] - 1 for off, on in pairs]
    changed = zip(args.key, args.off, args.on, strict=True)
    return {
        "keys": [{"key": k, "off": f, "on": o} for k, f, o in changed],
        "rounds": rounds,
        "throughput_cost": statistics.median(costs),
        "throughput_cost_range": [min(costs), max(costs)],
        "cpu_cost": statistics.median(cpu_costs),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "duration_s": args.duration,
        "connections": args.connections,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report(result: dict[str, Any]) -> str:
    keys = ", ".join(f"`{k['key']}` {k['off']} -> {k['on']}" for k in result["keys"])
    rows = []
    for side in ("off", "on"):
        rs = result["rounds"][side]
        rows.append(
            [
                side,
                *(f"{r['rps']:.0f}" for r in rs),
                f"{statistics.median(r['rps'] for r in rs):.0f}",
                f"{statistics.median(r['cpu_us_per_request'] for r in rs):.0f}",
                str(sum(r["errors"] for r in rs)),
            ]
        )
    n = len(result["rounds"]["off"])
    headers = [
        "variant",
        *(f"round {i + 1}" for i in range(n)),
        "median req/s",
        "CPU us/req",
        "errors",
    ]
    low, high = result["throughput_cost_range"]
    before, after = result["loadavg_before"][0], result["loadavg_after"][0]
    return "\n".join(
        [
            f"## A/B: {keys}; {n} rounds x {result['duration_s']:g} s, "
            f"wrk -c{result['connections']}",
            "",
            harness.markdown_table(headers, rows),
            "",
            f"on costs {100 * result['throughput_cost']:.1f}% of throughput (median of the paired "
            f"rounds; {100 * low:.1f}% .. {100 * high:.1f}%) and {100 * result['cpu_cost']:+.1f}% "
            f"CPU per request; load average {before:.1f} before, {after:.1f} after",
        ]
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py ab", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(harness.GATEWAY_CONFIG), help="the base config")
    p.add_argument(
        "--key",
        action="append",
        required=True,
        help="key path as the gateway reports it: limits.rate, endpoints[*].auth",
    )
    p.add_argument("--on", action="append", required=True, help="TOML value for 'on'")
    p.add_argument(
        "--off",
        action="append",
        default=[],
        help=f"TOML value for 'off' (default: {configs.ABSENT}, i.e. the key removed)",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        help="'Name: value' sent on every request (both variants)",
    )
    p.add_argument("--rounds", type=int, default=4, help="wrk runs per variant")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--json", metavar="PATH", help="also save the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.off:
        args.off = [configs.ABSENT] * len(args.key)
    if not len(args.key) == len(args.on) == len(args.off):
        p.error("give one --on (and one --off, or none at all) per --key, in the same order")
    try:
        variants(Path(args.config), args.key, args.on, args.off)
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"A/B failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    print(report(result))
    if args.json:
        harness.save_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
