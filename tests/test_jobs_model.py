"""The pure parts of jobs: ids, the captured request, outcomes, views, Prefer, config keys."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest

import gateway.jobs
from gateway import Gateway
from gateway.config import JobsSettings, load_config
from gateway.errors import ConfigError
from gateway.jobs.api import wants_async
from gateway.jobs.model import (
    CANCELED,
    CRASHED,
    OWN_KEY,
    RAW_BODY,
    JobRequest,
    JobView,
    Outcome,
    finished_view,
    new_job_id,
    valid_job_id,
)
from gateway.jobs.runner import captured_headers
from gateway.jobs.store import Timing
from gateway.jobs.worker import redacted


def test_public_names() -> None:
    assert set(gateway.jobs.__all__) == {
        "STATES", "JobRequest", "JobState", "JobStore", "JobView", "JobsBusy", "JobsClosed",
        "JobsError", "JobsUnavailable", "Outcome", "Timing", "open_store", "publish_counts",
        "register", "respond_async"}


def test_job_ids_carry_at_least_128_random_bits() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    for job_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{24}", job_id)
        assert len(base64.urlsafe_b64decode(job_id)) * 8 >= 128
        assert valid_job_id(job_id)


@pytest.mark.parametrize("job_id", ["", "short", "a/b" * 10, "x" * 65, "é" * 24, "a.b" * 10])
def test_malformed_ids_are_refused_before_the_store(job_id: str) -> None:
    assert not valid_job_id(job_id)


def test_request_round_trips_through_json_with_a_binary_body() -> None:
    request = JobRequest("POST", "/a/b", "q=1&r=%20", (("authorization", "Bearer x"),),
                         bytes(range(256)), "rid", 7.5)
    assert JobRequest.from_json(request.to_json()) == request


@pytest.mark.parametrize(("outcome", "state"), [
    (Outcome(200, {"data": 1}), "succeeded"),
    (Outcome(302, {}), "succeeded"),
    (Outcome(404, {"error": "x"}), "failed"),
    (Outcome(502, {"error": "x"}), "failed"),
    (Outcome(None, None, "lost"), "failed"),
])
def test_outcome_state(outcome: Outcome, state: str) -> None:
    assert outcome.state == state
    assert Outcome.from_json(outcome.to_json()) == outcome


def test_an_unreadable_outcome_is_a_failure_without_details() -> None:
    outcome = Outcome.from_json("Traceback (most recent call last): ...")
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert "Traceback" not in outcome.error


def test_unfinished_view_has_no_result_fields() -> None:
    body = JobView("i" * 24, "running", 1_700_000_000.0, 1_700_000_001.5).to_json()
    assert body == {"id": "i" * 24, "status": "running",
                    "created_at": "2023-11-14T22:13:20.000Z",
                    "started_at": "2023-11-14T22:13:21.500Z"}


def test_finished_view_carries_the_aggregate_and_its_error() -> None:
    envelope: dict[str, Any] = {"data": None, "meta": {}, "error": "upstream 'u' answered 500"}
    view = finished_view("i" * 24, 1.0, 2.0, 3.0, Outcome(502, envelope))
    body = view.to_json()
    assert body["status"] == "failed"
    assert body["http_status"] == 502
    assert body["result"] == envelope
    assert body["error"] == "upstream 'u' answered 500"
    assert body["finished_at"] == "1970-01-01T00:00:03.000Z"


def test_canceled_view() -> None:
    body = JobView("i" * 24, "canceled", 1.0, None, 2.0, error=CANCELED).to_json()
    assert body["status"] == "canceled"
    assert body["http_status"] is None
    assert body["result"] is None
    assert body["started_at"] is None


@pytest.mark.parametrize(("value", "wanted"), [
    ("respond-async", True), ("RESPOND-ASYNC", True), ("wait=10, respond-async", True),
    ("respond-async; x=1", True), ("return=minimal", False), ("", False),
    ("respond-asynchronously", False), ("handling=lenient,respond-async", True)])
def test_prefer_parsing(value: str, wanted: bool) -> None:
    assert wants_async({"prefer": value}) is wanted


def test_captured_headers_are_only_those_the_gateway_can_use() -> None:
    gw = Gateway({
        "upstreams": {"a": {"url": "http://127.0.0.1:1", "forward_headers": ["authorization"]},
                      "b": {"url": "http://127.0.0.1:2"}},
        "endpoints": [{"route": "/x", "calls": [
            {"name": "c", "upstream": "b", "path": "/", "query": {"t": "{header.X-Tenant}"}}]}],
    })
    assert captured_headers(gw) == {"authorization", "x-tenant", "x-gateway-strategy",
                                    "content-type"}


def test_timing_bound() -> None:
    assert Timing().lost_after == 6.0
    assert Timing(heartbeat=0.5).lost_after == 1.5


def test_config_keys_and_defaults() -> None:
    jobs = load_config({"jobs": {"heartbeat": 0.5, "grace": 0}}).jobs
    assert (jobs.heartbeat, jobs.grace) == (0.5, 0.0)
    assert JobsSettings() == JobsSettings("memory", 4, 4, 300.0, 2.0, 10.0)


@pytest.mark.parametrize(("jobs", "problem"), [
    ({"grace": 60}, "jobs.grace: must be below 60"),
    ({"heartbeat": 0}, "jobs.heartbeat: must be > 0"),
    ({"store": "mysql://x"}, "jobs.store: must be \"memory\" or a redis URL"),
    ({"max_running": 0}, "jobs.max_running: must be >= 1"),
    ({"wat": 1}, "jobs.wat: unknown key"),
])
def test_config_problems(jobs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"jobs": jobs})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_a_redis_store_without_the_extra_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "saq" else real(name, *a))
    with pytest.raises(ConfigError) as info:
        load_config({"jobs": {"store": "redis://127.0.0.1:6379/0"}})
    assert info.value.problems == [
        "jobs.store: a redis store needs the redis extra: "
        "pip install 'quart-aggregation-gateway[redis]'"]


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:s3cret@redis.internal:6380/1", "redis://:***@redis.internal:6380/1"),
    ("rediss://app:pw@[::1]:6379/0", "rediss://app:***@[::1]:6379/0"),
])
def test_store_url_is_logged_without_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_outcome_record_keeps_the_body_as_json_text() -> None:
    body = {"data": {"a": [1, 2.5, "x"]}, "meta": {}}
    record = Outcome(200, body).to_record()
    assert record == {"http_status": 200, "error": None,
                      "body_json": '{"data":{"a":[1,2.5,"x"]},"meta":{}}'}
    back = Outcome.from_record(record)
    assert (back.state, back.body, back.raw) == ("succeeded", None, record["body_json"].encode())
    assert finished_view("i" * 24, 1.0, 2.0, 3.0, back).result == body


def test_outcome_for_redis_hands_the_body_bytes_over_and_reads_them_back() -> None:
    body = {"data": {"a": [1, 2.5, "x"]}, "meta": {}}
    handed = Outcome(200, body).to_redis()
    raw = handed.pop(RAW_BODY)
    assert raw == b'{"data":{"a":[1,2.5,"x"]},"meta":{}}'
    record = handed | {"body": OWN_KEY}  # what the queue stores (gateway/jobs/_saq.py)
    back = Outcome.from_record(record, raw)
    assert (back.state, back.body, back.raw) == ("succeeded", None, raw)
    envelope: dict[str, Any] = {"data": None, "meta": {}, "error": "upstream 'u' answered 500"}
    failed = Outcome.from_record({"http_status": 502, "error": None, "body": OWN_KEY},
                                 orjson.dumps(envelope))
    assert finished_view("i" * 24, 1.0, 2.0, 3.0, failed).error == envelope["error"]
    # The record says its body has a key of its own, and that key is gone: not a success.
    gone = finished_view("i" * 24, 1.0, 2.0, 3.0, Outcome.from_record(record, None))
    assert gone.state == "failed"
    assert gone.error is not None
    assert "no longer in the store" in gone.error


def test_outcome_record_of_a_failed_aggregate_keeps_its_error_line() -> None:
    envelope: dict[str, Any] = {"data": None, "meta": {}, "error": "upstream 'u' answered 500"}
    back = Outcome.from_record(Outcome(502, envelope).to_record())
    view = finished_view("i" * 24, 1.0, 2.0, 3.0, back)
    assert (view.state, view.error, view.result) == ("failed", envelope["error"], envelope)


def test_outcome_record_reads_the_earlier_form_and_garbage() -> None:
    assert Outcome.from_record({"http_status": 200, "body": {"a": 1}}) == Outcome(200, {"a": 1})
    assert Outcome.from_record({"http_status": None, "body_json": None, "error": "lost"}
                               ).state == "failed"
    assert Outcome.from_record("Traceback ...").error == CRASHED
