"""Hostile load, jobs: 150 background jobs whose aggregate answers ~2 MB of JSON each.

Issue 11 measured 3.48 GB of RSS after 14 s of this on a memory store that kept
every finished result as parsed objects for its whole `ttl`. The target is a
peak under +200 MB: results are kept as JSON bytes, within
`jobs.max_finished_bytes` (64 MiB by default), the oldest dropped first.

    python benchmarks/hostile.py --only jobs
"""

from __future__ import annotations

import time

import harness
import httpx
from flood import MIB, FloodResult, Watch, start_gateway
from harness import Procs

JOBS = 150
RESULT_BYTES = 2_000_000
TARGET_MB = 200  # peak RSS growth, in 10^6 bytes
FINISH_WITHIN = 120.0  # seconds; the flood is abandoned past this

CONFIG = """
[gateway]
timeout = 20.0
deadline = 30.0

[jobs]
store = "memory"
max_running = 4
max_queued = {queued}
ttl = 300

[upstreams.big]
url = "{upstream}"

[[endpoints]]
route = "/big"

  [[endpoints.calls]]
  name = "big"
  upstream = "big"
  path = "/big/{size}"
"""


def run_jobs_flood(procs: Procs, settle: float = 10.0, jobs: int = JOBS) -> FloodResult:
    upstream = harness.start_upstream(procs, "jobs-upstream")
    config = CONFIG.format(queued=jobs - 4, upstream=upstream, size=RESULT_BYTES)
    proc, base = start_gateway(procs, "jobs-gateway", config)
    with httpx.Client(base_url=base, timeout=30.0, trust_env=False) as http:
        http.get("/big").raise_for_status()  # one aggregate in line: allocate its buffers once
        with Watch(proc.pid, base) as watch:
            started = time.monotonic()
            urls = []
            for _ in range(jobs):
                accepted = http.get("/big", headers={"Prefer": "respond-async"})
                if accepted.status_code != 202:
                    raise harness.BenchError(f"job not accepted: {accepted.status_code} "
                                             f"{accepted.text[:200]}")
                urls.append(accepted.headers["Location"])
            submitted = time.monotonic() - started
            last = _wait(http, urls[-1])  # jobs start in order: the last one ends last
            finished = time.monotonic() - started
            statuses = [http.get(url).status_code for url in urls]
        result = watch.result(f"jobs: {jobs} x {RESULT_BYTES / 1e6:.0f} MB job results",
                              settle)
    kept = statuses.count(200)
    result.figures["submitted in"] = f"{submitted:.1f} s; all finished after {finished:.1f} s"
    result.figures["readable at the end"] = (
        f"{kept} (200), {statuses.count(404)} dropped (404), last job {last}")
    growth_mb = result.peak_growth_mib * MIB / 1e6
    result.check(f"RSS peak under +{TARGET_MB} MB (+{growth_mb:.0f} MB)", growth_mb < TARGET_MB)
    result.check("oldest finished jobs dropped first",
                 statuses == [404] * (jobs - kept) + [200] * kept and kept > 0)
    return result


def _wait(http: httpx.Client, url: str) -> str:
    give_up = time.monotonic() + FINISH_WITHIN
    while time.monotonic() < give_up:
        response = http.get(url)
        if response.status_code == 200:
            status: str = response.json()["status"]
            return status
        if response.status_code != 202:
            return f"HTTP {response.status_code}"
        time.sleep(0.05)
    raise harness.BenchError(f"the last job did not finish within {FINISH_WITHIN:.0f} s")
