"""The circuit breaker: closed -> open -> half-open -> closed, and what callers see meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config
from webserver import Request, Response, json_response

from gateway import Gateway
from gateway.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, counts_as_failure
from gateway.config import Breaker
from gateway.envelope import failure_status
from gateway.errors import CircuitOpen, UpstreamStatus, UpstreamTimeout
from gateway.fan import Fan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, Clock, list[str]]:
    clock, changes = Clock(), list[str]()
    cb = CircuitBreaker("up", Breaker(failures, reset), clock=clock, on_change=changes.append)
    return cb, clock, changes


class Switch:
    """An upstream handler that fails with 503 until `healthy` is set."""

    def __init__(self) -> None:
        self.healthy = False

    async def __call__(self, request: Request) -> Response:
        if self.healthy:
            return json_response({"ok": True})
        return json_response({"error": "down"}, 503)


# -- the state machine (pure, with a fake clock) ----------------------------------------------


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    cb, _, changes = breaker(failures=3)
    for _ in range(2):
        cb.failure(cb.admit())
    cb.success(cb.admit())
    for _ in range(2):
        cb.failure(cb.admit())
    assert cb.state == CLOSED
    cb.failure(cb.admit())
    assert cb.state == OPEN
    assert changes == [OPEN]


def test_open_fails_fast_with_the_seconds_until_half_open() -> None:
    cb, clock, _ = breaker(failures=1, reset=10.0)
    cb.failure(cb.admit())
    clock.now += 4.0
    with pytest.raises(CircuitOpen) as caught:
        cb.admit()
    assert caught.value.retry_after == pytest.approx(6.0)
    assert caught.value.attempts == 0
    assert cb.retry_after() == pytest.approx(6.0)


def test_half_open_admits_one_trial_whose_success_closes_it() -> None:
    cb, clock, changes = breaker(failures=1, reset=10.0)
    cb.failure(cb.admit())
    clock.now += 10.0
    assert cb.state == HALF_OPEN
    trial = cb.admit()
    assert trial is True
    with pytest.raises(CircuitOpen) as caught:
        cb.admit()  # only one trial at a time
    assert failure_status(caught.value) == (503, {"Retry-After": "1"})
    cb.success(trial)
    assert cb.state == CLOSED
    assert cb.admit() is False
    assert changes == [OPEN, HALF_OPEN, CLOSED]


def test_a_failed_trial_opens_it_again_for_another_reset() -> None:
    cb, clock, changes = breaker(failures=1, reset=10.0)
    cb.failure(cb.admit())
    clock.now += 10.0
    cb.failure(cb.admit())
    assert cb.state == OPEN
    assert cb.retry_after() == pytest.approx(10.0)
    assert changes == [OPEN, HALF_OPEN, OPEN]


def test_a_canceled_trial_frees_the_slot_without_a_verdict() -> None:
    cb, clock, _ = breaker(failures=1, reset=1.0)
    cb.failure(cb.admit())
    clock.now += 1.0
    cb.cancel(cb.admit())
    assert cb.state == HALF_OPEN
    assert cb.admit() is True


def test_it_names_the_callers_whose_failures_opened_it() -> None:
    cb, _, _ = breaker(failures=3)
    cb.failure(cb.admit(), "optional call 'recs' of GET /shop")
    cb.failure(cb.admit(), "optional call 'recs' of GET /shop")
    cb.failure(cb.admit(), "call 'item' of GET /shop")
    assert cb.opened_by == ("optional call 'recs' of GET /shop", "call 'item' of GET /shop")
    with pytest.raises(CircuitOpen) as info:
        cb.admit()
    assert str(info.value) == (
        "circuit breaker of upstream 'up' is open (opened by failures of optional call 'recs' "
        "of GET /shop, call 'item' of GET /shop)")


def test_a_success_forgets_the_callers_of_earlier_failures() -> None:
    cb, _, _ = breaker(failures=2)
    cb.failure(cb.admit(), "call 'early'")
    cb.success(cb.admit())
    cb.failure(cb.admit(), "call 'a'")
    cb.failure(cb.admit())  # a caller without a name is counted, not named
    assert cb.opened_by == ("call 'a'",)


def test_the_named_callers_are_bounded() -> None:
    cb, _, _ = breaker(failures=50)
    for n in range(49):
        cb.failure(cb.admit(), f"call 'c{n}'")
    cb.failure(cb.admit(), "call 'c0'")
    assert cb.opened_by == ("call 'c0'", "call 'c1'", "call 'c2'", "other calls")


def test_a_failed_trial_names_the_trial_call() -> None:
    cb, clock, _ = breaker(failures=1, reset=1.0)
    cb.failure(cb.admit(), "call 'first'")
    clock.now += 1.0
    cb.failure(cb.admit(), "call 'trial'")
    assert cb.opened_by == ("call 'trial'",)
    assert "opened by failures of call 'trial'" in cb.open_message()


def test_without_names_the_message_is_the_plain_line() -> None:
    cb, _, _ = breaker(failures=1)
    cb.failure(cb.admit())
    assert cb.open_message() == "circuit breaker of upstream 'up' is open"


def test_upstream_4xx_is_not_a_failure() -> None:
    assert not counts_as_failure(UpstreamStatus("x", 404))
    assert counts_as_failure(UpstreamStatus("x", 500))
    assert counts_as_failure(UpstreamTimeout("x"))


# -- end to end -------------------------------------------------------------------------------


def config(server: Any, *, optional: bool = False, reset: float = 0.3) -> dict[str, Any]:
    flaky_call = call("c", "flaky", "/x", optional=optional, **({"default": {"d": 1}}
                                                                  if optional else {}))
    return make_config({"flaky": {"url": server, "breaker": {"failures": 2, "reset": reset}}},
                       endpoint("/r", flaky_call))


async def test_closed_open_half_open_closed_through_the_gateway(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    switch = Switch()
    server = await upstream(switch)
    client = await gateway_client(config(server))
    for _ in range(2):
        assert (await client.get("/r")).status_code == 502
    assert server.requests == 2

    response = await client.get("/r")  # open: fails fast, the upstream is not touched
    assert response.status_code == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 1
    body = await response.get_json()
    assert "circuit breaker" in body["error"]
    assert body["meta"]["calls"]["c"]["attempts"] == 0
    assert server.requests == 2

    await asyncio.sleep(0.35)  # half-open: the next call is the trial
    switch.healthy = True
    assert (await client.get("/r")).status_code == 200
    assert server.requests == 3
    assert (await client.get("/r")).status_code == 200  # closed again
    assert server.requests == 4


async def test_a_failed_trial_reopens_it(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Switch())
    client = await gateway_client(config(server, reset=0.2))
    for _ in range(2):
        await client.get("/r")
    await asyncio.sleep(0.25)
    assert (await client.get("/r")).status_code == 502  # the trial, failed
    assert server.requests == 3
    assert (await client.get("/r")).status_code == 503  # open again
    assert server.requests == 3


async def test_optional_call_gets_its_default_without_touching_an_open_upstream(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Switch())
    client = await gateway_client(config(server, optional=True, reset=30.0))
    for _ in range(2):
        assert (await client.get("/r")).status_code == 200
    response = await client.get("/r")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["data"] == {"c": {"d": 1}}
    assert body["meta"]["complete"] is False
    record = body["meta"]["calls"]["c"]
    assert (record["ok"], record["attempts"]) == (False, 0)
    assert "circuit breaker" in record["error"]
    assert server.requests == 2


async def test_code_views_share_the_breaker(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Switch())
    gw = Gateway(make_config(
        {"flaky": {"url": server, "breaker": {"failures": 1, "reset": 30.0}}}))

    @gw.aggregate("/view")
    async def view(fan: Fan) -> Any:
        return await fan.get("flaky", "/x")

    client = await gateway_client(gw)
    assert (await client.get("/view")).status_code == 502
    response = await client.get("/view")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 29
    assert server.requests == 1


# -- the breaker belongs to the upstream: optional calls' failures count too --------------------


class Catalog:
    """`/items/N` answers; `/recs` fails with 500."""

    async def __call__(self, request: Request) -> Response:
        if request.path.startswith("/items/"):
            return json_response({"id": int(request.path.rsplit("/", 1)[1])})
        return json_response({"error": "recs down"}, 500)


def shop(catalog: Any, *, extras_upstream: str = "catalog") -> dict[str, Any]:
    upstreams: dict[str, Any] = {
        "catalog": {"url": catalog, "cache_ttl": 30, "breaker": {"failures": 2, "reset": 30}}}
    if extras_upstream != "catalog":  # the same service under a second name: its own breaker
        upstreams[extras_upstream] = {"url": catalog, "breaker": {"failures": 2, "reset": 30}}
    # Sequential: the item's success always comes before the recs failure it would reset.
    return make_config(upstreams, endpoint(
        "/shop/<int:item_id>",
        call("item", "catalog", "/items/{item_id}"),
        call("recs", extras_upstream, "/recs", optional=True, default=[]),
        strategy="sequential"))


async def test_optional_failures_open_the_breaker_a_required_call_needs_and_the_503_says_so(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Catalog())
    client = await gateway_client(shop(server))
    for _ in range(2):  # the item is then a cache hit: only recs reaches the upstream
        response = await client.get("/shop/1")
        assert response.status_code == 200
        assert (await response.get_json())["meta"]["complete"] is False
    assert server.requests == 3

    response = await client.get("/shop/2")  # a cache miss meets the open breaker
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    body = await response.get_json()
    assert body["error"] == ("circuit breaker of upstream 'catalog' is open (opened by failures "
                             "of optional call 'recs' of GET /shop/<int:item_id>)")
    assert server.requests == 3

    ready = await client.get("/readyz")
    assert ready.status_code == 503
    state = (await ready.get_json())["upstreams"]["catalog"]
    assert state["state"] == "open"
    assert state["opened_by"] == ["optional call 'recs' of GET /shop/<int:item_id>"]

    response = await client.get("/shop/1")  # a fresh cache hit is still served
    assert response.status_code == 200
    body = await response.get_json()
    assert body["data"] == {"item": {"id": 1}, "recs": []}
    assert body["meta"]["calls"]["item"]["cached"] is True


async def test_optional_calls_under_their_own_upstream_name_leave_the_required_one_alone(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Catalog())
    client = await gateway_client(shop(server, extras_upstream="catalog_extras"))
    for _ in range(3):
        assert (await client.get("/shop/1")).status_code == 200
    response = await client.get("/shop/2")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["data"] == {"item": {"id": 2}, "recs": []}
    assert "circuit breaker of upstream 'catalog_extras' is open" in \
        body["meta"]["calls"]["recs"]["error"]
    ready = await client.get("/readyz")
    assert ready.status_code == 200  # catalog_extras only serves optional calls
    upstreams = (await ready.get_json())["upstreams"]
    assert (upstreams["catalog"]["state"], upstreams["catalog_extras"]["state"]) == \
        ("closed", "open")
