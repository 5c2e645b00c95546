"""Config endpoints end to end: the app in-process, real upstream servers on loopback.

The envelope and its headers, every status the gateway answers, and how the engine runs a
plan (chaining, cancellation, strategies, templates, shaping). Timings are coarse bounds.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart.wrappers import Response as QuartResponse
from support import (
    GatewayClientFactory,
    RawServer,
    RawUpstreamFactory,
    UpstreamFactory,
    call,
    contention,
    echo,
    endpoint,
    free_port,
    make_config,
    reply,
)
from webserver import Response

TIMING_ENTRY = re.compile(r"^([A-Za-z0-9_-]+);dur=(\d+(?:\.\d+)?)$")


async def body_of(response: QuartResponse) -> dict[str, Any]:
    data = await response.get_json()
    assert isinstance(data, dict)
    return data


def assert_error_envelope(body: dict[str, Any]) -> None:
    assert body["data"] is None
    assert isinstance(body["error"], str)
    assert body["error"]
    assert "\n" not in body["error"]
    assert body["meta"]["complete"] is False
    assert {"processing_time_ms", "strategy", "complete", "calls"} <= set(body["meta"])


async def _until(condition: Callable[[], bool], within: float = 1.0) -> None:
    """Wait for something the upstream notices a little later (a dropped connection)."""
    give_up = time.monotonic() + within
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        await asyncio.sleep(0.01)


# -- envelope and headers ---------------------------------------------------------------------


async def test_envelope_has_data_meta_and_per_call_timings(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"id": 7, "name": "Ada"}))
    orders = await upstream(reply([{"id": 1, "total": 3.5}]))
    client = await gateway_client(make_config(
        {"users": users, "orders": orders},
        endpoint("/dash/<int:uid>", call("user", "users", "/users/{uid}"),
                 call("orders", "orders", "/orders", query={"user": "{uid}"})),
    ))
    response = await client.get("/dash/7")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    body = await body_of(response)
    assert body["data"] == {"user": {"id": 7, "name": "Ada"},
                            "orders": [{"id": 1, "total": 3.5}]}
    assert "error" not in body
    meta = body["meta"]
    assert meta["strategy"] == "parallel"
    assert meta["complete"] is True
    assert meta["processing_time_ms"] > 0
    assert set(meta["calls"]) == {"user", "orders"}
    for record in meta["calls"].values():
        assert record["status"] == 200
        assert record["ok"] is True
        assert record["attempts"] == 1
        assert record["cached"] is False
        assert 0 < record["elapsed_ms"] <= meta["processing_time_ms"]
    assert users.last.path == "/users/7"
    assert orders.last.raw_query == "user=7"


async def test_server_timing_has_one_entry_per_call_and_total(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a, b = await upstream(reply(delay=0.02)), await upstream(reply())
    client = await gateway_client(make_config(
        {"a": a, "b": b}, endpoint("/x", call("first", "a"), call("second", "b"))))
    response = await client.get("/x")
    assert response.status_code == 200
    entries = [TIMING_ENTRY.match(p.strip())
               for p in response.headers["Server-Timing"].split(",")]
    assert all(entries), response.headers["Server-Timing"]
    names = [m.group(1) for m in entries if m]
    assert names == ["first", "second", "total"]
    durations = {m.group(1): float(m.group(2)) for m in entries if m}
    assert durations["first"] >= 15
    assert durations["total"] >= durations["first"]
    processing = float(response.headers["X-Processing-Time-Ms"])
    assert processing == pytest.approx(durations["total"], abs=0.2)
    meta = (await body_of(response))["meta"]
    assert meta["processing_time_ms"] == pytest.approx(processing, abs=0.2)


async def test_request_id_is_echoed_and_forwarded_to_every_upstream(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a, b = await upstream(), await upstream()
    client = await gateway_client(make_config(
        {"a": a, "b": b}, endpoint("/x", call("a", "a"), call("b", "b"))))
    response = await client.get("/x", headers={"X-Request-ID": "req-123.abc"})
    assert response.headers["X-Request-ID"] == "req-123.abc"
    assert a.last.headers["x-request-id"] == "req-123.abc"
    assert b.last.headers["x-request-id"] == "req-123.abc"


async def test_request_id_is_generated_when_absent_and_same_at_every_upstream(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a, b = await upstream(), await upstream()
    client = await gateway_client(make_config(
        {"a": a, "b": b}, endpoint("/x", call("a", "a"), call("b", "b"))))
    first = await client.get("/x")
    second = await client.get("/x")
    rid = first.headers["X-Request-ID"]
    assert rid
    assert rid != second.headers["X-Request-ID"]
    assert a.seen[0].headers["x-request-id"] == rid
    assert b.seen[0].headers["x-request-id"] == rid


async def test_request_id_that_is_not_a_token_is_replaced(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream()
    client = await gateway_client(make_config({"a": a}, endpoint("/x", call("a", "a"))))
    response = await client.get("/x", headers={"X-Request-ID": "bad id <script>"})
    rid = response.headers["X-Request-ID"]
    assert rid != "bad id <script>"
    assert a.last.headers["x-request-id"] == rid


# -- status codes -----------------------------------------------------------------------------


async def test_optional_call_failure_marks_incomplete_with_default(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    good = await upstream(reply({"id": 1}))
    bad = await upstream(reply({"error": "boom"}, status=500))
    client = await gateway_client(make_config(
        {"good": good, "bad": bad},
        endpoint("/x", call("user", "good"),
                 call("recs", "bad", optional=True, default={"items": []})),
    ))
    response = await client.get("/x")
    assert response.status_code == 200
    body = await body_of(response)
    assert body["data"] == {"user": {"id": 1}, "recs": {"items": []}}
    assert body["meta"]["complete"] is False
    recs = body["meta"]["calls"]["recs"]
    assert recs["ok"] is False
    assert recs["status"] == 500
    assert "500" in recs["error"]
    assert "error" not in body


async def test_required_upstream_404_passes_through_with_envelope(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"error": "no such user"}, status=404))
    client = await gateway_client(make_config(
        {"users": users}, endpoint("/u/<int:uid>", call("user", "users", "/users/{uid}"))))
    response = await client.get("/u/0")
    assert response.status_code == 404
    body = await body_of(response)
    assert_error_envelope(body)
    assert body["meta"]["calls"]["user"]["status"] == 404
    assert "users" in body["error"]


async def _single_call_status(gateway_client: GatewayClientFactory, url: str,
                              **gateway: Any) -> tuple[int, dict[str, Any]]:
    client = await gateway_client(make_config(
        {"up": url}, endpoint("/x", call("thing", "up", "/thing")), **gateway))
    response = await client.get("/x")
    return response.status_code, await body_of(response)


async def test_upstream_5xx_is_502(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(reply({"error": "down"}, status=503))
    status, body = await _single_call_status(gateway_client, server.url)
    assert status == 502
    assert_error_envelope(body)
    assert body["meta"]["calls"]["thing"]["status"] == 503


async def test_connection_refused_is_502(gateway_client: GatewayClientFactory) -> None:
    status, body = await _single_call_status(gateway_client, f"http://127.0.0.1:{free_port()}")
    assert status == 502
    assert_error_envelope(body)
    assert body["meta"]["calls"]["thing"]["ok"] is False


async def test_non_json_200_is_502(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(reply(raw_body=b"<html>hello</html>"))
    status, body = await _single_call_status(gateway_client, server.url)
    assert status == 502
    assert_error_envelope(body)
    assert "not JSON" in body["error"]


async def test_body_over_cap_with_content_length_is_502(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(reply(["x" * 100] * 50))  # ~5 KB
    status, body = await _single_call_status(gateway_client, server.url,
                                             max_upstream_bytes=1000)
    assert status == 502
    assert "1000 bytes" in body["error"]


def _endless(framing: str) -> Any:
    """A raw upstream that sends 1 KB every 10 ms for 10 s (~1 MB), framed as `framing`."""
    head = {
        "chunked": b"transfer-encoding: chunked\r\n",
        "close": b"connection: close\r\n",
        "huge-length": b"content-length: 100000000\r\n",
    }[framing]

    def handler_for(server_box: list[RawServer]) -> Any:
        async def handle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server = server_box[0]
            await server.send(writer, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                              + head + b"\r\n")
            piece = b"[" + b"1," * 511 + b"\n"
            for _ in range(1000):
                data = b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece
                await server.send(writer, data)
                await asyncio.sleep(0.01)

        return handle

    return handler_for


@pytest.mark.parametrize("framing", ["chunked", "close", "huge-length"])
async def test_streamed_body_over_cap_is_refused_early(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory, framing: str
) -> None:
    box: list[RawServer] = []
    server = await raw_upstream(_endless(framing)(box))
    box.append(server)
    started, contended = time.perf_counter(), contention()
    status, body = await _single_call_status(gateway_client, server.url,
                                             max_upstream_bytes=8192)
    elapsed = time.perf_counter() - started
    assert status == 502
    assert "8192 bytes" in body["error"]
    assert elapsed - (contention() - contended) < 1.5  # the whole body: ~10 s
    await asyncio.wait_for(server.disconnected.wait(), 2)  # the gateway hung up
    assert server.bytes_sent < 100_000


async def test_per_call_timeout_is_504_within_about_the_timeout(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply(delay=3.0))
    client = await gateway_client(make_config(
        {"slow": {"url": slow, "timeout": 0.3}}, endpoint("/x", call("slow", "slow"))))
    started, contended = time.perf_counter(), contention()
    response = await client.get("/x")
    elapsed = time.perf_counter() - started
    assert response.status_code == 504
    body = await body_of(response)
    assert_error_envelope(body)
    assert "timed out" in body["error"]
    assert elapsed >= 0.25
    assert elapsed - (contention() - contended) < 1.0  # less the machine's load
    await _until(lambda: slow.cancelled == 1)  # the gateway hung up on it


async def test_drip_feeding_upstream_times_out_at_the_call_timeout(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    async def drip(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: 100000\r\n\r\n[")
        while True:  # every byte arrives well within any per-read timeout
            await asyncio.sleep(0.1)
            writer.write(b"1")
            await writer.drain()

    server = await raw_upstream(drip)
    client = await gateway_client(make_config(
        {"drip": {"url": server, "timeout": 0.5}}, endpoint("/x", call("drip", "drip"))))
    started, contended = time.perf_counter(), contention()
    response = await client.get("/x")
    elapsed = time.perf_counter() - started
    assert response.status_code == 504
    assert elapsed >= 0.45
    assert elapsed - (contention() - contended) < 1.5  # less the machine's load


async def test_deadline_passing_on_a_required_call_is_504(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    fast, slow = await upstream(reply()), await upstream(reply(delay=3.0))
    client = await gateway_client(make_config(
        {"fast": fast, "slow": slow},
        endpoint("/x", call("fast", "fast"), call("slow", "slow")), deadline=0.3))
    started, contended = time.perf_counter(), contention()
    response = await client.get("/x")
    elapsed = time.perf_counter() - started
    assert response.status_code == 504
    body = await body_of(response)
    assert_error_envelope(body)
    assert "deadline" in body["error"]
    assert body["meta"]["calls"]["fast"]["ok"] is True
    assert body["meta"]["calls"]["slow"]["ok"] is False
    assert elapsed >= 0.25
    assert elapsed - (contention() - contended) < 1.0  # less the machine's load
    # the call that blew the deadline is the one a developer needs to see in Server-Timing
    timing = response.headers["Server-Timing"]
    assert [p.split(";")[0].strip() for p in timing.split(",")] == ["fast", "slow", "total"]
    await _until(lambda: slow.cancelled == 1)


async def test_deadline_with_only_optional_calls_late_gives_200_with_defaults(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    fast, slow = await upstream(reply({"id": 1})), await upstream(reply(delay=3.0))
    client = await gateway_client(make_config(
        {"fast": fast, "slow": slow},
        endpoint("/x", call("user", "fast"),
                 call("extra", "slow", optional=True, default={"items": []})),
        deadline=0.3))
    started, contended = time.perf_counter(), contention()
    response = await client.get("/x")
    assert time.perf_counter() - started - (contention() - contended) < 1.0  # less load
    assert response.status_code == 200
    body = await body_of(response)
    assert body["data"] == {"user": {"id": 1}, "extra": {"items": []}}
    assert body["meta"]["complete"] is False
    assert "deadline" in body["meta"]["calls"]["extra"]["error"]


async def test_unknown_route_is_404_envelope(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream()
    client = await gateway_client(make_config({"a": a}, endpoint("/x", call("a", "a"))))
    response = await client.get("/nope", headers={"X-Request-ID": "r-404"})
    assert response.status_code == 404
    assert_error_envelope(await body_of(response))
    assert response.headers["X-Request-ID"] == "r-404"
    assert "total;dur=" in response.headers["Server-Timing"]
    assert a.requests == 0


async def test_wrong_method_is_405(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream()
    client = await gateway_client(make_config({"a": a}, endpoint("/x", call("a", "a"))))
    response = await client.post("/x", json={})
    assert response.status_code == 405
    assert_error_envelope(await body_of(response))
    assert a.requests == 0


def _body_endpoint(server_url: str, **gateway: Any) -> dict[str, Any]:
    return make_config(
        {"up": server_url},
        endpoint("/items", call("created", "up", "/items", method="POST",
                                body={"name": "{body.name}"}), method="POST"),
        **gateway)


async def test_bad_json_body_is_400(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream()
    client = await gateway_client(_body_endpoint(up.url))
    response = await client.post("/items", data=b"{not json",
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = await body_of(response)
    assert_error_envelope(body)
    assert "JSON" in body["error"]
    assert up.requests == 0


async def test_oversize_body_is_413(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream()
    client = await gateway_client(_body_endpoint(up.url, max_request_bytes=1024))
    response = await client.post("/items", json={"name": "x" * 5000})
    assert response.status_code == 413
    assert_error_envelope(await body_of(response))
    assert up.requests == 0


async def test_bad_strategy_header_is_400(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream()
    client = await gateway_client(make_config({"a": a}, endpoint("/x", call("a", "a"))))
    response = await client.get("/x", headers={"X-Gateway-Strategy": "fastest"})
    assert response.status_code == 400
    body = await body_of(response)
    assert_error_envelope(body)
    assert "X-Gateway-Strategy" in body["error"]
    assert a.requests == 0


async def test_missing_query_placeholder_is_400_and_nothing_is_sent(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a, b = await upstream(), await upstream()
    client = await gateway_client(make_config(
        {"a": a, "b": b},
        endpoint("/search", call("plain", "a", "/all"),
                 call("found", "b", "/find", query={"q": "{query.q}"}))))
    response = await client.get("/search")
    assert response.status_code == 400
    body = await body_of(response)
    assert_error_envelope(body)
    assert "'q'" in body["error"]
    await asyncio.sleep(0.05)
    assert a.requests == 0
    assert b.requests == 0


@pytest.fixture
def hooks_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module with `combine` hooks; returns its name."""
    name = f"e2e_hooks_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        "def explode(results, ctx):\n"
        "    raise RuntimeError('secret internal detail ' + str(results))\n"
        "\n"
        "async def total(results, ctx):\n"
        "    return {'n': sum(v['n'] for v in results.values()), 'rid': ctx.request_id}\n"
        "\n"
        "async def hang(results, ctx):\n"
        "    import asyncio\n"
        "    await asyncio.sleep(30)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


async def test_combine_hook_result_becomes_data(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, hooks_module: str
) -> None:
    a, b = await upstream(reply({"n": 2})), await upstream(reply({"n": 3}))
    client = await gateway_client(make_config(
        {"a": a, "b": b},
        endpoint("/sum", call("a", "a"), call("b", "b"), combine=f"{hooks_module}:total")))
    response = await client.get("/sum", headers={"X-Request-ID": "sum-1"})
    assert response.status_code == 200
    assert (await body_of(response))["data"] == {"n": 5, "rid": "sum-1"}


async def test_combine_raising_is_500_with_traceback_only_in_log(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, hooks_module: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    a = await upstream(reply({"n": 1}))
    client = await gateway_client(make_config(
        {"a": a}, endpoint("/boom", call("a", "a"), combine=f"{hooks_module}:explode")))
    with caplog.at_level(logging.ERROR):
        response = await client.get("/boom", headers={"X-Request-ID": "boom-42"})
    assert response.status_code == 500
    text = (await response.get_data(as_text=True))
    assert "Traceback" not in text
    assert "secret internal detail" not in text
    assert "RuntimeError" not in text
    body = await body_of(response)
    assert_error_envelope(body)
    assert body["meta"]["calls"]["a"]["ok"] is True
    logged = [r for r in caplog.records if r.exc_info and "boom-42" in r.getMessage()]
    assert logged, [r.getMessage() for r in caplog.records]
    assert "secret internal detail" in caplog.text
    assert "Traceback" in caplog.text


# -- the engine -------------------------------------------------------------------------------


async def test_chained_call_starts_when_its_dependency_finishes_not_in_waves(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream(reply({"id": "k1"}, delay=0.1))
    b = await upstream(reply({"slow": True}, delay=0.3))
    c = await upstream(echo)
    client = await gateway_client(make_config(
        {"a": a, "b": b, "c": c},
        endpoint("/chain", call("a", "a"), call("b", "b"), call("c", "c", "/after/{a.id}"))))
    response = await client.get("/chain")
    assert response.status_code == 200
    body = await body_of(response)
    calls = body["meta"]["calls"]
    assert body["data"]["c"]["path"] == "/after/k1"
    assert calls["c"]["start_ms"] >= calls["a"]["start_ms"] + calls["a"]["elapsed_ms"] - 1
    assert calls["c"]["start_ms"] < 220  # ~100 ms; waves would start it at ~300 ms
    assert calls["b"]["start_ms"] < 50


async def test_failed_required_call_cancels_its_siblings_at_once(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    failing = await upstream(reply({"error": "down"}, status=500, delay=0.05))
    sibling = await upstream(reply(delay=2.0))
    client = await gateway_client(make_config(
        {"failing": failing, "sibling": sibling},
        endpoint("/x", call("failing", "failing"), call("sibling", "sibling"))))
    started, contended = time.perf_counter(), contention()
    response = await client.get("/x")
    assert time.perf_counter() - started - (contention() - contended) < 0.8  # less load
    assert response.status_code == 502
    body = await body_of(response)
    assert body["meta"]["calls"]["sibling"]["ok"] is False
    assert "canceled" in body["meta"]["calls"]["sibling"]["error"]
    await _until(lambda: sibling.cancelled == 1)  # the gateway dropped its connection
    assert sibling.requests == 1


async def _three_calls(upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
                       strategy: str | None = None) -> Any:
    servers = {f"s{ms}": await upstream(reply({"ms": ms}, delay=ms / 1000))
               for ms in (100, 200, 300)}
    keys = {"strategy": strategy} if strategy else {}
    return await gateway_client(make_config(
        servers, endpoint("/three", *(call(n, n) for n in servers), **keys)))


async def _timed(client: Any, headers: dict[str, str] | None = None) -> tuple[float, Any]:
    started, contended = time.perf_counter(), contention()
    response = await client.get("/three", headers=headers or {})
    assert response.status_code == 200
    # Less the waits for a CPU (the machine's load); the upstreams' sleeps are not such waits.
    return time.perf_counter() - started - (contention() - contended), await body_of(response)


async def test_parallel_takes_well_under_sequential(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await _three_calls(upstream, gateway_client)
    parallel, pbody = await _timed(client)
    sequential, sbody = await _timed(client, {"X-Gateway-Strategy": "sequential"})
    assert pbody["meta"]["strategy"] == "parallel"
    assert sbody["meta"]["strategy"] == "sequential"
    assert parallel < 0.45
    assert sequential >= 0.6
    starts = [sbody["meta"]["calls"][n]["start_ms"] for n in ("s100", "s200", "s300")]
    assert starts == sorted(starts)
    assert starts[2] >= 290


async def test_configured_sequential_is_overridden_by_header(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await _three_calls(upstream, gateway_client, strategy="sequential")
    sequential, sbody = await _timed(client)
    parallel, pbody = await _timed(client, {"X-Gateway-Strategy": " Parallel "})
    assert sbody["meta"]["strategy"] == "sequential"
    assert pbody["meta"]["strategy"] == "parallel"
    assert sequential >= 0.6
    assert parallel < 0.45


async def test_method_and_typed_body_template_reach_the_upstream(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config(
        {"up": up},
        endpoint("/orders/<int:uid>", call(
            "created", "up", "/users/{uid}/orders", method="PUT",
            body={"count": "{body.count}", "tags": "{body.tags}", "meta": "{body.meta}",
                  "label": "order {body.count} for {uid}", "user": "{uid}",
                  "fixed": [1, "two", {"three": True}], "agent": "{header.user-agent}"}),
            method="POST"),
    ))
    response = await client.post("/orders/5", json={"count": 3, "tags": ["a", "b"],
                                                    "meta": {"x": None, "y": 1.5}},
                                 headers={"User-Agent": "e2e/1"})
    assert response.status_code == 200, await response.get_data(as_text=True)
    seen = up.last
    assert seen.method == "PUT"
    assert seen.path == "/users/5/orders"
    assert seen.headers["content-type"].startswith("application/json")
    sent = (await body_of(response))["data"]["created"]["body"]
    assert sent == {"count": 3, "tags": ["a", "b"], "meta": {"x": None, "y": 1.5},
                    "label": "order 3 for 5", "user": 5, "fixed": [1, "two", {"three": True}],
                    "agent": "e2e/1"}


async def test_missing_body_field_is_400_and_nothing_is_sent(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_body_endpoint(up.url))
    response = await client.post("/items", json={"other": 1})
    assert response.status_code == 400
    assert "name" in (await body_of(response))["error"]
    assert up.requests == 0


async def test_select_and_rename_shape_objects_and_lists(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    user = await upstream(reply({"id": 7, "name": "Ada", "password_hash": "x", "tier": "pro"}))
    items = await upstream(reply([{"id": 1, "secret": 1, "title": "a"},
                                  {"id": 2, "secret": 2, "title": "b"}]))
    client = await gateway_client(make_config(
        {"users": user, "items": items},
        endpoint("/x",
                 call("user", "users", select=["id", "name"], rename={"name": "full_name"}),
                 call("items", "items", select=["id", "title"]))))
    body = await body_of(await client.get("/x"))
    assert body["data"] == {"user": {"id": 7, "full_name": "Ada"},
                            "items": [{"id": 1, "title": "a"}, {"id": 2, "title": "b"}]}


async def test_missing_dependency_field_fails_the_call_not_the_request_input(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream(reply({"no_id_here": 1}))
    b = await upstream(echo)
    client = await gateway_client(make_config(
        {"a": a, "b": b},
        endpoint("/x", call("a", "a"), call("b", "b", "/by/{a.id}"))))
    response = await client.get("/x")
    assert response.status_code == 502
    body = await body_of(response)
    assert body["meta"]["calls"]["b"]["ok"] is False
    assert b.requests == 0


# -- replies an upstream should not send ------------------------------------------------------


async def test_gzip_body_is_capped_on_decoded_bytes(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    bomb = gzip.compress(b"[" + b"0," * 500_000 + b"0]")  # ~1 MB of JSON in ~1 KB
    small = gzip.compress(b'{"id": 1}')
    big_up = await upstream(reply(raw_body=bomb, headers={"Content-Encoding": "gzip"}))
    small_up = await upstream(reply(raw_body=small, headers={"Content-Encoding": "gzip"}))
    client = await gateway_client(make_config(
        {"big": big_up, "small": small_up},
        endpoint("/big", call("big", "big")), endpoint("/small", call("small", "small")),
        max_upstream_bytes=65536))
    big = await client.get("/big")
    assert big.status_code == 502
    assert "65536 bytes" in (await body_of(big))["error"]
    fine = await client.get("/small")
    assert fine.status_code == 200
    assert (await body_of(fine))["data"] == {"small": {"id": 1}}


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[1,",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\nzz\r\n[1]\r\n0\r\n\r\n",
        b"",
    ],
    ids=["truncated", "garbage", "bad-chunk", "empty"],
)
async def test_broken_upstream_replies_are_502(
    raw_upstream: RawUpstreamFactory, gateway_client: GatewayClientFactory, raw: bytes
) -> None:
    async def broken(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)  # then RawServer closes the connection

    server = await raw_upstream(broken)
    status, body = await _single_call_status(gateway_client, server.url)
    assert status == 502
    assert_error_envelope(body)
    assert "Traceback" not in body["error"]


async def test_concurrent_requests_keep_their_own_ids_and_values(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    async def slow_echo(request: Any) -> Response:
        await asyncio.sleep(0.05)
        return await echo(request)

    a, b = await upstream(slow_echo), await upstream(slow_echo)
    client = await gateway_client(make_config(
        {"a": a, "b": b},
        endpoint("/u/<int:uid>", call("a", "a", "/a/{uid}"), call("b", "b", "/b/{a.path}"))))
    started, contended = time.perf_counter(), contention()
    responses = await asyncio.gather(*(
        client.get(f"/u/{i}", headers={"X-Request-ID": f"req-{i}"}) for i in range(40)))
    elapsed = time.perf_counter() - started - (contention() - contended)  # less the load
    assert elapsed < 2.0  # ~100 ms each, run side by side
    for i, response in enumerate(responses):
        assert response.status_code == 200
        assert response.headers["X-Request-ID"] == f"req-{i}"
        data = (await body_of(response))["data"]
        assert data["a"]["path"] == f"/a/{i}"
        assert data["a"]["headers"]["x-request-id"] == f"req-{i}"
        assert data["b"]["path"] == f"/b/%2Fa%2F{i}"
        assert data["b"]["headers"]["x-request-id"] == f"req-{i}"
    assert a.requests == b.requests == 40


async def test_diamond_dependencies_start_after_the_last_one_they_need(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    root = await upstream(reply({"k": "r"}, delay=0.05))
    left = await upstream(reply({"k": "l"}, delay=0.05))
    right = await upstream(reply({"k": "x"}, delay=0.2))
    last = await upstream(echo)
    client = await gateway_client(make_config(
        {"root": root, "left": left, "right": right, "last": last},
        endpoint("/d",
                 call("last", "last", "/{left.k}/{right.k}"),
                 call("left", "left", "/{root.k}"),
                 call("right", "right", "/{root.k}"),
                 call("root", "root"))))
    response = await client.get("/d")
    assert response.status_code == 200
    body = await body_of(response)
    calls = body["meta"]["calls"]
    assert list(calls) == ["last", "left", "right", "root"]  # config order
    assert body["data"]["last"]["path"] == "/l/x"
    assert calls["left"]["start_ms"] == pytest.approx(calls["right"]["start_ms"], abs=20)
    assert calls["last"]["start_ms"] >= calls["right"]["start_ms"] + 190
    assert calls["last"]["start_ms"] < 400


async def test_hanging_combine_hook_is_504_within_the_deadline(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, hooks_module: str
) -> None:
    a = await upstream(reply({"n": 1}))
    client = await gateway_client(make_config(
        {"a": a}, endpoint("/hang", call("a", "a"), combine=f"{hooks_module}:hang"),
        deadline=0.5))
    started, contended = time.perf_counter(), contention()
    response = await client.get("/hang")
    assert response.status_code == 504
    assert time.perf_counter() - started - (contention() - contended) < 3.0  # less load
    body = await body_of(response)
    assert_error_envelope(body)
    assert "combine hook" in body["error"]


async def test_options_is_a_preflight_only_for_allowed_origins(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream(reply({"n": 1}))
    client = await gateway_client(make_config(
        {"a": a}, endpoint("/x", call("a", "a")), cors_origins=["http://app.test"]))
    preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "GET"}
    allowed = await client.options("/x", headers=preflight)
    assert allowed.status_code == 204
    assert "GET" in allowed.headers["Access-Control-Allow-Methods"]
    stranger = await client.options("/x", headers={**preflight, "Origin": "http://evil.test"})
    assert stranger.status_code == 204  # a plain OPTIONS: what the route allows, no CORS
    assert stranger.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert "Access-Control-Allow-Methods" not in stranger.headers
    plain = await client.options("/x")
    assert plain.status_code == 204
    assert plain.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert await plain.get_data() == b""
    assert (await client.options("/nope")).status_code == 404
    assert a.requests == 0


async def test_cors_exposes_timing_and_job_headers_to_allowed_origins(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream(reply({"n": 1}))
    client = await gateway_client(make_config(
        {"a": a}, endpoint("/x", call("a", "a")), cors_origins=["http://app.test"]))
    response = await client.get("/x", headers={"Origin": "http://app.test"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://app.test"
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Server-Timing", "X-Request-ID", "Location", "Retry-After"} <= exposed
    other = await client.get("/x", headers={"Origin": "http://evil.test"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_a_chained_value_too_long_for_a_url_is_a_failed_call_not_a_500(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    first = await upstream(reply({"next": "x" * 70_000}))
    second = await upstream(reply({"ok": True}))
    client = await gateway_client(make_config({"a": first, "b": second}, endpoint(
        "/chain", call("first", "a", "/f"), call("second", "b", "/s/{first.next}"))))
    response = await client.get("/chain")
    body = await response.get_json()
    assert response.status_code == 502, body
    assert "URL is unusable" in body["error"]
    assert body["meta"]["calls"]["first"]["ok"] is True
    assert body["meta"]["calls"]["second"]["ok"] is False
    assert second.requests == 0


async def test_cors_exposes_the_limits_and_auth_headers_to_allowed_origins(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream(reply({"n": 1}))
    config = make_config({"a": a}, endpoint("/x", call("a", "a")),
                         cors_origins=["http://app.test"])
    config["limits"] = {"rate": "5/minute"}
    client = await gateway_client(config)
    response = await client.get("/x", headers={"Origin": "http://app.test"})
    assert "RateLimit" in response.headers  # there to read, and the page may read it
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"RateLimit", "RateLimit-Policy", "WWW-Authenticate"} <= exposed
