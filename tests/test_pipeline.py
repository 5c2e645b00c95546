"""The upstream pipeline: layers in their order, bound once, and an off feature left out."""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import pytest
from support import RawUpstreamFactory, UpstreamFactory, echo, make_config, reply

from gateway.config import parse_config
from gateway.context import RequestContext
from gateway.errors import CallInputError, UpstreamBadReply, UpstreamStatus, UpstreamTimeout
from gateway.layers.breaker import BreakerLayer
from gateway.layers.budget import BodyLayer
from gateway.layers.cache import CacheLayer, SingleFlightLayer
from gateway.layers.measure import MetricsLayer
from gateway.layers.retry import RetryLayer, TimeoutLayer, _CutOff
from gateway.layers.slot import SlotLayer, Slots
from gateway.lifecycle import within
from gateway.metrics import Metrics
from gateway.pipeline import Call, Next, Reply, chain
from gateway.upstream import Upstream


class _Tag:
    """A layer that notes its name on the way down and on the way up."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    async def __call__(self, call: Call, next: Next) -> Reply:
        self.seen.append(f"{self.name}>")
        reply = await next(call)
        self.seen.append(f"<{self.name}")
        return reply


async def test_a_chain_runs_its_layers_outermost_first_and_unwinds_in_reverse() -> None:
    seen: list[str] = []

    async def wire(call: Call) -> Reply:
        seen.append(f"wire {call.method} {call.target}")
        return Reply(200, {"ok": True})

    send = chain([_Tag("a", seen), _Tag("b", seen)], wire)
    assert (await send(Call("GET", "/x", []))).data == {"ok": True}
    assert seen == ["a>", "b>", "wire GET /x", "<b", "<a"]
    seen.clear()
    await send(Call("GET", "/y", []))  # the same links, reused
    assert seen == ["a>", "b>", "wire GET /y", "<b", "<a"]


def _layers(upstream: Upstream) -> list[type[Any]]:
    out: list[type[Any]] = []
    link: Any = upstream._send
    while link is not upstream.wire:
        out.append(type(link.layer))
        link = link.next
    return out


def _upstream(keys: dict[str, Any], metrics: bool) -> Upstream:
    config = parse_config(make_config({"u": {"url": "http://127.0.0.1:9", **keys}}), env={})
    return Upstream(config.upstreams["u"], config.gateway,
                    metrics=Metrics().upstream("u") if metrics else None)


def test_an_upstream_without_optional_features_has_only_the_layers_every_call_needs() -> None:
    assert _layers(_upstream({}, metrics=False)) == [TimeoutLayer, BodyLayer, SlotLayer]


def test_every_feature_on_puts_its_layer_in_the_documented_order() -> None:
    keys = {"cache_ttl": 5.0, "retries": 2, "breaker": {"failures": 3, "reset": 5.0}}
    assert _layers(_upstream(keys, metrics=True)) == [
        MetricsLayer, CacheLayer, SingleFlightLayer, BreakerLayer, RetryLayer, BodyLayer,
        SlotLayer]


async def test_within_puts_the_request_deadline_on_its_context() -> None:
    ctx = RequestContext("rid", "GET", "/x", {}, {}, {}, None, "parallel", time.perf_counter())
    async with within(ctx, 2.0):
        assert ctx.deadline is not None
        left = ctx.deadline - asyncio.get_running_loop().time()
        assert 1.5 < left <= 2.0


async def test_a_deadline_passed_to_a_call_stops_its_retries(upstream: UpstreamFactory) -> None:
    failing = await upstream(reply({"e": 1}, status=503, delay=0.05))
    config = parse_config(make_config({"u": {"url": failing, "retries": 5, "timeout": 5.0}}),
                          env={})
    up = Upstream(config.upstreams["u"], config.gateway)
    await up.start()
    try:
        deadline = asyncio.get_running_loop().time() + 0.12
        # The 503 once no retry fits before the deadline (or, on a busy machine, an attempt
        # cut off by its share of the time left).
        with pytest.raises((UpstreamStatus, UpstreamTimeout)):
            await up.call("GET", "/", [], deadline=deadline)
        assert 1 <= failing.requests <= 3  # 5 retries allowed within the 5 s timeout; each 50 ms
    finally:
        await up.close()


async def test_the_fast_path_and_httpx_path_send_the_same_request(
    upstream: UpstreamFactory
) -> None:
    """A URL httpx sends unchanged skips its models; any other goes through httpx's Request
    (which percent-encodes `é`): what the upstream receives is the same either way."""
    server = await upstream(echo)
    config = parse_config(make_config({"u": {"url": server, "headers": {"X-Key": "k"}}}),
                          env={})
    up = Upstream(config.upstreams["u"], config.gateway)
    await up.start()
    try:
        headers = up.outgoing_headers({"x-forwarded-for": "é"}, "rid-1")
        for method, body in (("GET", None), ("POST", b'{"a": 1}'), ("DELETE", None),
                             ("POST", None)):
            fast = (await up.call(method, "/p/a?q=1", headers, body)).data
            slow = (await up.call(method, "/p/aé?q=1", headers, body)).data
            assert (fast["path"], slow["path"]) == ("/p/a", "/p/a%C3%A9")
            assert {**fast, "path": None} == {**slow, "path": None}
            assert fast["headers"]["x-key"] == "k"
    finally:
        await up.close()


async def test_repeated_content_encodings_are_read_alike_on_the_fast_and_httpx_paths(
    raw_upstream: RawUpstreamFactory
) -> None:
    """aiohttp's `get` saw only the first `Content-Encoding`; httpx joins them all."""
    body = gzip.compress(b'{"ok": true}')
    outcomes = {}
    for first, second in (("gzip", "identity"), ("identity", "gzip")):
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: {first}\r\nContent-Encoding: {second}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          head: bytes = head) -> None:
            writer.write(head + body)
            await writer.drain()

        server = await raw_upstream(handler)
        config = parse_config(make_config({"u": {"url": server.url}}), env={})
        up = Upstream(config.upstreams["u"], config.gateway)
        await up.start()
        try:
            seen = []
            for path in ("/p", "/p\u00e9"):  # the fast path, then httpx's
                try:
                    seen.append(repr((await up.call("GET", path, [])).data))
                except UpstreamBadReply as exc:
                    seen.append(str(exc))
            assert seen[0] == seen[1], (first, second, seen)
            outcomes[first, second] = seen[0]
        finally:
            await up.close()
    assert all("cannot be decoded" in outcome for outcome in outcomes.values()), outcomes


async def test_an_unsendable_url_is_a_call_input_error_on_either_path(
    upstream: UpstreamFactory
) -> None:
    server = await upstream(echo)
    config = parse_config(make_config({"u": {"url": server}}), env={})
    up = Upstream(config.upstreams["u"], config.gateway)
    await up.start()
    try:
        with pytest.raises(CallInputError):
            await up.call("GET", "/" + "a" * 70_000, [])
        assert server.requests == 0
    finally:
        await up.close()


async def test_slots_queue_in_order_and_a_cancelled_waiter_passes_its_slot_on() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    assert slots.busy()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.acquire()
        order.append(name)

    first, second, third = (asyncio.create_task(wait(n)) for n in ("first", "second", "third"))
    await asyncio.sleep(0)
    slots.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` must get the slot
    slots.release()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first.cancelled()
    assert order == ["second", "third"]
    await asyncio.gather(second, third)
    slots.release()
    slots.release()
    assert not slots.busy()
    await slots.acquire()
    await slots.acquire()
    assert slots.busy()  # two slots, never more


async def test_an_attempt_cut_off_is_a_timeout_but_a_cancellation_from_outside_stays_one(
) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError), _CutOff(loop.time() + 0.01):
        await asyncio.sleep(5)

    with _CutOff(loop.time() + 5):  # finished in time: nothing raised, nothing left behind
        await asyncio.sleep(0)

    async def attempt() -> None:
        with _CutOff(loop.time() + 5):
            await asyncio.sleep(5)

    task = asyncio.create_task(attempt())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
