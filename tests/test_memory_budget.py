"""Upstream bodies under a memory budget (SPEC 13), against real upstreams on loopback.

A call that would take the process past `gateway.max_buffered_bytes` is a 503; a failed
body's buffer is gone as soon as its call fails, with the cyclic GC off; a gzip bomb never
holds the event loop; and a burst of hostile replies leaves RSS (read from /proc) bounded.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_bodies import gzip_bomb  # the benchmark's bomb: one builder, two users
from support import (
    GatewayClientFactory,
    RawHandler,
    RawUpstreamFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
    to_toml,
)

from gateway import Gateway
from gateway.reload import Reloader
from gateway.runtime import TRIM_AFTER_QUIET, Runtime

MiB = 1024 * 1024
BUDGET_ERROR = "gateway memory budget exhausted"
PIECE = 64 * 1024
SMALL_GZIP = gzip.compress(b'{"id": 1}')


# These call gc.collect(): garbage an earlier test left behind (a never-awaited coroutine of
# a server it abandoned) is then finalized here, and must not fail a test about memory.
FOREIGN_GARBAGE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="session")
def bomb() -> bytes:
    return gzip_bomb(1024)  # 1 GiB of zeros in ~1 MB


def _head(*lines: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"".join(
        line + b"\r\n" for line in lines) + b"\r\n"


def streams(head: bytes, pieces: Callable[[], Iterator[bytes]]) -> RawHandler:
    """A raw upstream writing `head` then each piece, as fast as the gateway reads."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        for piece in pieces():
            writer.write(piece)
            await writer.drain()

    return handle


def gzip_bomb_reply(bomb: bytes) -> RawHandler:
    return streams(_head(b"content-encoding: gzip", b"content-length: %d" % len(bomb)),
                   lambda: (bomb[i:i + PIECE] for i in range(0, len(bomb), PIECE)))


def chunked_reply(total: int) -> RawHandler:
    """`total` bytes of JSON-looking data, chunked, never finished properly."""
    piece = b"[" + b"1," * (PIECE // 2 - 1) + b"\n"
    framed = b"%x\r\n%s\r\n" % (len(piece), piece)
    return streams(_head(b"transfer-encoding: chunked"),
                   lambda: (framed for _ in range(total // len(piece))))


def holding(first: bytes, rest: bytes, release: asyncio.Event) -> RawHandler:
    """Sends `first`, waits for `release`, then `rest` (the body is `first + rest`)."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(b"content-length: %d" % (len(first) + len(rest))) + first)
        await writer.drain()
        await release.wait()
        writer.write(rest)
        await writer.drain()

    return handle


def json_list(size: int) -> bytes:
    return b"[" + b"0," * (size // 2) + b"0]"


def rss() -> dict[str, int]:
    """VmRSS and VmHWM (peak since the last reset) of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS


def runtime_of(gateway: Gateway) -> Runtime:
    assert gateway.runtime is not None
    return gateway.runtime


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    give_up = time.monotonic() + within
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        await asyncio.sleep(0.01)


async def exhausted_count(client: Any) -> float:
    text = await (await client.get("/metrics")).get_data(as_text=True)
    lines = [line for line in text.splitlines()
             if line.startswith("gateway_memory_budget_exhausted_total ")]
    assert len(lines) == 1, text
    return float(lines[0].split()[1])


def assert_budget_503(status: int, body: dict[str, Any], call_name: str) -> None:
    assert status == 503
    assert body["data"] is None
    assert body["error"] == BUDGET_ERROR
    assert body["meta"]["complete"] is False
    assert body["meta"]["calls"][call_name]["ok"] is False
    assert body["meta"]["calls"][call_name]["error"] == BUDGET_ERROR


# -- the budget -------------------------------------------------------------------------------


async def test_a_call_past_the_budget_fails_at_once_with_503_and_is_counted(
    raw_upstream: RawUpstreamFactory, upstream: UpstreamFactory,
    gateway_client: GatewayClientFactory,
) -> None:
    body = json_list(600_000)
    release = asyncio.Event()
    holder = await raw_upstream(holding(body[:500_000], body[500_000:], release))
    big = await upstream(reply(raw_body=body))
    small = await upstream(reply({"id": 1}))
    gateway = Gateway(make_config(
        {"hold": holder, "big": big, "small": small},
        endpoint("/hold", call("hold", "hold")),
        endpoint("/big", call("big", "big")),
        endpoint("/partial", call("big", "big", optional=True, default=[]),
                 call("small", "small")),
        max_buffered_bytes=MiB))
    client = await gateway_client(gateway)
    budget = runtime_of(gateway).budget
    held = asyncio.create_task(client.get("/hold"))
    await until(lambda: budget.held >= 500_000)  # the first call holds half the budget

    started = time.perf_counter()
    refused = await client.get("/big")
    assert_budget_503(refused.status_code, await refused.get_json(), "big")
    assert time.perf_counter() - started < 2.0  # at once, not after a timeout
    assert big.requests == 1  # not retried: a retry would only join the queue

    partial = await client.get("/partial")  # an optional call gets its default instead
    assert partial.status_code == 200
    reply_body = await partial.get_json()
    assert reply_body["data"] == {"big": [], "small": {"id": 1}}
    assert reply_body["meta"]["complete"] is False
    assert reply_body["meta"]["calls"]["big"]["error"] == BUDGET_ERROR

    release.set()
    done = await held
    assert done.status_code == 200
    assert len((await done.get_json())["data"]["hold"]) == 300_001
    assert budget.held == 0  # parsed: the bytes went back
    fine = await client.get("/big")
    assert fine.status_code == 200
    assert await exhausted_count(client) == 2.0


@FOREIGN_GARBAGE
@pytest.mark.parametrize("kind", ["oversize", "gzip-bomb", "not-json", "timeout"])
async def test_failed_bodies_are_freed_at_once_without_the_cyclic_gc(
    raw_upstream: RawUpstreamFactory, upstream: UpstreamFactory,
    gateway_client: GatewayClientFactory, bomb: bytes, kind: str,
) -> None:
    cap = 4 * MiB
    slow = {"timeout": 0.2} if kind == "timeout" else {}
    if kind == "oversize":
        server: Any = await raw_upstream(chunked_reply(50 * MiB))
    elif kind == "gzip-bomb":
        server = await raw_upstream(gzip_bomb_reply(bomb))
    elif kind == "not-json":
        server = await upstream(reply(raw_body=b"x" * (3 * MiB)))
    else:  # 3 MiB of a 4 MiB body, then silence until the call times out
        server = await raw_upstream(holding(b"1" * (3 * MiB), b"1" * MiB, asyncio.Event()))
    gateway = Gateway(make_config({"up": {"url": server, **slow}},
                                  endpoint("/x", call("up", "up")), max_upstream_bytes=cap))
    client = await gateway_client(gateway)
    expected = 504 if kind == "timeout" else 502
    for _ in range(2):  # warm up pools, allocator arenas, the parse thread
        assert (await client.get("/x")).status_code == expected
    rounds = 8 if kind == "timeout" else 16
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before_rss, before_traced = rss()["VmRSS"], tracemalloc.get_traced_memory()[0]
        for _ in range(rounds):
            response = await client.get("/x")
            assert response.status_code == expected
        after_rss, after_traced = rss()["VmRSS"], tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
    # Kept alive, each failed body would add up to `cap` bytes (twice that for not-JSON).
    assert after_traced - before_traced < cap
    assert after_rss - before_rss < 3 * cap
    assert runtime_of(gateway).budget.held == 0


async def test_a_gzip_bomb_never_blocks_the_event_loop(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory, bomb: bytes,
) -> None:
    server = await raw_upstream(gzip_bomb_reply(bomb))
    client = await gateway_client(make_config(
        {"bomb": server}, endpoint("/x", call("bomb", "bomb")), max_upstream_bytes=64 * MiB))
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        # CPU time of the loop's thread between two ticks: what the loop spent on other
        # work meanwhile, which a busy machine's scheduling does not inflate.
        nonlocal worst
        last = time.thread_time()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.thread_time()
            worst = max(worst, now - last)
            last = now

    async with asyncio.TaskGroup() as group:
        group.create_task(ticker())
        for _ in range(3):  # each inflates 64 MiB before it is refused
            response = await client.get("/x")
            assert response.status_code == 502
            assert "67108864 bytes" in (await response.get_json())["error"]
        stop.set()
    assert worst < 0.05  # one call inflating 64 MiB at once would take ~100 ms or more


async def test_concurrent_gzip_bombs_are_inflated_a_few_at_a_time(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory, bomb: bytes,
) -> None:
    bombs = await raw_upstream(gzip_bomb_reply(bomb))
    small = await raw_upstream(streams(_head(b"content-encoding: gzip", b"content-length: %d"
                                             % len(SMALL_GZIP)), lambda: iter([SMALL_GZIP])))
    client = await gateway_client(make_config(
        {"bomb": bombs, "small": small},
        endpoint("/bomb", call("bomb", "bomb")), endpoint("/small", call("small", "small")),
        max_buffered_bytes=24 * MiB))
    # Ten bombs inflating side by side would each hold a few MiB when the budget filled,
    # and all fail with 503; two at a time, each reaches the 10 MiB cap: a 502.
    calls = [asyncio.create_task(client.get("/bomb")) for _ in range(10)]
    await asyncio.sleep(0.05)
    fine = await client.get("/small")  # a small compressed reply does not queue behind them
    assert fine.status_code == 200
    assert (await fine.get_json())["data"] == {"small": {"id": 1}}
    assert not all(task.done() for task in calls)
    assert [(await task).status_code for task in calls] == [502] * 10


@FOREIGN_GARBAGE
async def test_a_burst_of_hostile_replies_stays_within_the_budget(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory, bomb: bytes,
) -> None:
    chunked = await raw_upstream(chunked_reply(50 * MiB))
    bombs = await raw_upstream(gzip_bomb_reply(bomb))
    gateway = Gateway(make_config(
        {"chunked": chunked, "bomb": bombs},
        endpoint("/chunked", call("chunked", "chunked")),
        endpoint("/bomb", call("bomb", "bomb")),
        max_buffered_bytes=16 * MiB))  # max_upstream_bytes stays 10 MiB: 20 at once want 200
    client = await gateway_client(gateway)
    for path in ("/chunked", "/bomb"):
        assert (await client.get(path)).status_code == 502  # warm up
    slots = asyncio.Semaphore(20)

    async def one(path: str) -> tuple[int, dict[str, Any]]:
        async with slots:
            response = await client.get(path)
            return response.status_code, await response.get_json()

    gc.collect()
    baseline = rss()["VmRSS"]
    reset_peak_rss()
    replies = await asyncio.gather(*(one(("/chunked", "/bomb")[i % 2]) for i in range(40)))
    peak = rss()["VmHWM"]
    statuses = [status for status, _ in replies]
    assert set(statuses) <= {502, 503}
    refused = [(status, body) for status, body in replies if status == 503]
    assert refused, statuses
    for status, body in refused:
        assert_budget_503(status, body, "chunked" if "chunked" in body["meta"]["calls"]
                          else "bomb")
    assert await exhausted_count(client) == len(refused)
    assert runtime_of(gateway).budget.held == 0
    assert peak - baseline < 100 * MiB  # without the budget: 20 x 10 MiB at once, and more


@FOREIGN_GARBAGE
async def test_freed_body_memory_goes_back_to_the_os_after_a_quiet_second(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory,
) -> None:
    chunked = await raw_upstream(chunked_reply(50 * MiB))
    gateway = Gateway(make_config({"chunked": chunked},
                                  endpoint("/chunked", call("chunked", "chunked")),
                                  max_buffered_bytes=64 * MiB))
    client = await gateway_client(gateway)
    slots = asyncio.Semaphore(20)

    async def one() -> int:
        async with slots:
            return (await client.get("/chunked")).status_code

    gc.collect()
    baseline = rss()["VmRSS"]
    statuses = await asyncio.gather(*(one() for _ in range(60)))
    assert set(statuses) <= {502, 503}
    gc.collect()
    await asyncio.sleep(TRIM_AFTER_QUIET + 0.5)
    after_quiet = rss()["VmRSS"]
    assert after_quiet - baseline < 16 * MiB


async def test_a_reload_changes_the_limit_of_the_one_budget(
    tmp_path: Path, upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
) -> None:
    big = await upstream(reply(raw_body=json_list(600_000)))
    path = tmp_path / "gateway.toml"

    def config(budget: int) -> Path:
        return to_toml(make_config({"big": big}, endpoint("/big", call("big", "big")),
                                   max_buffered_bytes=budget), path)

    gateway = Gateway(config(MiB))
    client = await gateway_client(gateway)
    budget = runtime_of(gateway).budget
    assert (await client.get("/big")).status_code == 200
    config(100_000)
    reloader = gateway.reloader
    assert isinstance(reloader, Reloader)
    assert await reloader.reload() is True
    assert runtime_of(gateway).budget is budget  # bytes held across the reload stay counted
    assert budget.limit == 100_000
    refused = await client.get("/big")
    assert_budget_503(refused.status_code, await refused.get_json(), "big")
