"""Paired before/after of the payload path: two gateway packages, blocks alternating.

    python benchmarks/payload_ab.py OTHER_TREE [--sizes 100000,1000000] [--blocks 10]

OTHER_TREE is a folder holding another `gateway` package (for one commit:
`git archive <rev> gateway | tar -x -C /tmp/before`), put first on that gateway's
`PYTHONPATH`; the other gateway runs this checkout's. Both are up at once, pinned to
core 0, with payload.py's config for each size, and get alternating blocks of
`/fanout/<id>` requests (A B B A ..., each on a fresh keep-alive connection), so both
see the same machine: a change's effect survives a load that moves payload.py's
absolute figures between two runs. Prints CPU per request of each, and the change.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time

import configs
import harness
import latency
import payload
from harness import LOAD_CPUS, SERVER_CPUS, Procs


def compare(procs: Procs, upstream: str, size: int, other: str, blocks: int,
            megabytes: float) -> list[str]:
    config = payload.gateway_config(size)
    config["endpoints"] = config["endpoints"][:1]  # /fanout only: no reference hook
    path = procs.file(f"ab-{size}.toml", configs.dumps(config))
    servers = [dataclasses.replace(harness.gateway_server(f"other-{size}", path),
                                   env={"PYTHONPATH": other}),
               harness.gateway_server(f"this-{size}", path)]
    per_block = max(3, round(megabytes * 1e6 / size / blocks))
    cpu: list[list[float]] = [[], []]
    with contextlib.ExitStack() as stack:
        running = [stack.enter_context(harness.running(procs, s, upstream, 1, SERVER_CPUS))
                   for s in servers]
        for block in range(blocks):
            for i in (0, 1) if block % 2 == 0 else (1, 0):
                proc, base = running[i]
                client = latency.Client(base)  # fresh: the other's block outlasts keep-alive
                try:
                    client.get("/fanout/0")
                    cpu0 = harness.cpu_seconds(proc.pid)
                    for k in range(per_block):
                        client.get(f"/fanout/{k}")
                    time.sleep(0.03)  # the last reply's cleanup
                    cpu[i].append(1000 * (harness.cpu_seconds(proc.pid) - cpu0) / per_block)
                finally:
                    client.close()
    before, after = statistics.fmean(cpu[0]), statistics.fmean(cpu[1])
    return [f"{size / 1000:,.0f} KB", f"{before:.2f}", f"{after:.2f}",
            f"{100 * (after / before - 1):+.1f}%", str(per_block * blocks),
            f"{os.getloadavg()[0]:.1f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", help="a folder holding the other gateway package")
    parser.add_argument("--sizes", default="100000,1000000,5000000")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--megabytes", type=float, default=150.0, help="per gateway and size")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.other, "gateway")):
        parser.error(f"{args.other} holds no gateway package")
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    rows = []
    try:
        with Procs() as procs:
            upstream = harness.start_upstream(procs)
            for size in (int(s) for s in args.sizes.split(",")):
                print(f"  {size} bytes ...", file=sys.stderr, flush=True)
                rows.append(compare(procs, upstream, size, args.other, args.blocks,
                                    args.megabytes))
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    head = ["reply", f"CPU ms/req, {args.other}", "CPU ms/req, this checkout", "change",
            "requests each", "load avg"]
    print(harness.markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
