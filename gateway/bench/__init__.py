"""`gateway bench`: measure what parallel fan-out saves on one route.

The same route is run with `X-Gateway-Strategy: parallel` and then `sequential`,
so the only difference between the two runs is how the gateway schedules its
calls. Latency is measured by the client (what a frontend sees); the ideal
speedup comes from the per-call `elapsed_ms` the gateway reports in `meta.calls`.

With `--config` the gateway is started as a subprocess on a free loopback port
and stopped afterwards, so one command measures a config without any setup.

    stats.py    the pure parts: percentiles, critical path, the report and its table
    load.py     the closed-loop load generator (bench_url)
    spawn.py    a gateway in a subprocess, healthy before the run and stopped after
    command.py  the `gateway bench` arguments and exit codes
"""

from .command import configure_parser, run
from .load import STRATEGIES, STRATEGY_HEADER, Progress, bench_url
from .spawn import READY_TIMEOUT, STOP_GRACE
from .stats import (
    MAX_REASONS,
    BenchReport,
    StrategyStats,
    critical_path_ms,
    format_report,
    ideal_speedup,
    percentile,
)

__all__ = [
    "MAX_REASONS",
    "READY_TIMEOUT",
    "STOP_GRACE",
    "STRATEGIES",
    "STRATEGY_HEADER",
    "BenchReport",
    "Progress",
    "StrategyStats",
    "bench_url",
    "configure_parser",
    "critical_path_ms",
    "format_report",
    "ideal_speedup",
    "percentile",
    "run",
]
