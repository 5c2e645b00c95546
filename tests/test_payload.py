"""The payload path for big replies (issue 14 item 3): parsed once, encoded once.

A reply whose depth check had to encode it (more brackets than the depth limit) is
embedded in the envelope as those bytes (`orjson.Fragment`) when the call returns it
unchanged; shaping, `combine` hooks, dependents and batch items still see parsed
values, and the bytes on the wire are what encoding the value would have written.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from support import (
    GatewayClientFactory,
    RawUpstreamFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
)

from gateway.body import CappedBody
from gateway.guard import (
    MAX_REPLY_DEPTH,
    _brackets_within,
    _TooDeep,
    frame_reply,
    loads_framed_reply,
    loads_reply_encoded,
)
from gateway.reader import THREAD_PARSE_BYTES, BodyReader, GcPause

# More objects than MAX_REPLY_DEPTH brackets: the depth check encodes it.
ITEMS = [{"id": i, "name": f"n{i}", "tags": ["a", "é\u2028"], "score": i / 3} for i in range(300)]
BIG = {"items": ITEMS, "total": len(ITEMS)}


def count_items(results: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A `combine` hook (imported as test_payload:count_items): needs parsed data."""
    return {"count": len(results["big"]["items"]), "first": results["big"]["items"][0]}


def test_the_depth_check_encodes_what_the_envelope_would_write() -> None:
    value, encoded = loads_reply_encoded(orjson.dumps(BIG, option=orjson.OPT_INDENT_2))
    assert value == BIG
    assert encoded == orjson.dumps(BIG)  # compact, as envelope.dumps writes it
    small, none = loads_reply_encoded(b'{"a": [1, 2]}')
    assert (small, none) == ({"a": [1, 2]}, None)  # few brackets: nothing encoded
    assert MAX_REPLY_DEPTH < 300


async def test_a_big_reply_returned_unchanged_is_embedded_and_shaping_still_applies(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(reply(BIG))
    client = await gateway_client(make_config(
        {"u": server},
        endpoint("/raw", call("big", "u", "/big")),
        endpoint("/picked", call("big", "u", "/big", select=["total"])),
        endpoint("/hooked", call("big", "u", "/big"), combine="test_payload:count_items"),
        endpoint("/chained", call("big", "u", "/big"),
                 call("next", "u", "/next/{big.total}"))))
    raw = await client.get("/raw")
    body = await raw.get_data(as_text=False)
    assert raw.status_code == 200
    assert body.startswith(b'{"data":{"big":' + orjson.dumps(BIG) + b'},"meta":')
    assert orjson.loads(body)["meta"]["calls"]["big"]["ok"] is True
    picked = orjson.loads(await (await client.get("/picked")).get_data())
    assert picked["data"] == {"big": {"total": 300}}
    hooked = orjson.loads(await (await client.get("/hooked")).get_data())
    assert hooked["data"] == {"count": 300, "first": ITEMS[0]}
    chained = orjson.loads(await (await client.get("/chained")).get_data())
    assert chained["data"]["big"] == BIG
    assert server.last.path == "/next/300"  # the dependent read the parsed reply


async def test_batch_items_of_a_big_batch_reply_are_each_their_own_item(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(reply(ITEMS))  # the batch endpoint answers the whole list
    batch = {"path": "/people", "param": "ids", "key": "id", "window_ms": 20}
    client = await gateway_client(make_config(
        {"people": {"url": server, "batch": batch}},
        endpoint("/pair", {"name": "a", "upstream": "people", "batch_key": "7"},
                 {"name": "b", "upstream": "people", "batch_key": "8"})))
    body = orjson.loads(await (await client.get("/pair")).get_data())
    assert body["data"] == {"a": ITEMS[7], "b": ITEMS[8]}


def test_gc_pause_nests_and_leaves_a_collector_someone_else_turned_off() -> None:
    pause = GcPause()
    assert gc.isenabled()
    with pause:
        assert not gc.isenabled()
        with pause:
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer parse is not over
    assert gc.isenabled()
    gc.disable()
    try:
        with pause:
            pass
        assert not gc.isenabled()  # not ours to turn on
    finally:
        gc.enable()


def test_gc_pause_resumes_the_collector_when_the_parse_fails() -> None:
    pause = GcPause()
    try:
        with pause:
            orjson.loads(b"{not json")
    except orjson.JSONDecodeError:
        pass
    assert gc.isenabled()


async def test_replies_parsed_in_threads_leave_the_collector_on() -> None:
    """The collector is process-wide: parses overlapping off the loop must not hold it off."""
    reader = BodyReader("u", 50_000_000, 5.0)
    raw = orjson.dumps([{"k": i, "v": [i, i]} for i in range(20_000)])
    assert len(raw) > THREAD_PARSE_BYTES  # parsed in a worker thread
    off = samples = 0
    done = False

    async def parser() -> None:
        for _ in range(3):
            body = CappedBody("", 50_000_000)
            body.feed(raw)
            body.finish()
            value, _ = await reader.parse_held(body, 200)
            assert len(value) == 20_000
            assert len((await reader.parse(raw, 200))[0]) == 20_000

    async def sampler() -> None:
        nonlocal off, samples
        while not done:
            samples += 1
            off += not gc.isenabled()
            await asyncio.sleep(0)

    watch = asyncio.create_task(sampler())
    try:
        await asyncio.gather(*(parser() for _ in range(4)))
    finally:
        done = True
        await watch
    assert samples > 0
    assert off == 0
    assert gc.isenabled()


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_the_bracket_count_sees_brackets_past_its_first_windows() -> None:
    """The count stops once over the limit; brackets late in a long document still count."""
    for pad in (0, 4095, 4096, 20_000, 300_000):
        for brackets in (MAX_REPLY_DEPTH, MAX_REPLY_DEPTH + 1):
            raw = b'["' + b"x" * pad + b'",' + b"[" * (brackets - 1) + b"]" * (brackets - 1) + b"]"
            full = raw.count(b"[") + raw.count(b"{") <= MAX_REPLY_DEPTH
            assert _brackets_within(raw, MAX_REPLY_DEPTH) is full, (pad, brackets)
    assert _brackets_within(b"", 0)
    assert not _brackets_within(b"{" * 5000, 3)  # many brackets: settled in the first window


async def test_a_deep_reply_behind_a_long_string_is_still_refused(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    pad = "x" * 50_000  # the nesting starts past the count's first windows
    deep = await upstream(reply({"pad": pad, "v": nested(MAX_REPLY_DEPTH + 1)}))
    fine = await upstream(reply({"pad": pad, "v": nested(MAX_REPLY_DEPTH - 1)}))
    client = await gateway_client(make_config(
        {"deep": deep, "fine": fine},
        endpoint("/deep", call("r", "deep", "/")), endpoint("/fine", call("r", "fine", "/"))))
    refused = await client.get("/deep")
    assert refused.status_code == 502
    assert f"nested deeper than {MAX_REPLY_DEPTH} levels" in (await refused.get_json())["error"]
    served = await client.get("/fine")
    assert served.status_code == 200
    expected = orjson.dumps({"pad": pad, "v": nested(MAX_REPLY_DEPTH - 1)})
    assert (await served.get_data(as_text=False)).startswith(b'{"data":{"r":' + expected + b"},")


async def test_a_reply_in_pieces_of_every_size_arrives_whole(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """Chunked and plain bodies over many socket reads: the chunks are joined as sent."""
    raw = orjson.dumps(BIG | {"blob": "y" * 700_000})  # several socket reads, > 64 KiB each
    sizes = [1, 2, 70_000, 5, 300_000, 65_536, 65_537]
    pieces, at = [], 0
    for size in sizes * 10:
        if at >= len(raw):
            break
        pieces.append(raw[at:at + size])
        at += size
    pieces.append(raw[at:])

    async def chunked(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def plain(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % len(raw))
        for piece in pieces:
            writer.write(piece)
            await writer.drain()

    client = await gateway_client(make_config(
        {"c": await raw_upstream(chunked), "p": await raw_upstream(plain)},
        endpoint("/c", call("r", "c", "/")), endpoint("/p", call("r", "p", "/"))))
    for path in ("/c", "/p"):
        response = await client.get(path)
        assert response.status_code == 200, path
        body = await response.get_data(as_text=False)
        assert body.startswith(b'{"data":{"r":' + raw + b"},"), path


def _old_parse(raw: bytes) -> Any:
    """What the reader did before replies were read framed: the behaviour to keep."""
    if not raw or raw.isspace():
        return None, None
    return loads_reply_encoded(raw)


def _outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw)[0]
    except _TooDeep:
        return "deep", None
    except orjson.JSONDecodeError:
        return "not json", None


_PIECES = [b"[", b"]", b"{", b"}", b",", b":", b'"a"', b'"', b"1", b"-2.50", b"1e2", b"null",
           b"true", b" ", b"\n", b"\x0b", b"\\", b"x", b"\xc3\xa9", b"\xff"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=30).map(b"".join),
    st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                 | st.floats(allow_nan=False, allow_infinity=False)
                 | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                 max_leaves=20).map(lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2)),
    st.integers(0, 140).map(lambda n: b" " + b"[" * n + b"{}" + b"]" * n),
    st.integers(0, 140).map(lambda n: b"[" * n + b"1],[2" + b"]" * n),
))
def test_a_framed_reply_is_accepted_and_refused_exactly_as_before(raw: bytes) -> None:
    old = _outcome(_old_parse, raw)
    assert _outcome(lambda r: loads_framed_reply(frame_reply(r), False), raw) == old
    status, value = _outcome(lambda r: loads_framed_reply(frame_reply(r), True), raw)
    assert (status, value) == old
    if status == "ok" and isinstance(value, (dict, list)):
        assert loads_framed_reply(frame_reply(raw), True)[1] == orjson.dumps(
            value, option=orjson.OPT_NON_STR_KEYS)


# Formatting orjson writes differently: indentation, escapes, number forms, a repeated key.
def untidy(items: int) -> bytes:
    return (b'{ "a" : "\\u00e9\\/x", "n": 1.50, "e": 1E2, "k": 1, "k": [ 2 ,3 ],\n'
            b' "items": [' + b",".join(b'{"i": %d, "s": "\\u2028"}' % i for i in range(items))
            + b"] }")


async def test_replies_on_both_parse_paths_keep_the_envelope_and_the_refusals(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """Under and over THREAD_PARSE_BYTES, fetched and from the cache: the envelope holds
    orjson's own encoding of the reply, and non-JSON or too-deep replies are 502s."""
    small, big = untidy(10), untidy(20_000)
    assert len(small) < THREAD_PARSE_BYTES < len(big)
    deep = b'{"pad": "' + b"x" * THREAD_PARSE_BYTES + b'", "v": ' + orjson.dumps(
        nested(MAX_REPLY_DEPTH + 1)) + b"}"
    bodies = {"small": small, "big": big, "deep": deep,
              "deepsmall": orjson.dumps({"v": nested(MAX_REPLY_DEPTH + 1)}),
              "text": b"<html>" + b"x" * THREAD_PARSE_BYTES, "chain": b"1],[2",
              "blank": b" \n\x0b "}
    servers = {name: await upstream(reply(raw_body=raw)) for name, raw in bodies.items()}
    upstreams: dict[str, Any] = {name: server for name, server in servers.items()}
    upstreams |= {f"{name}-cached": {"url": server, "cache_ttl": 60}
                  for name, server in servers.items()}
    client = await gateway_client(make_config(
        upstreams, *(endpoint(f"/{name}", call("r", name)) for name in upstreams)))
    for name in upstreams:
        for attempt in range(2):  # the second of a cached upstream is a cache hit
            response = await client.get(f"/{name}")
            body = await response.get_data(as_text=False)
            raw = bodies[name.removesuffix("-cached")]
            if name.startswith(("small", "big", "blank")):
                assert response.status_code == 200, (name, attempt)
                value = None if raw.isspace() else orjson.loads(raw)
                assert body.startswith(b'{"data":{"r":' + orjson.dumps(value) + b"},"), name
                cached = orjson.loads(body)["meta"]["calls"]["r"]["cached"]
                assert cached is (attempt == 1 and name.endswith("-cached")), name
                continue
            assert response.status_code == 502, (name, attempt)
            error = orjson.loads(body)["error"]
            if name.startswith("deep"):
                assert error.endswith(f"JSON nested deeper than {MAX_REPLY_DEPTH} levels"), name
            else:
                assert error.endswith("a body that is not JSON"), (name, error)


def test_only_bodies_over_the_threshold_are_joined_framed_and_take_unframes_them() -> None:
    frame = (b"[[", b"]]")
    for size, framed in ((10, False), (1000, True)):
        raw = b"1" * size
        body = CappedBody("", 10_000, None, frame, 100)
        for at in range(0, size, 7):
            body.feed(raw[at:at + 7])
        assert body.finish() == (b"[[" + raw + b"]]" if framed else raw)
        assert body.framed is framed
        assert body.size == size  # the cap and the budget count the body, not its frame
        assert body.take() == raw
        assert (body.value, body.framed) == (b"", False)
