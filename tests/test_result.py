"""The one refusal builder and the request-id rule (pure)."""

from __future__ import annotations

import time

from gateway.result import REQUEST_ID_PATTERN, refusal, request_id, strategy_of


def test_refusal_is_the_envelope_with_one_error_line_and_timing_headers() -> None:
    refused = refusal(429, "slow down", request_id="abc", strategy="sequential",
                      started=time.perf_counter(), extra={"Retry-After": "3"})
    assert refused.status == 429
    assert refused.body["data"] is None
    assert refused.body["error"] == "slow down"
    assert refused.body["meta"]["complete"] is False
    assert refused.body["meta"]["strategy"] == "sequential"
    assert refused.body["meta"]["calls"] == {}
    assert refused.headers["X-Request-ID"] == "abc"
    assert refused.headers["Retry-After"] == "3"
    assert refused.headers["Server-Timing"].startswith("total;dur=")


def test_request_id_kept_when_sane_replaced_otherwise() -> None:
    assert request_id({"x-request-id": "a.b:c-1_2"}) == "a.b:c-1_2"
    fresh = request_id({"x-request-id": "no spaces"})
    assert len(fresh) == 32
    assert all(c in "0123456789abcdef" for c in fresh)
    assert request_id({"x-request-id": "x" * 129}) != "x" * 129
    assert REQUEST_ID_PATTERN.startswith("^")
    assert REQUEST_ID_PATTERN.endswith("$")


def test_strategy_of_a_refused_request_falls_back_without_error() -> None:
    assert strategy_of({"x-gateway-strategy": " Sequential "}, "parallel") == "sequential"
    assert strategy_of({"x-gateway-strategy": "fastest"}, "parallel") == "parallel"
    assert strategy_of({}, "sequential") == "sequential"
