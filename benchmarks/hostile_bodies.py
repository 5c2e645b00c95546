"""Hostile load, upstream bodies: gzip bombs and endless chunked replies at c=50.

Issue 11 measured 500 requests at c=50 peaking at 3.5 GB of RSS (1 GiB gzip
bombs) and 1.6 GB (50 MB chunked bodies), staying >= 2.9 GB afterwards, with
`/healthz` p50 going from 2 ms to ~1 s while bombs were inflated on the event
loop. Targets, with `gateway.max_buffered_bytes` at 64 MiB: peak under
+400 MB, back within 100 MB of the baseline 10 s later, `/healthz` p50 under
100 ms during the burst.

The upstream is a separate process on the load core (this file, run with
`--serve-upstream PORT`): `/bomb` answers 1 GiB of zeros gzipped into ~1 MB,
`/chunked` 50 MB of JSON-looking chunks; both stream as fast as they are read.

    python benchmarks/hostile.py --only bodies
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
import zlib
from collections import Counter
from typing import Any

import harness
import httpx
from flood import MIB, FloodResult, Watch, start_gateway
from harness import BENCH_DIR, BIN, LOAD_CPUS, Procs

REQUESTS = 300  # of each kind
CONCURRENCY = 50
BUDGET = 64 * MIB
BOMB_MIB = 1024
CHUNKED_BYTES = 50_000_000
PIECE = 64 * 1024
PEAK_TARGET_MB = 400  # in 10^6 bytes, like the figures
AFTER_TARGET_MB = 100
HEALTHZ_TARGET_MS = 100.0
BUDGET_ERROR = "gateway memory budget exhausted"

CONFIG = """
[gateway]
timeout = 30.0
deadline = 60.0
max_buffered_bytes = {budget}

[upstreams.hostile]
url = "{upstream}"
max_connections = {concurrency}

[[endpoints]]
route = "/bomb"

  [[endpoints.calls]]
  name = "bomb"
  upstream = "hostile"
  path = "/bomb"

[[endpoints]]
route = "/chunked"

  [[endpoints.calls]]
  name = "chunked"
  upstream = "hostile"
  path = "/chunked"
"""


def run_body_floods(procs: Procs, settle: float = 10.0, requests: int = REQUESTS,
                    concurrency: int = CONCURRENCY) -> list[FloodResult]:
    """Both floods, each against a fresh gateway (one worker) so each has its own baseline."""
    upstream = _start_upstream(procs)
    config = CONFIG.format(budget=BUDGET, upstream=upstream, concurrency=concurrency)
    results = []
    for path, label in (("/bomb", f"{requests} gzip bombs (1 GiB of zeros, ~1 MB)"),
                        ("/chunked", f"{requests} chunked {CHUNKED_BYTES / 1e6:.0f} MB bodies")):
        proc, base = start_gateway(procs, f"bodies-gateway{path.replace('/', '-')}", config)
        asyncio.run(_burst(base, path, 1, 1))  # one in line first: pools and buffers exist
        with Watch(proc.pid, base) as watch:
            started, cpu = time.monotonic(), harness.cpu_seconds(proc.pid)
            outcomes = asyncio.run(_burst(base, path, requests, concurrency))
            elapsed, cpu = time.monotonic() - started, harness.cpu_seconds(proc.pid) - cpu
        result = watch.result(f"bodies: {label} at c={concurrency}, "
                              f"{BUDGET // MIB} MiB budget", settle)
        _judge(result, outcomes, elapsed, cpu, _exhausted_total(base))
        results.append(result)
        procs.stop(proc)
    return results


def _judge(result: FloodResult, outcomes: Counter[str], elapsed: float, cpu: float,
           exhausted: float) -> None:
    result.figures["answers"] = ", ".join(f"{n} x {what}" for what, n in outcomes.most_common())
    result.figures["burst"] = (f"{elapsed:.1f} s, gateway CPU {cpu:.1f} s; "
                               f"gateway_memory_budget_exhausted_total {exhausted:.0f}")
    peak_mb = result.peak_growth_mib * MIB / 1e6
    after_mb = result.after_growth_mib * MIB / 1e6
    p50 = result.percentile(0.5)
    result.check(f"RSS peak under +{PEAK_TARGET_MB} MB (+{peak_mb:.0f} MB)",
                 peak_mb < PEAK_TARGET_MB)
    result.check(f"within {AFTER_TARGET_MB} MB of the baseline {result.settle:.0f} s later "
                 f"({after_mb:+.0f} MB)", after_mb < AFTER_TARGET_MB)
    result.check(f"/healthz p50 under {HEALTHZ_TARGET_MS:.0f} ms during the burst "
                 f"({'-' if p50 is None else f'{p50:.1f}'} ms)",
                 p50 is not None and p50 < HEALTHZ_TARGET_MS)
    result.check("every answer a 502 (too large) or a 503 (budget), with the envelope",
                 set(outcomes) <= {"502 too large", f"503 {BUDGET_ERROR}"})


async def _burst(base: str, path: str, requests: int, concurrency: int) -> Counter[str]:
    """`requests` GETs of `path`, `concurrency` at a time; what came back, counted."""
    outcomes: Counter[str] = Counter()
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits,
                                 trust_env=False) as client:

        async def worker() -> None:
            for _ in todo:
                response = await client.get(path)
                outcomes[_outcome(response)] += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    return outcomes


def _outcome(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return f"{response.status_code} without the envelope"
    if not isinstance(body, dict) or "meta" not in body or body.get("data", 0) is not None:
        return f"{response.status_code} without the envelope"
    error = str(body.get("error", ""))
    if response.status_code == 502 and "sent a body over" in error:
        return "502 too large"
    return f"{response.status_code} {error[:80]}"


def _exhausted_total(base: str) -> float:
    text = httpx.get(f"{base}/metrics", trust_env=False, timeout=10.0).text
    for line in text.splitlines():
        if line.startswith("gateway_memory_budget_exhausted_total "):
            return float(line.split()[1])
    return float("nan")


# --------------------------------------------------------------------------- the upstream


def _start_upstream(procs: Procs) -> str:
    port = harness.free_port()
    argv = [str(BIN / "python"), str(BENCH_DIR / "hostile_bodies.py"),
            "--serve-upstream", str(port)]
    proc = procs.start("bodies-upstream", argv, LOAD_CPUS)
    base = f"http://127.0.0.1:{port}"
    harness.wait_http_ok(proc, f"{base}/ready")
    return base


def gzip_bomb(decoded_mib: int) -> bytes:
    """`decoded_mib` MiB of zeros as one valid gzip member, built in well under a second.

    After a full flush the compressor's state is the same for every 1 MiB block of zeros,
    so one block's compressed bytes are repeated instead of compressing them all.
    """
    block = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()
    crc = 0
    for _ in range(decoded_mib):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (decoded_mib * MIB) & 0xFFFFFFFF)
    return header + repeated * decoded_mib + end + trailer


async def _serve_upstream(port: int) -> None:
    bomb = gzip_bomb(BOMB_MIB)
    piece = b"[" + b"1," * (PIECE // 2 - 1) + b"\n"
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1]
            if path == b"/bomb":
                writer.write(head + b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n"
                             % len(bomb))
                for i in range(0, len(bomb), PIECE):
                    writer.write(bomb[i:i + PIECE])
                    await writer.drain()
            elif path == b"/chunked":
                writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
                for _ in range(CHUNKED_BYTES // len(piece)):
                    writer.write(chunk)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(head + b"content-length: 2\r\n\r\n{}")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the gateway hung up: what it is meant to do
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-upstream", type=int, metavar="PORT",
                        help="run the hostile upstream on this port (used by the flood)")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--settle", type=float, default=10.0)
    args = parser.parse_args()
    if args.serve_upstream:
        asyncio.run(_serve_upstream(args.serve_upstream))
        return 0
    harness.install_sigterm_handler()
    harness.pin_self(LOAD_CPUS)
    with Procs() as procs:
        for result in run_body_floods(procs, args.settle, args.requests):
            print(result.render(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
