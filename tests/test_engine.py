"""The engine on its own: one deadline counted from the request's arrival, call order."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import RecordingServer, UpstreamFactory, call, endpoint, make_config, reply

from gateway import runner
from gateway.config import parse_config
from gateway.context import RequestContext
from gateway.engine import execute
from gateway.envelope import CallRecord
from gateway.plan import Plan, compile_plans
from gateway.upstream import Upstream


def _ctx(strategy: str = "parallel", arrived_ago: float = 0.0) -> RequestContext:
    return RequestContext("rid", "GET", "/x", {}, {}, {}, None, strategy,
                          time.perf_counter() - arrived_ago)


Setup = tuple[Plan, dict[str, Upstream]]


@pytest.fixture
async def slow_and_fast(upstream: UpstreamFactory) -> AsyncIterator[Setup]:
    """A plan with a fast call then a 0.2 s call, and started upstream clients for it."""
    slow: RecordingServer = await upstream(reply({"s": 1}, delay=0.2))
    fast = await upstream(reply({"f": 1}))
    config = parse_config(make_config({"slow": slow, "fast": fast}, endpoint(
        "/x", call("fast", "fast", "/f"), call("slow", "slow", "/s"))), env={})
    ups = {name: Upstream(cfg, config.gateway) for name, cfg in config.upstreams.items()}
    for up in ups.values():
        await up.start()
    yield compile_plans(config)[0], ups
    for up in ups.values():
        await up.close()


async def test_deadline_counts_from_the_request_arrival_not_from_execution(
    slow_and_fast: Setup
) -> None:
    plan, ups = slow_and_fast
    fresh = await execute(plan, _ctx(), ups, deadline=0.35)
    assert fresh.status == 200  # 0.2 s of calls fit a 0.35 s budget...
    late = await execute(plan, _ctx(arrived_ago=0.25), ups, deadline=0.35)
    assert late.status == 504  # ...but not what is left of it 0.25 s after arrival
    assert late.records["fast"].ok is True
    assert late.records["slow"].ok is False


async def test_sequential_runs_calls_in_config_order(
    slow_and_fast: Setup
) -> None:
    plan, ups = slow_and_fast
    outcome = await execute(plan, _ctx("sequential"), ups, deadline=5)
    assert outcome.status == 200
    fast_rec, slow_rec = outcome.records["fast"], outcome.records["slow"]
    assert slow_rec.start_ms >= fast_rec.start_ms + fast_rec.elapsed_ms
    assert outcome.results == {"fast": {"f": 1}, "slow": {"s": 1}}


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
async def test_a_bug_under_a_plan_is_a_500_that_keeps_its_meta(
    slow_and_fast: Setup, strategy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Something below the plan raising what no layer maps (here the call observer the
    dashboard and /ws pass in) is answered like a failing view: 500, one line naming the
    request id, and meta with every call; the traceback only in the log."""
    plan, ups = slow_and_fast

    def observer(record: CallRecord, data: Any) -> None:
        if record.name == "fast":
            raise KeyError("secret-internal-key")

    settings = parse_config(make_config({}), env={}).gateway
    with caplog.at_level(logging.ERROR):
        result = await runner.run(plan, _ctx(strategy), ups, settings, observer)
    assert result.status == 500
    assert result.body["error"] == "internal error (request id rid)"
    assert "secret-internal-key" not in str(result.body)
    calls = result.body["meta"]["calls"]
    assert calls["fast"]["ok"] is True
    assert calls["slow"]["ok"] is False
    assert calls["slow"]["error"] in ("canceled: internal error", "not run: internal error")
    assert result.body["meta"]["strategy"] == strategy
    assert any("rid" in r.getMessage() and r.exc_info for r in caplog.records)


def test_remaining_is_never_negative() -> None:
    assert _ctx(arrived_ago=5.0).remaining(1.0) == 0.0
    assert 0.9 < _ctx().remaining(1.0) <= 1.0


async def test_dependents_read_the_raw_reply_not_the_shaped_one(
    upstream: UpstreamFactory
) -> None:
    users = await upstream(reply({"id": 7, "name": "Ada", "account_id": 42}))
    billing: RecordingServer = await upstream(reply({"balance": 1}))
    config = parse_config(make_config({"users": users, "billing": billing}, endpoint(
        "/x", call("user", "users", "/u", select=["id"], rename={"id": "uid"}),
        call("account", "billing", "/accounts/{user.account_id}"))), env={})
    ups = {name: Upstream(cfg, config.gateway) for name, cfg in config.upstreams.items()}
    for up in ups.values():
        await up.start()
    try:
        outcome = await execute(compile_plans(config)[0], _ctx(), ups, deadline=5)
    finally:
        for up in ups.values():
            await up.close()
    assert outcome.status == 200, outcome.error
    assert outcome.results["user"] == {"uid": 7}  # `data` holds the shaped reply...
    assert [r.path for r in billing.seen] == ["/accounts/42"]  # ...its dependent the raw one
