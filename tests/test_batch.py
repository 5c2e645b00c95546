"""Cross-request batching: keyed calls from every request in flight become few upstream calls."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import unquote

import orjson
from burst import burst  # benchmarks/: the same client as benchmarks/batching.py
from support import (
    GatewayClientFactory,
    HypercornFactory,
    RecordingServer,
    UpstreamFactory,
    endpoint,
    make_config,
)
from webserver import Request, Response, json_response

from gateway.batch import Batcher
from gateway.config import Batch
from gateway.upstream import Reply


class People:
    """A batch endpoint: GET /people?ids=a,b,c answers the known ones (unknown ids left out)."""

    def __init__(self, missing: set[str] | None = None, status: int = 200,
                 delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.missing = missing or set()
        self.status = status
        self.delay = delay

    async def __call__(self, request: Request) -> Response:
        raw = dict(part.split("=", 1) for part in request.raw_query.split("&"))["ids"]
        ids = [unquote(k) for k in raw.split(",")]
        self.batches.append(ids)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return json_response({"error": "down"}, self.status)
        items = [{"id": int(k) if k.isdigit() else k, "name": f"person {k}"}
                 for k in ids if k not in self.missing]
        return json_response(items)


def config(server: RecordingServer, *endpoints: dict[str, Any], max_size: int = 50,
           window_ms: float = 50, **upstream: Any) -> dict[str, Any]:
    batch = {"path": "/people", "param": "ids", "key": "id", "max_size": max_size,
             "window_ms": window_ms}
    return make_config({"people": {"url": server, "batch": batch, **upstream}}, *endpoints)


def keyed(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "upstream": "people", "batch_key": key, **extra}


async def test_twenty_concurrent_requests_share_a_few_batch_calls(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    people = People()
    server = await upstream(people)
    client = await gateway_client(config(server, endpoint("/p/<pid>", keyed("author", "{pid}"))))
    keys = [str(i % 10) for i in range(20)]  # every key asked for twice
    responses = await asyncio.gather(*(client.get(f"/p/{k}") for k in keys))
    assert [r.status_code for r in responses] == [200] * 20
    assert 1 <= server.requests <= 3
    for ids in people.batches:
        assert len(ids) == len(set(ids))  # deduplicated
    assert sorted({k for ids in people.batches for k in ids}) == sorted(set(keys))
    sizes = {len(ids) for ids in people.batches}
    for key, response in zip(keys, responses, strict=True):
        body = await response.get_json()
        assert body["data"]["author"] == {"id": int(key), "name": f"person {key}"}
        assert body["meta"]["calls"]["author"]["batch"] in sizes


async def test_keys_of_one_request_join_the_same_batch(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    people = People()
    server = await upstream(people)
    client = await gateway_client(config(server, endpoint(
        "/pair/<a>/<b>", keyed("first", "{a}"), keyed("second", "{b}"))))
    body = await (await client.get("/pair/1/2")).get_json()
    assert body["data"]["first"]["id"] == 1
    assert body["data"]["second"]["id"] == 2
    assert people.batches == [["1", "2"]]
    assert body["meta"]["calls"]["first"]["batch"] == 2


async def test_keys_are_percent_encoded_one_by_one(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    people = People()
    server = await upstream(people)
    client = await gateway_client(config(server, endpoint("/q", keyed("who", "{query.k}"))))
    response = await client.get("/q", query_string={"k": "a,b/c&d"})
    assert response.status_code == 200
    assert server.last.raw_query == "ids=a%2Cb%2Fc%26d"
    assert (await response.get_json())["data"]["who"]["id"] == "a,b/c&d"


async def test_a_missing_key_is_a_404_call(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(People(missing={"404"}))
    client = await gateway_client(config(server, endpoint(
        "/p/<pid>", keyed("author", "{pid}")), endpoint(
        "/opt/<pid>", keyed("author", "{pid}", optional=True, default={"id": None}))))
    missing, found = await asyncio.gather(client.get("/p/404"), client.get("/p/5"))
    assert (missing.status_code, found.status_code) == (404, 200)
    body = await missing.get_json()
    assert body["data"] is None
    assert body["meta"]["calls"]["author"]["status"] == 404
    assert "404" in body["error"]
    optional = await (await client.get("/opt/404")).get_json()
    assert optional["data"] == {"author": {"id": None}}
    assert optional["meta"]["complete"] is False


async def test_a_failed_batch_call_fails_every_call_in_it(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    people = People(status=500)
    server = await upstream(people)
    client = await gateway_client(config(server, endpoint("/p/<pid>", keyed("author", "{pid}"))))
    responses = await asyncio.gather(*(client.get(f"/p/{i}") for i in range(20)))
    assert [r.status_code for r in responses] == [502] * 20
    assert server.requests <= 3
    body = await responses[0].get_json()
    assert body["meta"]["calls"]["author"]["status"] == 500


async def test_max_size_sends_a_full_batch_without_waiting_for_the_window(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    people = People()
    server = await upstream(people)
    client = await gateway_client(config(
        server, endpoint("/p/<pid>", keyed("author", "{pid}")), max_size=3, window_ms=5000))
    started = time.monotonic()
    responses = await asyncio.gather(*(client.get(f"/p/{i}") for i in range(6)))
    assert time.monotonic() - started < 2.0
    assert [r.status_code for r in responses] == [200] * 6
    assert sorted(len(ids) for ids in people.batches) == [3, 3]


async def test_retries_and_breaker_apply_to_the_batch_call(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    people = People(status=503)
    server = await upstream(people)
    client = await gateway_client(config(
        server, endpoint("/p/<pid>", keyed("author", "{pid}")), retries=1,
        breaker={"failures": 1, "reset": 30}))
    body = await (await client.get("/p/1")).get_json()
    assert body["meta"]["calls"]["author"]["attempts"] == 2
    assert server.requests == 2
    assert (await client.get("/p/1")).status_code == 503
    assert server.requests == 2


async def test_calls_forwarding_different_headers_are_never_batched_together() -> None:
    sent: list[tuple[str, list[tuple[str, str]]]] = []

    async def send(url: str, headers: list[tuple[str, str]]) -> Reply:
        sent.append((url, headers))
        return Reply(200, [{"id": "1"}, {"id": "2"}])

    batcher = Batcher("people", Batch("/p", "ids", "id", window_ms=10), send)
    alice = [("authorization", "alice"), ("x-request-id", "r1")]
    bob = [("authorization", "bob"), ("x-request-id", "r2")]
    also_alice = [("authorization", "alice"), ("x-request-id", "r3")]
    replies = await asyncio.gather(batcher.load("1", alice), batcher.load("2", bob),
                                   batcher.load("2", also_alice))
    assert [r.data["id"] for r in replies] == ["1", "2", "2"]
    assert sorted(url for url, _ in sent) == ["/p?ids=1,2", "/p?ids=2"]
    assert ("authorization", "bob") in dict(sent)["/p?ids=2"]
    await batcher.close()


async def test_duplicate_keys_get_their_own_copy() -> None:
    async def send(url: str, headers: list[tuple[str, str]]) -> Reply:
        return Reply(200, [{"id": 1, "tags": []}])

    batcher = Batcher("people", Batch("/p", "ids", "id", window_ms=0), send)
    a, b = await asyncio.gather(batcher.load("1", []), batcher.load("1", []))
    assert a.data == b.data
    assert a.data is not b.data
    assert a.batch == b.batch == 1
    await batcher.close()


async def test_a_keyed_call_cut_off_while_its_batch_is_in_flight_counts_the_attempt(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    people = await upstream(People(delay=3.0))

    async def fail_soon(request: Request) -> Response:
        await asyncio.sleep(0.5)  # time for the batch call to be sent
        return json_response({"error": "down"}, 500)

    failing = await upstream(fail_soon)
    cfg = config(people, endpoint("/p/<pid>", keyed("author", "{pid}"),
                                  {"name": "other", "upstream": "failing", "path": "/x"}),
                 window_ms=1)
    cfg["upstreams"]["failing"] = {"url": failing.url}
    client = await gateway_client(cfg)
    response = await client.get("/p/1")
    assert response.status_code == 502
    author = (await response.get_json())["meta"]["calls"]["author"]
    assert (author["attempts"], author["ok"]) == (1, False)
    assert author["error"] == "canceled: required call 'other' failed"
    assert people.requests == 1


async def test_a_failing_batch_call_is_named_in_the_open_breakers_message(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(People(status=500))
    client = await gateway_client(config(
        server, endpoint("/p/<pid>", keyed("author", "{pid}")),
        breaker={"failures": 1, "reset": 30}))
    assert (await client.get("/p/1")).status_code == 502
    response = await client.get("/p/2")
    assert response.status_code == 503
    assert (await response.get_json())["error"] == (
        "circuit breaker of upstream 'people' is open (opened by failures of a batch call)")


async def test_a_burst_over_warm_connections_is_coalesced_into_a_few_batch_calls(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    # Issue 14 item 4: 20 requests at once over 20 warm connections to a real Hypercorn,
    # 2 keys each, window_ms = 5. Keys that reach the batcher while the worker is still
    # busy with the burst join the open batch, so a few calls carry all 40 keys (a fixed
    # 5 ms window made ~10). Coarse: it counts calls, it times nothing.
    people = People()
    server = await upstream(people)
    gateway = await hypercorn_server(config(server, endpoint(
        "/pair/<a>/<b>", keyed("first", "{a}"), keyed("second", "{b}")), window_ms=5))
    paths = [f"/pair/{2 * i}/{2 * i + 1}" for i in range(20)]
    # The gateway is stopped while they are written: they arrive together however
    # this process is scheduled on a busy machine.
    answers = await burst("127.0.0.1", gateway.port, paths, warm="/healthz",
                          hold=gateway.process.pid)
    assert [status for status, _ in answers] == [200] * 20
    for i, (_, body) in enumerate(answers):
        data = orjson.loads(body)["data"]
        assert (data["first"]["id"], data["second"]["id"]) == (2 * i, 2 * i + 1)
    assert sorted(int(k) for ids in people.batches for k in ids) == list(range(40))
    assert len(people.batches) <= 3, [len(ids) for ids in people.batches]


async def test_a_burst_read_over_several_loop_passes_goes_out_in_a_few_batch_calls(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    # Issue 14 item 4, the rule itself: 20 requests written at once over 20 warm
    # connections, 2 keys each, to a real Hypercorn pinned to another core than this
    # client (as in benchmarks/batching.py), so it starts on the first requests while
    # the others are still being written: it reads them over a few loop passes, and
    # their keys reach the batcher over ~10 ms, past the 1 ms window but with the loop
    # never idle. They join the open batch (1 call; 2 when this client was descheduled
    # mid-burst); the fixed window (max_wait_ms = window_ms) made 5 to 9 calls of each
    # burst, here under load (1 only when the worker found the whole burst at once;
    # hence 4 bursts). Coarse: it counts calls, it times nothing.
    people = People()
    server = await upstream(people)
    cfg = config(server, endpoint("/pair/<a>/<b>", keyed("first", "{a}"), keyed("second", "{b}")),
                 window_ms=1)
    cfg["upstreams"]["people"]["batch"]["max_wait_ms"] = 2000
    gateway = await hypercorn_server(cfg)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(gateway.process.pid, {cpus[0]})
    os.sched_setaffinity(0, {cpus[-1]})
    calls = []
    try:
        for round_ in range(4):
            paths = [f"/pair/{100 * round_ + 2 * i}/{100 * round_ + 2 * i + 1}"
                     for i in range(20)]
            before = len(people.batches)
            answers = await burst("127.0.0.1", gateway.port, paths, warm="/healthz")
            assert [status for status, _ in answers] == [200] * 20
            calls.append(len(people.batches) - before)
    finally:
        os.sched_setaffinity(0, cpus)
    assert sorted(int(k) for ids in people.batches for k in ids) == [
        100 * r + k for r in range(4) for k in range(40)]
    assert max(calls) <= 3, calls


async def _busy_loop(stop: asyncio.Event) -> None:
    """Keep the event loop busy until `stop` is set: 2 ms of work per loop pass."""
    while not stop.is_set():
        step = time.perf_counter() + 0.002
        while time.perf_counter() < step:
            pass
        await asyncio.sleep(0)


async def test_a_key_arriving_past_the_window_while_the_loop_is_busy_joins_the_batch() -> None:
    sent: list[str] = []

    async def send(url: str, headers: list[tuple[str, str]]) -> Reply:
        sent.append(url)
        return Reply(200, [{"id": "1"}, {"id": "2"}])

    batcher = Batcher("people", Batch("/p", "ids", "id", window_ms=5, max_wait_ms=5000), send)
    stop = asyncio.Event()
    busy = asyncio.create_task(_busy_loop(stop))  # the burst still being handled
    first = asyncio.create_task(batcher.load("1", []))
    await asyncio.sleep(0.015)  # past the 5 ms window, the loop never idle
    second = asyncio.create_task(batcher.load("2", []))
    await asyncio.sleep(0)  # its key joins; then the loop may go idle
    stop.set()
    await busy
    assert (await first).data["id"] == "1"
    assert (await second).data["id"] == "2"
    assert sent == ["/p?ids=1,2"]
    await batcher.close()


async def test_an_idle_loop_sends_the_batch_when_the_window_ends_not_at_max_wait() -> None:
    sent: list[str] = []

    async def send(url: str, headers: list[tuple[str, str]]) -> Reply:
        sent.append(url)
        return Reply(200, [{"id": "1"}, {"id": "2"}])

    batcher = Batcher("people", Batch("/p", "ids", "id", window_ms=5, max_wait_ms=5000), send)
    first = asyncio.create_task(batcher.load("1", []))
    await asyncio.sleep(0.3)  # nothing else runs: the batch goes after its window
    assert sent == ["/p?ids=1"]
    assert (await batcher.load("2", [])).data["id"] == "2"
    assert sent == ["/p?ids=1", "/p?ids=2"]
    await first
    await batcher.close()


async def test_a_key_a_few_tiny_loop_hops_away_joins_the_batch() -> None:
    # A request just read from its socket first goes through tiny hops (task wake-ups),
    # passes as short as idle ones: one short pass is not yet an idle loop.
    sent: list[str] = []

    async def send(url: str, headers: list[tuple[str, str]]) -> Reply:
        sent.append(url)
        return Reply(200, [{"id": "1"}, {"id": "2"}])

    async def after_three_hops() -> Reply:
        for _ in range(3):
            await asyncio.sleep(0)
        return await batcher.load("2", [])

    batcher = Batcher("people", Batch("/p", "ids", "id", window_ms=0, max_wait_ms=5000), send)
    first, second = await asyncio.gather(batcher.load("1", []), after_three_hops())
    assert (first.data["id"], second.data["id"]) == ("1", "2")
    assert sent == ["/p?ids=1,2"]
    await batcher.close()
