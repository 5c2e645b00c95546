"""Retries: which failures, how many attempts, backoff bounds, the per-upstream budget."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config
from webserver import Handler, Request, Response, json_response

from gateway import Fan, Gateway
from gateway.context import counting
from gateway.errors import (
    CallError,
    UpstreamBadReply,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.layers.retry import RetryLayer as Retrier
from gateway.retry import Backoff, RetryBudget, retryable


def statuses(*codes: int, delay: float = 0.0) -> Handler:
    """Answers with each status in turn, then the last one forever."""
    seen = 0

    async def handle(request: Request) -> Response:
        nonlocal seen
        code = codes[min(seen, len(codes) - 1)]
        seen += 1
        if delay:
            await asyncio.sleep(delay)
        return json_response({"n": seen}, code)

    return handle


def one_route(server: Any, method: str = "GET", **upstream: Any) -> dict[str, Any]:
    return make_config({"up": {"url": server, **upstream}},
                       endpoint("/r", call("c", "up", "/x", method=method), method=method))


# -- policy (pure) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "expected"), [
    (UpstreamStatus("x", 502), True),
    (UpstreamStatus("x", 503), True),
    (UpstreamStatus("x", 504), True),
    (UpstreamStatus("x", 500), False),
    (UpstreamStatus("x", 404), False),
    (UpstreamTimeout("x"), True),
    (UpstreamUnavailable("x"), True),
    (UpstreamBadReply("x", 200), False),
])
def test_only_failures_that_did_nothing_are_retryable(error: CallError, expected: bool) -> None:
    assert retryable(error) is expected


def test_backoff_is_full_jitter_within_the_exponential_cap() -> None:
    backoff = Backoff(base=0.1, cap=0.5)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)]:
        delays = [backoff.delay(retry) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jittered over the whole range, not a constant


def test_budget_allows_the_floor_then_a_fifth_of_recent_calls() -> None:
    budget = RetryBudget(ratio=0.2, window=10, minimum=3)
    assert [budget.try_spend(100.0) for _ in range(4)] == [True, True, True, False]
    for _ in range(10):
        budget.record_call(100.5)
    assert [budget.try_spend(101.0) for _ in range(3)] == [True, True, False]


def test_budget_forgets_what_left_the_window() -> None:
    budget = RetryBudget(ratio=0.2, window=10, minimum=1)
    assert budget.try_spend(50.0)
    assert not budget.try_spend(59.9)
    assert budget.try_spend(60.0)  # the retry spent at second 50 has left the window


# -- end to end -------------------------------------------------------------------------------


async def test_flaky_upstream_succeeds_on_a_retry_and_meta_counts_attempts(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(statuses(503, 502, 200))
    client = await gateway_client(one_route(server, retries=3))
    response = await client.get("/r")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["meta"]["calls"]["c"]["attempts"] == 3
    assert body["data"]["c"] == {"n": 3}
    assert server.requests == 3


async def test_attempts_are_reported_when_every_attempt_failed(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(statuses(503))
    client = await gateway_client(one_route(server, retries=2))
    response = await client.get("/r")
    assert response.status_code == 502
    record = (await response.get_json())["meta"]["calls"]["c"]
    assert (record["attempts"], record["status"]) == (3, 503)
    assert server.requests == 3


@pytest.mark.parametrize("code", [500, 404])
async def test_other_statuses_are_not_retried(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, code: int
) -> None:
    server = await upstream(statuses(code, 200))
    client = await gateway_client(one_route(server, retries=3))
    response = await client.get("/r")
    assert response.status_code == (502 if code == 500 else 404)
    assert server.requests == 1


async def test_post_is_never_retried(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(statuses(503, 200))
    client = await gateway_client(one_route(server, method="POST", retries=3))
    response = await client.post("/r")
    assert response.status_code == 502
    assert (await response.get_json())["meta"]["calls"]["c"]["attempts"] == 1
    assert server.requests == 1


async def test_connection_refused_is_retried(
    gateway_client: GatewayClientFactory,
) -> None:
    from support import free_port

    client = await gateway_client(one_route(f"http://127.0.0.1:{free_port()}", retries=2))
    response = await client.get("/r")
    assert response.status_code == 502
    assert (await response.get_json())["meta"]["calls"]["c"]["attempts"] == 3


async def test_a_hung_attempt_leaves_time_for_a_retry_within_the_timeout(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    hits = 0

    async def first_hangs(request: Request) -> Response:
        nonlocal hits
        hits += 1
        if hits == 1:
            await asyncio.sleep(5)
        return json_response({"hits": hits})

    server = await upstream(first_hangs)
    client = await gateway_client(one_route(server, retries=1, timeout=1.0))
    started = time.monotonic()
    response = await client.get("/r")
    assert time.monotonic() - started < 1.0  # the first attempt got half the timeout
    assert response.status_code == 200
    assert (await response.get_json())["meta"]["calls"]["c"]["attempts"] == 2


async def test_retries_stop_before_the_request_deadline(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(statuses(503))
    config = one_route(server, retries=50, timeout=5.0)
    config["gateway"] = {"deadline": 0.3}
    client = await gateway_client(config)
    started = time.monotonic()
    response = await client.get("/r")
    assert time.monotonic() - started < 1.0
    assert response.status_code == 502  # the real failure, not a deadline 504
    assert 1 < (await response.get_json())["meta"]["calls"]["c"]["attempts"] < 10


async def test_budget_caps_the_extra_load_on_a_failing_upstream_under_a_burst(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(statuses(503))
    client = await gateway_client(one_route(server, retries=3))
    burst = 60
    responses = await asyncio.gather(*(client.get("/r") for _ in range(burst)))
    assert all(r.status_code == 502 for r in responses)
    # Without a budget: 4 x 60 = 240 calls. With it: 60 + floor (10) + 20% of 60 (12).
    extra = server.requests - burst
    assert 0 < extra <= RetryBudget.minimum + RetryBudget.ratio * burst


# -- attempts of a call cut off in flight ---------------------------------------------------------


async def test_a_call_cut_by_the_deadline_counts_its_attempt(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    fast, slow = await upstream(statuses(200)), await upstream(statuses(200, delay=3.0))
    client = await gateway_client(make_config(
        {"fast": fast, "slow": slow},
        endpoint("/x", call("fast", "fast", "/"), call("slow", "slow", "/")),
        endpoint("/warm", call("fast", "fast", "/")), deadline=0.5))
    assert (await client.get("/warm")).status_code == 200  # a first request can be slow
    response = await client.get("/x")
    assert response.status_code == 504
    calls = (await response.get_json())["meta"]["calls"]
    assert (calls["slow"]["attempts"], calls["slow"]["ok"]) == (1, False)
    assert calls["slow"]["error"].startswith("canceled: deadline")
    assert calls["fast"]["attempts"] == 1
    assert slow.requests == 1


async def test_a_call_cut_by_a_failed_sibling_counts_every_attempt_it_started(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    failing = await upstream(statuses(500, delay=0.8))  # time for the others to be sent
    hung = await upstream(statuses(200, delay=3.0))
    seen = 0

    async def first_503_then_hang(request: Request) -> Response:
        nonlocal seen
        seen += 1
        if seen == 1:
            return json_response({}, 503)
        await asyncio.sleep(3.0)  # the retry hangs until it is cut off
        return json_response({})

    retrying = await upstream(first_503_then_hang)
    client = await gateway_client(make_config(
        {"failing": failing, "hung": hung, "retrying": {"url": retrying, "retries": 1}},
        endpoint("/x", call("failing", "failing", "/"), call("hung", "hung", "/"),
                 call("retrying", "retrying", "/"))))
    response = await client.get("/x")
    assert response.status_code == 502
    calls = (await response.get_json())["meta"]["calls"]
    assert calls["failing"]["attempts"] == 1
    assert (calls["hung"]["attempts"], calls["hung"]["error"]) == \
        (1, "canceled: required call 'failing' failed")
    assert calls["retrying"]["attempts"] == 2  # the 503, then the retry that was cut off
    assert retrying.requests == 2
    assert hung.requests == 1


async def test_a_code_view_call_cut_off_counts_its_attempt(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    failing = await upstream(statuses(500, delay=0.4))
    hung = await upstream(statuses(200, delay=3.0))
    gw = Gateway(make_config({"failing": failing, "hung": hung}))

    @gw.aggregate("/v")
    async def view(fan: Fan) -> Any:
        return await fan.gather(fan.get("failing", "/"), fan.get("hung", "/"))

    client = await gateway_client(gw)
    response = await client.get("/v")
    assert response.status_code == 502
    calls = (await response.get_json())["meta"]["calls"]
    assert (calls["hung"]["attempts"], calls["hung"]["error"]) == (1, "canceled")
    assert calls["failing"]["attempts"] == 1


async def test_the_retry_loop_counts_attempts_as_they_start() -> None:
    retrier = Retrier("up", 5.0, 2)
    retrier.backoff = Backoff(base=0.001)
    seen = 0
    retried = asyncio.Event()

    async def attempt() -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            raise UpstreamStatus("upstream 'up' answered 503", 503)
        retried.set()
        await asyncio.sleep(10)

    with counting("call 'c'") as tally:
        task = asyncio.create_task(retrier.run("GET", attempt))
        await retried.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (tally.label, tally.attempts) == ("call 'c'", 2)
