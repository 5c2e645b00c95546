"""W3C trace context: the client's traceparent/tracestate reach every upstream call."""

from __future__ import annotations

import pytest
from support import GatewayClientFactory, UpstreamFactory, call, echo, endpoint, make_config

from gateway.tracing import trace_headers, valid_traceparent

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("value", "valid"), [
    (PARENT, True),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", True),  # future version
    (PARENT + "-extra", False),  # version 00 has exactly four fields
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),  # upper case
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", False),
    ("garbage", False),
])
def test_traceparent_validation(value: str, valid: bool) -> None:
    assert valid_traceparent(value) is valid


def test_tracestate_goes_only_with_a_valid_traceparent() -> None:
    assert trace_headers({"traceparent": PARENT, "tracestate": "a=1"}) == [
        ("traceparent", PARENT), ("tracestate", "a=1")]
    assert trace_headers({"traceparent": "bad", "tracestate": "a=1"}) == []
    assert trace_headers({"tracestate": "a=1"}) == []


async def test_trace_headers_pass_through_to_every_call(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    one, two = await upstream(echo), await upstream(echo)
    client = await gateway_client(make_config(
        {"one": one, "two": two},
        endpoint("/r", call("a", "one", "/a"), call("b", "two", "/b")),
    ))
    await client.get("/r", headers={"traceparent": PARENT, "tracestate": "vendor=x"})
    for server in (one, two):
        assert server.last.headers["traceparent"] == PARENT
        assert server.last.headers["tracestate"] == "vendor=x"
    await client.get("/r")
    assert "traceparent" not in one.last.headers
    await client.get("/r", headers={"traceparent": "nonsense", "tracestate": "vendor=x"})
    assert "traceparent" not in one.last.headers
    assert "tracestate" not in one.last.headers
