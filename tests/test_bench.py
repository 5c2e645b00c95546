"""`gateway bench` against a fake gateway on loopback, so it needs none of the gateway core."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from gateway.bench import (
    MAX_REASONS,
    BenchReport,
    StrategyStats,
    bench_url,
    configure_parser,
    critical_path_ms,
    format_report,
    ideal_speedup,
    percentile,
    run,
)
from gateway.bench.spawn import _GatewayStartError, spawned
from gateway.bench.stats import Sample, summarise

# the fake's sequential answer is 3x slower, as if its three calls ran one by one
DELAY = {"parallel": 0.02, "sequential": 0.06}  # far apart: robust on a busy machine
CALL_MS = {"user": 100.0, "orders": 200.0, "account": 300.0}


def _envelope(strategy: str, *, error: str | None = None) -> bytes:
    calls = {
        name: {"status": 200, "ok": True, "elapsed_ms": ms, "attempts": 1, "cached": False}
        for name, ms in CALL_MS.items()
    }
    meta = {"processing_time_ms": 1.0, "strategy": strategy, "complete": True, "calls": calls}
    body: dict[str, object] = {"data": None if error else {}, "meta": meta}
    if error:
        body["error"] = error
    return json.dumps(body).encode()


async def _answer(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    strategy = headers.get("x-gateway-strategy", "parallel")
    if path == "/healthz":
        return 200, b'{"status": "ok"}'
    if path == "/dashboard/7":
        await asyncio.sleep(DELAY[strategy])
        return 200, _envelope(strategy)
    if path == "/broken":
        return 500, _envelope(strategy, error="upstream 'users' answered 500")
    return 404, b"{}"


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Just enough HTTP/1.1 for GETs with keep-alive."""
    try:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.split("\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                status, body = await _answer(request_line.split(" ")[1], headers)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
    finally:
        writer.close()


class _FakeGateway:
    """Runs in its own thread and loop, so sync tests can call `run()` (which owns a loop)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()))
        self.port = 0

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(5)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with _FakeGateway() as url:
        yield url


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway bench")
    configure_parser(parser)
    return parser.parse_args(argv)


# --- pure parts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        (range(1, 101), 50, 50),
        (range(1, 101), 95, 95),
        (range(1, 101), 99, 99),
        (range(1, 101), 100, 100),
        (range(1, 1001), 99.9, 999),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([5.0, 1.0, 4.0, 2.0], 50, 2.0),
        ([7.0], 99, 7.0),
        ([4.0, 9.0], 0, 4.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == expected


@pytest.mark.parametrize(("values", "p"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_rejects_no_values_and_bad_rank(values: list[float], p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile(values, p)


def test_ideal_speedup_is_sum_over_slowest_call() -> None:
    calls = {name: {"elapsed_ms": ms, "ok": True} for name, ms in CALL_MS.items()}
    assert ideal_speedup(calls) == pytest.approx(2.0)


def test_ideal_speedup_follows_deps_when_the_envelope_has_them() -> None:
    calls = {
        "user": {"elapsed_ms": 100.0},
        "orders": {"elapsed_ms": 200.0},
        "account": {"elapsed_ms": 300.0, "deps": ["user"]},
    }
    assert ideal_speedup(calls) == pytest.approx(600 / 400)


def test_ideal_speedup_is_none_without_timings() -> None:
    assert ideal_speedup({}) is None
    assert ideal_speedup({"a": {"elapsed_ms": 0.0}, "b": {"status": 200}}) is None


def test_critical_path_survives_a_cycle() -> None:
    assert critical_path_ms({"a": 1.0, "b": 2.0}, {"a": ["b"], "b": ["a"]}) == 3.0


def test_format_report_shows_both_strategies_and_missing_values_as_dashes() -> None:
    ok = StrategyStats(10, 0, 5.0, 6.0, 7.0, 5.5, 800.0, 2.0)
    failed = StrategyStats(10, 10, None, None, None, None, 900.0, None, {"HTTP 500": 10})
    report = BenchReport("http://h:1", "/d/7", 10, 2, 0, ok, failed, None, 2.0)
    text = format_report(report)
    assert "GET http://h:1/d/7" in text
    assert [line.split()[0] for line in text.splitlines()[4:6]] == ["parallel", "sequential"]
    assert "measured      -" in text
    assert "ideal     2.00x" in text
    assert "failures sequential: HTTP 500 x10" in text


# --- against the fake gateway -----------------------------------------------


async def test_bench_url_measures_both_strategies(gateway_url: str) -> None:
    lines: list[str] = []
    report = await bench_url(
        gateway_url, "/dashboard/7", requests=20, concurrency=4, warmup=2, progress=lines.append
    )
    for stats in (report.parallel, report.sequential):
        assert (stats.requests, stats.errors) == (20, 0)
        assert stats.p50_ms is not None
        assert stats.p95_ms is not None
        assert stats.p99_ms is not None
        assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
        assert stats.rps > 0
        assert stats.ideal_speedup == pytest.approx(2.0)
    assert report.speedup_ideal == pytest.approx(2.0)
    assert report.speedup_measured is not None
    assert report.speedup_measured > 1
    assert "parallel: 20/20 requests, 0 errors" in lines
    assert lines[-1] == "sequential: 20/20 requests, 0 errors"


async def test_bench_url_counts_non_2xx_as_errors(gateway_url: str) -> None:
    report = await bench_url(gateway_url, "/broken", requests=6, concurrency=3, warmup=0)
    assert (report.parallel.requests, report.parallel.errors) == (6, 6)
    assert report.parallel.failures == {"HTTP 500": 6}
    assert report.parallel.p50_ms is None
    assert report.speedup_measured is None
    assert report.all_failed


def test_run_json_prints_one_object_and_no_progress_off_a_terminal(
    gateway_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", gateway_url, "/dashboard/7", "--requests", "8", "--concurrency", "2"]
    assert run(_args(*argv, "--warmup", "1", "--json")) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert {"route", "requests", "concurrency", "strategies", "speedup"} <= result.keys()
    assert (result["route"], result["requests"], result["concurrency"]) == ("/dashboard/7", 8, 2)
    assert result["strategies"].keys() == {"parallel", "sequential"}
    assert {"p50_ms", "p95_ms", "p99_ms", "rps", "errors"} <= result["strategies"][
        "parallel"
    ].keys()
    assert result["speedup"]["ideal"] == pytest.approx(2.0)
    assert result["speedup"]["measured"] > 1
    assert err == ""


async def test_bench_keeps_the_envelopes_error_line_of_failed_requests(gateway_url: str) -> None:
    report = await bench_url(gateway_url, "/broken", requests=4, concurrency=2, warmup=0)
    assert report.parallel.reasons == {"HTTP 500: upstream 'users' answered 500": 4}
    assert report.to_dict()["strategies"]["sequential"]["reasons"] == {
        "HTTP 500: upstream 'users' answered 500": 4}
    text = format_report(report)
    assert "failures parallel: HTTP 500 x4\n  HTTP 500 x4: upstream 'users' answered 500" in text


def test_bench_reasons_are_bounded() -> None:
    """Distinct error lines beyond MAX_REASONS are counted together, not each kept."""
    samples = [Sample(1.0, "HTTP 502", None, f"upstream 'u{i}' is unreachable")
               for i in range(MAX_REASONS + 5)]
    stats = summarise(samples, 1.0)
    assert len(stats.reasons) == MAX_REASONS + 1
    assert stats.reasons["HTTP 502: other reasons"] == 5
    assert stats.failures == {"HTTP 502": MAX_REASONS + 5}


def test_run_exits_1_when_every_request_failed(
    gateway_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_args("--url", gateway_url, "/broken", "--requests", "3", "--warmup", "0")) == 1
    out, err = capsys.readouterr()
    assert "HTTP 500 x3" in out
    assert "every request failed" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["/d"],
        ["--url", "http://h:1", "--config", "g.toml", "/d"],
        ["--url", "http://h:1", "d"],
        ["--url", "h:1", "/d"],
        ["--url", "http://h:1", "/d", "--requests", "0"],
        ["--url", "http://h:1", "/d", "--timeout", "0"],
    ],
)
def test_parser_rejects_bad_usage_with_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _args(*argv)
    assert exited.value.code == 2


def test_run_with_a_missing_config_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args("--config", "/nonexistent/gateway.toml", "/d")) == 2
    assert "config file not found" in capsys.readouterr().err


# --- the gateway subprocess (a stand-in command, since `serve` lives elsewhere) ---

_HEALTHY = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_spawned_enters_once_healthy_and_stops_the_process() -> None:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    async with (
        spawned([sys.executable, "-c", _HEALTHY, str(port)], url) as proc,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        assert (await client.get(f"{url}/healthz")).status_code == 200
    assert proc.returncode is not None


async def test_spawned_reports_an_early_exit_in_one_line() -> None:
    script = "import sys; sys.stderr.write('bad config\\n\\n  line two\\n'); sys.exit(3)"
    with pytest.raises(
        _GatewayStartError, match=r"code 3 before it was ready: bad config; line two"
    ):
        async with spawned([sys.executable, "-c", script], f"http://127.0.0.1:{_port()}"):
            pytest.fail("entered although the gateway exited")


async def test_spawned_gives_up_when_healthz_never_answers() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(_GatewayStartError, match="did not answer GET /healthz"):
        async with spawned(argv, f"http://127.0.0.1:{_port()}", ready_timeout=0.3):
            pytest.fail("entered although the gateway never became healthy")
