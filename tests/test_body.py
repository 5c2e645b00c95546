"""Upstream bodies: decoded and capped chunk by chunk, bombs stopped before they inflate."""

from __future__ import annotations

import gzip
import itertools
import zlib

import pytest

from gateway.body import SLICE_BYTES, CappedBody, _BodyTooLarge, _BodyUndecodable
from gateway.budget import MemoryBudget, _BudgetExhausted


def _feed(encoding: str, data: bytes, limit: int, chunk: int = 1024) -> bytes:
    body = CappedBody(encoding, limit)
    for i in range(0, len(data), chunk):
        body.feed(data[i : i + chunk])
    return body.finish()


@pytest.mark.parametrize("encoding", ["", "identity", "IDENTITY "])
def test_plain_body_passes_through(encoding: str) -> None:
    assert _feed(encoding, b'{"a": 1}' * 100, 10_000) == b'{"a": 1}' * 100


def test_plain_body_over_the_cap_is_refused() -> None:
    with pytest.raises(_BodyTooLarge):
        _feed("", b"x" * 1001, 1000)


def test_body_exactly_at_the_cap_is_accepted() -> None:
    assert len(_feed("", b"x" * 1000, 1000)) == 1000


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip"])
def test_gzip_is_decoded(encoding: str) -> None:
    raw = b'{"items": [1, 2, 3]}' * 500
    assert _feed(encoding, gzip.compress(raw), 100_000, chunk=97) == raw


def test_deflate_with_and_without_zlib_header_is_decoded() -> None:
    raw = b"hello deflate " * 300
    assert _feed("deflate", zlib.compress(raw), 100_000) == raw
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = raw_deflate.compress(raw) + raw_deflate.flush()
    assert _feed("deflate", data, 100_000) == raw


def test_gzip_bomb_stops_at_the_cap_without_inflating() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB that would inflate to 50 MB
    body = CappedBody("gzip", 1_000_000)
    with pytest.raises(_BodyTooLarge):
        body.feed(bomb)  # one chunk: decompression itself is bounded by the cap
    assert body._size <= 1_000_001


def test_corrupt_gzip_is_undecodable() -> None:
    with pytest.raises(_BodyUndecodable):
        _feed("gzip", b"\x1f\x8b\x08\x00garbage-not-gzip" * 4, 10_000)


def test_unknown_encoding_is_undecodable() -> None:
    with pytest.raises(_BodyUndecodable, match="unsupported content-encoding 'br'"):
        CappedBody("br", 1000)


def _bomb_chunk(decoded: int = 50_000_000, size: int = 65536) -> bytes:
    return gzip.compress(b"\0" * decoded)[:size]


def test_decompression_yields_one_slice_at_a_time() -> None:
    body = CappedBody("gzip", 10_000_000)
    pending = body.push(_bomb_chunk(decoded=8_000_000))
    sizes = [0, body.size]
    while pending:
        pending = body.more()
        sizes.append(body.size)
    steps = [b - a for a, b in itertools.pairwise(sizes)]
    assert sum(steps) == 8_000_000
    assert len(steps) > 10
    assert max(steps) <= SLICE_BYTES  # no single zlib call inflates more than a slice


def test_slices_stop_at_the_cap() -> None:
    body = CappedBody("gzip", 1_000_000)
    with pytest.raises(_BodyTooLarge):
        body.feed(_bomb_chunk())  # push, then more() until refused
    assert body.size <= 1_000_000
    assert body.value == b""  # the holder let go of what it had decoded


def test_decoded_bytes_are_taken_from_the_budget() -> None:
    budget = MemoryBudget(10_000_000)
    lease = budget.lease()
    raw = b'{"items": [1, 2, 3]}' * 5000
    body = CappedBody("gzip", 1_000_000, lease)
    body.feed(gzip.compress(raw))
    assert body.finish() == raw
    assert lease.size == budget.held == len(raw)
    assert body.take() == raw
    assert body.value == b""


def test_a_body_past_the_budget_is_refused_and_emptied() -> None:
    budget = MemoryBudget(100_000)
    budget.lease().take(60_000)  # another call in flight
    body = CappedBody("", 1_000_000, budget.lease())
    body.feed(b"x" * 30_000)
    with pytest.raises(_BudgetExhausted):
        body.feed(b"x" * 30_000)
    assert (budget.held, body.value) == (90_000, b"")


@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_body_exactly_at_the_cap_after_slices_is_accepted(encoding: str) -> None:
    raw = b"y" * (3 * SLICE_BYTES)
    data = gzip.compress(raw) if encoding else raw
    assert _feed(encoding, data, len(raw), chunk=65536) == raw


def test_truncated_compressed_data_is_undecodable_and_empties_the_body() -> None:
    good = gzip.compress(b",".join(str(i * 7919).encode() for i in range(100_000)))
    body = CappedBody("gzip", 10_000_000)
    body.feed(good[:20_000])
    assert body.size > 0
    with pytest.raises(_BodyUndecodable, match="ends early"):
        body.finish()
    assert body.value == b""


def test_a_declared_size_is_taken_from_the_budget_at_once() -> None:
    budget = MemoryBudget(100_000)
    body = CappedBody("", 1_000_000, budget.lease())
    body.expect(60_000)
    assert budget.held == 60_000
    body.feed(b"x" * 50_000)
    assert budget.held == 60_000  # paid for already
    body.feed(b"x" * 20_000)  # more than declared: the rest is taken as it comes
    assert budget.held == 70_000
    with pytest.raises(_BudgetExhausted):
        CappedBody("", 1_000_000, budget.lease()).expect(40_000)  # refused before a byte
