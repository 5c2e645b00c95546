"""Client IP behind proxies, the RateLimit headers, rate and concurrency limits (memory, Redis)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from redis_support import running_redis

from gateway.limits import (
    MAX_CLIENTS,
    Concurrency,
    Rate,
    RateLimiter,
    Window,
    client_ip,
    headers,
    parse_networks,
    parse_rate,
    retry_after,
)

TRUSTED = parse_networks(["127.0.0.1/32", "10.0.0.0/8", "::1"])


def test_peer_is_the_client_when_it_is_not_trusted() -> None:
    assert client_ip("203.0.113.5", ["1.2.3.4"], TRUSTED) == "203.0.113.5"
    assert client_ip("203.0.113.5", ["1.2.3.4"], ()) == "203.0.113.5"


def test_trusted_peer_names_the_right_most_untrusted_forwarded_address() -> None:
    assert client_ip("127.0.0.1", ["198.51.100.7"], TRUSTED) == "198.51.100.7"
    # The client forged the first entry; the proxies appended the rest.
    assert client_ip("127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.2.3"], TRUSTED) == "198.51.100.7"
    assert client_ip("127.0.0.1", ["6.6.6.6", "198.51.100.7"], TRUSTED) == "198.51.100.7"


def test_forwarded_chain_of_only_trusted_hops_gives_the_left_most_of_them() -> None:
    assert client_ip("127.0.0.1", ["10.0.0.9, 10.0.0.8"], TRUSTED) == "10.0.0.9"
    assert client_ip("127.0.0.1", [], TRUSTED) == "127.0.0.1"


def test_unparsable_forwarded_entry_ends_the_walk() -> None:
    assert client_ip("127.0.0.1", ["6.6.6.6, garbage"], TRUSTED) == "127.0.0.1"
    assert client_ip("127.0.0.1", ["[2001:db8::1]:443"], TRUSTED) == "2001:db8::1"
    assert client_ip("127.0.0.1", ["198.51.100.7:5555"], TRUSTED) == "198.51.100.7"


def test_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    assert client_ip("::ffff:127.0.0.1", ["198.51.100.7"], TRUSTED) == "198.51.100.7"
    assert client_ip("::1", ["198.51.100.7"], TRUSTED) == "198.51.100.7"


def test_long_forwarded_header_is_read_only_from_the_right() -> None:
    chain = ", ".join(["10.0.0.1"] * 10_000)
    assert client_ip("127.0.0.1", [chain], TRUSTED) == "10.0.0.1"


def test_bad_trusted_proxy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'nope' is not an IP"):
        parse_networks(["nope"])
    assert parse_networks(["192.168.1.7/24"]) == (ipaddress.ip_network("192.168.1.0/24"),)


def test_ratelimit_headers_follow_the_draft_syntax() -> None:
    windows = [Window("default", 100, 60, 42, 17.2), Window("endpoint", 10, 1, 0, 0.4)]
    got = headers(windows, refused=True)
    assert got["RateLimit-Policy"] == '"default";q=100;w=60, "endpoint";q=10;w=1'
    assert got["RateLimit"] == '"default";r=42;t=18, "endpoint";r=0;t=1'
    assert got["Retry-After"] == "1"
    assert "Retry-After" not in headers(windows, refused=False)
    assert headers([], refused=False) == {}


def test_retry_after_waits_for_the_longest_exhausted_window() -> None:
    assert retry_after([Window("a", 5, 60, 0, 42.1), Window("b", 5, 1, 3, 0.5)]) == 43
    assert retry_after([Window("a", 5, 60, -1, 0.0)]) == 1


@pytest.mark.parametrize(("text", "rate"), [
    ("100/minute", Rate(100, 60)), ("5/second", Rate(5, 1)), (" 2 / hour ", Rate(2, 3600)),
])
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["100", "0/second", "10/day", "x/minute", "-1/second"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="N"):
        parse_rate(text)


def test_burst_shapes_the_window() -> None:
    item = Rate(100, 60, burst=20).item("t")
    assert (item.amount, item.get_expiry()) == (20, 12)
    item = Rate(5, 1, burst=1).item("t")
    assert (item.amount, item.get_expiry()) == (5, 1)


async def test_client_over_its_rate_is_refused_while_another_passes() -> None:
    limiter = RateLimiter()
    rate = Rate(3, 60)
    seen = [await limiter.hit("default", rate, "alice") for _ in range(4)]
    assert [w.remaining for w in seen if w] == [2, 1, 0, -1]
    other = await limiter.hit("default", rate, "bob")
    assert other is not None
    assert other.remaining == 2
    # An endpoint's own policy is its own bucket.
    assert (await limiter.hit("endpoint:/x", rate, "alice")) is not None
    refused = seen[-1]
    assert refused is not None
    assert 0 < refused.reset <= 120
    await limiter.close()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_memory_store_keeps_at_most_its_cap_of_clients() -> None:
    cap = 2_000
    limiter = RateLimiter(max_clients=cap)
    rate = Rate(10, 60)
    for i in range(cap + 500):
        await limiter.hit("default", rate, f"client-{i}")
    assert limiter.tracked == cap
    assert len(limiter.storage.storage) <= 2 * cap  # type: ignore[attr-defined]
    # The evicted (oldest) client starts afresh; a recent one keeps its count.
    first = await limiter.hit("default", rate, "client-0")
    recent = await limiter.hit("default", rate, f"client-{cap + 499}")
    assert first is not None
    assert recent is not None
    assert first.remaining == 9
    assert recent.remaining == 8
    await limiter.close()


async def test_memory_store_rss_stays_flat_past_its_cap() -> None:
    """A flood of distinct client keys (spoofed IPs) costs a bounded amount of memory."""
    cap = 5_000
    limiter = RateLimiter(max_clients=cap)
    rate = Rate(10, 3600)
    for i in range(cap):
        await limiter.hit("default", rate, f"10.0.{i // 256}.{i % 256}")
    at_cap = _rss_kib()
    for i in range(cap, cap * 10):
        await limiter.hit("default", rate, f"10.1.{i // 256}.{i % 256}")
    assert limiter.tracked == cap
    # 9x the cap in new keys: ~1 MiB more measured (33 MiB without the cap).
    assert _rss_kib() - at_cap < 8 * 1024
    assert cap <= MAX_CLIENTS
    await limiter.close()


def test_concurrency_counts_in_flight_per_client_and_forgets_idle_ones() -> None:
    slots = Concurrency(2)
    assert slots.acquire("a")
    assert slots.acquire("a")
    assert not slots.acquire("a")
    assert slots.acquire("b")
    assert slots.window("a").remaining == 0
    slots.release("a")
    assert slots.acquire("a")
    for client in ("a", "a", "b"):
        slots.release(client)
    assert slots.tracked == 0


async def test_redis_store_shares_the_limit_between_limiters(tmp_path: Path) -> None:
    async with running_redis(tmp_path) as redis:
        one, two = RateLimiter(redis.url), RateLimiter(redis.url)
        rate = Rate(4, 60)
        got = []
        for limiter in (one, two, one, two, one):
            window = await limiter.hit("default", rate, "carol")
            assert window is not None
            got.append(window.remaining)
        assert got == [3, 2, 1, 0, -1]
        await one.close()
        await two.close()


async def test_redis_down_fails_open_and_counts_the_error(tmp_path: Path) -> None:
    errors: list[int] = []
    async with running_redis(tmp_path) as redis:
        url = redis.url
    limiter = RateLimiter(url, on_store_error=lambda: errors.append(1))
    for _ in range(3):
        assert await limiter.hit("default", Rate(1, 60), "dave") is None
    assert len(errors) == 3
    await limiter.close()
