"""envelope.py: the response body of SPEC section 4, timing headers and the status policy."""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

import orjson
import pytest

from gateway import envelope
from gateway.envelope import CallRecord, failure_status, server_timing
from gateway.errors import (
    CallError,
    CallInputError,
    CircuitOpen,
    UpstreamBadReply,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)


def ok(name: str, elapsed: float, **extra: Any) -> CallRecord:
    return CallRecord(name=name, upstream=name, status=200, ok=True, elapsed_ms=elapsed,
                      attempts=1, finished=True, **extra)


def failed(name: str, error: CallError, elapsed: float = 12.0) -> CallRecord:
    record = CallRecord(name=name, upstream=name, elapsed_ms=elapsed, attempts=1, finished=True)
    record.fail(error)
    return record


CALL_KEYS = {"status", "ok", "elapsed_ms", "attempts", "cached"}


def test_body_has_exactly_data_and_meta_on_success() -> None:
    out = envelope.body({"user": {"id": 7}}, strategy="parallel",
                        records=[ok("user", 101.234)], processing_ms=212.449, complete=True)
    assert set(out) == {"data", "meta"}
    assert out["data"] == {"user": {"id": 7}}
    meta = out["meta"]
    assert set(meta) == {"processing_time_ms", "strategy", "complete", "calls"}
    assert meta["processing_time_ms"] == 212.45
    assert meta["strategy"] == "parallel"
    assert meta["complete"] is True
    assert meta["calls"]["user"] == {"status": 200, "ok": True, "elapsed_ms": 101.23,
                                     "attempts": 1, "cached": False, "start_ms": 0.0}


def test_body_on_failure_has_null_data_and_an_error_line() -> None:
    error = UpstreamStatus("upstream 'orders' answered 500", 500)
    out = envelope.body(None, strategy="sequential",
                        records=[ok("user", 1), failed("orders", error)],
                        processing_ms=5, complete=False, error="upstream 'orders' answered 500")
    assert set(out) == {"data", "meta", "error"}
    assert out["data"] is None
    assert out["error"] == "upstream 'orders' answered 500"
    assert (out["meta"]["strategy"], out["meta"]["complete"]) == ("sequential", False)
    assert list(out["meta"]["calls"]) == ["user", "orders"]


def test_failed_call_meta_says_status_and_error() -> None:
    meta = failed("orders", UpstreamStatus("upstream 'orders' answered 500", 500)).to_meta()
    assert set(meta) >= CALL_KEYS
    assert meta["status"] == 500
    assert meta["ok"] is False
    assert meta["error"] == "upstream 'orders' answered 500"


def test_a_call_that_never_got_an_answer_has_null_status() -> None:
    meta = failed("slow", UpstreamTimeout("upstream 'slow' timed out after 1s")).to_meta()
    assert (meta["status"], meta["ok"]) == (None, False)


def test_successful_call_meta_has_no_error_or_batch_key() -> None:
    meta = ok("user", 3.0).to_meta()
    assert set(meta) == CALL_KEYS | {"start_ms"}


def test_batched_and_cached_calls_say_so() -> None:
    meta = ok("author", 4.0, batch=3, cached=True, queued_ms=1.234).to_meta()
    assert (meta["batch"], meta["cached"], meta["queued_ms"]) == (3, True, 1.23)


def test_envelope_is_json_ready() -> None:
    out = envelope.body([1], strategy="parallel", records=[ok("a", 1.0)], processing_ms=2.0,
                        complete=True)
    assert orjson.loads(envelope.dumps(out)) == out


# -- headers ----------------------------------------------------------------------------------


def test_server_timing_has_one_entry_per_call_then_total() -> None:
    records = [ok("user", 101.24), failed("orders", UpstreamUnavailable("x"), 12.0),
               ok("account", 110.0)]
    assert server_timing(records, 212.44) == (
        "user;dur=101.2, orders;dur=12.0, account;dur=110.0, total;dur=212.4")


def test_server_timing_skips_calls_that_never_started() -> None:
    never = CallRecord(name="later", upstream="u")
    assert server_timing([ok("user", 1.0), never], 3.0) == "user;dur=1.0, total;dur=3.0"


def test_server_timing_with_no_calls_is_just_total() -> None:
    assert server_timing([], 0.04) == "total;dur=0.0"


def test_server_timing_entries_are_valid_metric_syntax() -> None:
    value = server_timing([ok("user-1", 1.0), ok("o_2", 22.55)], 30.0)
    for entry in value.split(", "):
        assert re.fullmatch(r"[A-Za-z0-9_-]+;dur=\d+\.\d", entry), entry


def test_headers_carry_timing_and_request_id() -> None:
    got = envelope.headers("req-1", [ok("user", 5.0)], 7.456)
    assert got == {"Server-Timing": "user;dur=5.0, total;dur=7.5",
                   "X-Processing-Time-Ms": "7.46", "X-Request-ID": "req-1"}


# -- status policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UpstreamTimeout("timed out"), 504),
        (UpstreamUnavailable("connection refused"), 502),
        (UpstreamBadReply("not JSON"), 502),
        (CallInputError("field missing"), 502),
        (UpstreamStatus("answered 404", 404), 404),
        (UpstreamStatus("answered 400", 400), 400),
        (UpstreamStatus("answered 429", 429), 429),
        (UpstreamStatus("answered 500", 500), 502),
        (UpstreamStatus("answered 503", 503), 502),
        (UpstreamStatus("answered 302", 302), 502),
    ],
)
def test_failure_status_for_each_kind_of_call_error(error: CallError, status: int) -> None:
    assert failure_status(error) == (status, {})


def test_upstream_status_keeps_the_upstream_status_on_the_call() -> None:
    error = UpstreamStatus("answered 500", 500)
    assert (error.status, error.gateway_status) == (500, 502)


@pytest.mark.parametrize("retry_after", [0.0, 0.2, 1.0, 4.5, 29.9, 30.0])
def test_open_circuit_is_503_with_retry_after(retry_after: float) -> None:
    status, extra = failure_status(CircuitOpen("circuit open for 'users'", retry_after))
    assert status == 503
    assert set(extra) == {"Retry-After"}
    seconds = int(extra["Retry-After"])
    assert seconds >= max(1, math.ceil(retry_after))
    assert seconds <= math.ceil(retry_after) + 1


def test_dumps_turns_non_json_values_into_strings() -> None:
    assert orjson.loads(envelope.dumps({"d": date(2024, 1, 2), 3: "x"})) == {
        "d": "2024-01-02", "3": "x"}
    assert orjson.loads(envelope.dumps({"o": _Opaque()})) == {"o": "opaque"}


class _Opaque:
    def __str__(self) -> str:
        return "opaque"


# -- skipped calls ----------------------------------------------------------------------------


def test_a_skipped_call_is_exactly_skipped_and_ok() -> None:
    record = CallRecord(name="recs", upstream="u")
    record.skip()
    assert record.to_meta() == {"skipped": True, "ok": True}
    assert (record.ok, record.finished) == (True, True)


def test_server_timing_leaves_skipped_calls_out() -> None:
    skipped = CallRecord(name="recs", upstream="u")
    skipped.skip()
    assert server_timing([ok("user", 1.0), skipped], 3.0) == "user;dur=1.0, total;dur=3.0"
