"""The recent-request ring: bounded, cheap to fill, and the critical path it reports."""

from __future__ import annotations

from typing import Any

import pytest
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config, reply

from gateway import Gateway
from gateway.config import load_config
from gateway.context import RequestContext
from gateway.plan import Plan, compile_plans
from gateway.recent import SKIPPED, CallTiming, Recent, critical_path, make_entry
from gateway.result import Result


def timing(name: str, start: float, elapsed: float, *deps: str, ok: bool = True,
           status: int | None = 200, canceled: bool = False) -> CallTiming:
    return CallTiming(name, "up", status, ok, start, elapsed, deps, canceled=canceled)


def plan_for(*calls: dict[str, Any]) -> Plan:
    config = load_config(make_config({"up": "http://127.0.0.1:9"}, endpoint("/r", *calls)))
    return compile_plans(config)[0]


def ctx(strategy: str = "parallel") -> RequestContext:
    return RequestContext("rid-1", "GET", "/r", {}, {}, {}, None, strategy, 0.0)


def result(calls: dict[str, dict[str, Any]], status: int = 200, total: float = 50.0) -> Result:
    meta = {"processing_time_ms": total, "strategy": "parallel", "complete": True,
            "calls": calls}
    return Result(status, {"data": None, "meta": meta})


def meta_call(start: float, elapsed: float, status: int | None = 200, ok: bool = True,
              attempts: int = 1, **extra: Any) -> dict[str, Any]:
    return {"status": status, "ok": ok, "start_ms": start, "elapsed_ms": elapsed,
            "attempts": attempts, "cached": False, **extra}


# -- critical path (pure) ----------------------------------------------------------------------


def test_parallel_critical_path_follows_the_dependency_that_ended_last() -> None:
    calls = [
        timing("user", 0.1, 80.0),
        timing("orders", 0.2, 120.0),
        timing("prefs", 0.2, 30.0),
        timing("account", 80.2, 60.0, "user", "prefs"),
    ]
    assert critical_path(calls, "parallel", deps_known=True) == {"user", "account"}


def test_parallel_critical_path_is_the_slowest_call_when_independent() -> None:
    calls = [timing("a", 0.1, 80.0), timing("b", 0.1, 150.0), timing("c", 0.1, 10.0)]
    assert critical_path(calls, "parallel", deps_known=True) == {"b"}


def test_sequential_critical_path_is_every_call() -> None:
    calls = [timing("a", 0.1, 80.0), timing("b", 80.11, 120.0), timing("c", 200.12, 60.0)]
    assert critical_path(calls, "sequential", deps_known=True) == {"a", "b", "c"}


def test_code_view_critical_path_is_found_from_timing() -> None:
    # Two gathers one after the other: x and y together, then z.
    calls = [timing("x", 0.1, 40.0), timing("y", 0.1, 70.0), timing("z", 70.2, 20.0)]
    assert critical_path(calls, "parallel", deps_known=False) == {"y", "z"}


def test_canceled_and_unrun_calls_are_never_on_the_critical_path() -> None:
    calls = [
        timing("user", 0.1, 30.0, ok=False, status=404),
        timing("orders", 0.1, 30.5, ok=False, status=None, canceled=True),
        CallTiming("account", "up", None, False, 0.0, 0.0, ("user",), "not run"),
    ]
    assert critical_path(calls, "parallel", deps_known=True) == {"user"}
    assert critical_path([], "parallel", deps_known=True) == set()


# -- the ring ----------------------------------------------------------------------------------


def test_ring_keeps_the_newest_entries_with_increasing_seq() -> None:
    ring = Recent(size=3)
    plan = plan_for({"name": "a", "upstream": "up", "path": "/a"})
    for _ in range(5):
        ring.add(plan, ctx(), result({"a": meta_call(0.1, 5.0)}))
    assert len(ring) == 3
    assert [e.seq for e in ring.since()] == [3, 4, 5]
    assert ring.last_seq == 5
    assert [e.seq for e in ring.since(4)] == [5]
    assert [e.seq for e in ring.since(0, limit=2)] == [4, 5]
    assert ring.since(5) == []


def test_entry_copies_timings_deps_and_upstreams_from_plan_and_meta() -> None:
    plan = plan_for(
        {"name": "user", "upstream": "up", "path": "/u"},
        {"name": "account", "upstream": "up", "path": "/a/{user.id}"},
    )
    entry = make_entry(9, plan, ctx("sequential"), result({
        "user": meta_call(0.12, 80.0),
        "account": meta_call(80.2, 60.0, status=500, ok=False, error="upstream 'up' said 500"),
    }, status=502, total=141.0))
    assert (entry.seq, entry.status, entry.strategy, entry.total_ms) == (9, 502, "sequential",
                                                                         141.0)
    assert (entry.route, entry.path, entry.method, entry.kind) == ("/r", "/r", "GET", "config")
    user, account = entry.calls
    assert account.deps == ("user",)
    assert account.error == "upstream 'up' said 500"
    assert user.upstream == "up"
    data = entry.to_json()
    assert [c["critical"] for c in data["calls"]] == [True, True]
    assert data["calls"][1]["ok"] is False
    assert data["calls"][1]["canceled"] is False


def test_call_stopped_by_a_failed_request_is_marked_canceled() -> None:
    plan = plan_for({"name": "a", "upstream": "up", "path": "/a"},
                    {"name": "b", "upstream": "up", "path": "/b"})
    entry = make_entry(1, plan, ctx(), result({
        "a": meta_call(0.1, 10.0, status=503, ok=False),
        "b": meta_call(0.1, 10.2, status=None, ok=False, attempts=0,
                       error="canceled: required call 'a' failed"),
    }, status=502))
    a, b = entry.calls
    assert not a.canceled
    assert b.canceled


def test_a_skipped_call_says_so_instead_of_not_run() -> None:
    plan = plan_for({"name": "a", "upstream": "up", "path": "/a"},
                    {"name": "b", "upstream": "up", "path": "/b", "optional": True})
    entry = make_entry(1, plan, ctx(), result({
        "a": meta_call(0.1, 10.0), "b": {"skipped": True, "ok": True}}))
    a, b = entry.calls
    assert (b.ok, b.ran, b.canceled) == (True, False, False)
    assert b.error == SKIPPED
    assert a.error is None
    assert [c["critical"] for c in entry.to_json()["calls"]] == [True, False]


# -- fed by real requests ----------------------------------------------------------------------


async def test_every_aggregate_request_is_recorded_with_its_call_timings(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"id": 7, "account_id": 70}, delay=0.03))
    billing = await upstream(reply({"balance": 1}, delay=0.01))
    gw = Gateway(make_config(
        {"users": users, "billing": billing},
        endpoint("/d/<int:uid>", {"name": "user", "upstream": "users", "path": "/u/{uid}"},
                 {"name": "account", "upstream": "billing", "path": "/a/{user.account_id}"}),
    ))
    client = await gateway_client(gw)
    assert (await client.get("/d/7")).status_code == 200
    assert (await client.get("/d/8", headers={"X-Gateway-Strategy": "sequential"})
            ).status_code == 200
    assert (await client.get("/nowhere")).status_code == 404  # no endpoint: not recorded
    assert gw.runtime is not None
    first, second = gw.runtime.recent.since()
    assert (first.path, first.route, first.strategy) == ("/d/7", "/d/<int:uid>", "parallel")
    assert second.strategy == "sequential"
    user, account = first.calls
    assert (user.name, user.upstream, user.status, user.ok) == ("user", "users", 200, True)
    assert account.deps == ("user",)
    assert user.elapsed_ms >= 25
    assert account.start_ms >= user.start_ms + user.elapsed_ms - 0.05
    assert first.total_ms >= account.start_ms + account.elapsed_ms - 0.05


@pytest.mark.parametrize("status", [502, 504])
async def test_failed_requests_are_recorded_too(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, status: int
) -> None:
    bad = await upstream(reply({"e": 1}, status=500) if status == 502
                         else reply({"e": 1}, delay=1.0))
    gw = Gateway(make_config({"b": {"url": bad, "timeout": 0.05}},
                             endpoint("/x", call("b", "b"))))
    client = await gateway_client(gw)
    assert (await client.get("/x")).status_code == status
    assert gw.runtime is not None
    (entry,) = gw.runtime.recent.since()
    assert entry.status == status
    assert entry.calls[0].ok is False
