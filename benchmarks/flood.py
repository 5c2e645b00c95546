"""What every hostile-load flood measures, and a gateway to flood (benchmarks/hostile.py).

    with Watch(gateway.pid, base_url) as watch:   # RSS every 50 ms, /healthz in a loop
        ...the flood...
    result = watch.result("jobs", settle=10.0)    # RSS again `settle` s after the flood
    result.check("RSS growth under +200 MB", result.peak_growth_mib < 200)
    print(result.render())

RSS is `VmRSS` from /proc/PID/status summed over the gateway's process tree
(the `gateway serve` process and any workers), like benchmarks/memory.py.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import harness
from harness import BIN, HYPERCORN_CONFIG, SERVER_CPUS, Proc, Procs

MIB = 1024 * 1024
SAMPLE_EVERY = 0.05  # seconds between RSS samples
PROBE_EVERY = 0.02  # seconds between /healthz probes (after each answer)
PROBE_TIMEOUT = 5.0


def tree_rss_mib(pid: int) -> float:
    return sum(harness.rss_kib(p) for p in harness.process_tree(pid)) / 1024


@dataclass
class FloodResult:
    """One flood's figures: RSS before/peak/after (MiB), /healthz latency, its own checks."""

    name: str
    rss_before: float
    rss_peak: float
    rss_after: float
    settle: float  # seconds between the end of the flood and `rss_after`
    healthz_ms: list[float] = field(default_factory=list)
    healthz_errors: int = 0
    duration: float = 0.0
    figures: dict[str, str] = field(default_factory=dict)  # name -> value, flood-specific
    checks: list[tuple[str, bool]] = field(default_factory=list)  # (target, met)
    # Percentiles a flood measured itself (q -> ms), when it reports no `healthz_ms` list.
    reported: dict[float, float] = field(default_factory=dict)
    healthz_answered: int | None = None

    @property
    def peak_growth_mib(self) -> float:
        return self.rss_peak - self.rss_before

    @property
    def after_growth_mib(self) -> float:
        return self.rss_after - self.rss_before

    def percentile(self, q: float) -> float | None:
        if not self.healthz_ms:
            return self.reported.get(q)
        ordered = sorted(self.healthz_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def check(self, target: str, met: bool) -> None:
        self.checks.append((target, met))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rss_before_mib": self.rss_before,
                "rss_peak_mib": self.rss_peak, "rss_after_mib": self.rss_after,
                "settle_s": self.settle, "healthz_p50_ms": self.percentile(0.5),
                "healthz_p99_ms": self.percentile(0.99), "healthz_probes": len(self.healthz_ms),
                "healthz_errors": self.healthz_errors, "duration_s": self.duration,
                "figures": self.figures, "checks": self.checks}

    def render(self) -> str:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        lat = "no answer" if p50 is None or p99 is None else f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        answered = len(self.healthz_ms) if self.healthz_answered is None else self.healthz_answered
        lat += f" ({answered} answered, {self.healthz_errors} failed)"
        lines = [
            f"== {self.name} ({self.duration:.1f} s)",
            f"  RSS MiB: before {self.rss_before:.0f}, peak {self.rss_peak:.0f} "
            f"(+{self.peak_growth_mib:.0f}), after {self.settle:.0f} s {self.rss_after:.0f} "
            f"({self.after_growth_mib:+.0f})",
            f"  /healthz during the flood: {lat}",
        ]
        lines += [f"  {name}: {value}" for name, value in self.figures.items()]
        lines += [f"  [{'ok' if met else 'MISSED'}] {target}" for target, met in self.checks]
        return "\n".join(lines)


class Watch(contextlib.AbstractContextManager["Watch"]):
    """Samples the gateway's RSS and probes its /healthz from two threads while in use."""

    def __init__(self, pid: int, base_url: str, healthz: str = "/healthz") -> None:
        self.pid = pid
        self.base_url = base_url
        self.healthz = healthz
        self.before = tree_rss_mib(pid)
        self.peak = self.before
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._probe, daemon=True)]
        self._started = 0.0
        self._ended = 0.0

    def __enter__(self) -> Watch:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ended = time.monotonic()
        self._stop.set()
        for thread in self._threads:
            thread.join(PROBE_TIMEOUT + 1)

    def result(self, name: str, settle: float = 10.0) -> FloodResult:
        """The figures, with RSS read again (and still peaked) over `settle` seconds."""
        give_up = time.monotonic() + settle
        while time.monotonic() < give_up:
            self.peak = max(self.peak, tree_rss_mib(self.pid))
            time.sleep(SAMPLE_EVERY)
        after = tree_rss_mib(self.pid)
        return FloodResult(name, self.before, max(self.peak, after), after, settle,
                           list(self.latencies), self.errors, self._ended - self._started)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mib(self.pid))
            self._stop.wait(SAMPLE_EVERY)

    def _probe(self) -> None:
        host, port = self.base_url.removeprefix("http://").split(":")
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=PROBE_TIMEOUT)
            started = time.perf_counter()
            try:
                conn.request("GET", self.healthz)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = None
            if ok:
                self.latencies.append((time.perf_counter() - started) * 1000)
            else:
                self.errors += 1
            self._stop.wait(PROBE_EVERY)
        if conn is not None:
            conn.close()


def start_gateway(procs: Procs, name: str, config_toml: str, workers: int = 1,
                  cpus: str | None = SERVER_CPUS, env: dict[str, str] | None = None
                  ) -> tuple[Proc, str]:
    """`gateway serve --workers N` with this config, ready on /healthz: (proc, base URL)."""
    config = procs.file(f"{name}.toml", config_toml)
    port = harness.free_port()
    argv = [str(BIN / "gateway"), "serve", "--config", str(config), "--bind",
            f"127.0.0.1:{port}", "--workers", str(workers),
            "--hypercorn-config", str(HYPERCORN_CONFIG)]
    proc = procs.start(name, argv, cpus, env)
    base = f"http://127.0.0.1:{port}"
    harness.wait_http_ok(proc, f"{base}/healthz")
    return proc, base
