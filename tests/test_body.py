"""Upstream bodies: decoded and capped chunk by chunk, bombs stopped before they inflate."""

from __future__ import annotations

import gzip
import zlib

import pytest

from gateway.body import BodyTooLarge, BodyUndecodable, CappedBody


def _feed(encoding: str, data: bytes, limit: int, chunk: int = 1024) -> bytes:
    body = CappedBody(encoding, limit)
    for i in range(0, len(data), chunk):
        body.feed(data[i : i + chunk])
    return body.finish()


@pytest.mark.parametrize("encoding", ["", "identity", "IDENTITY "])
def test_plain_body_passes_through(encoding: str) -> None:
    assert _feed(encoding, b'{"a": 1}' * 100, 10_000) == b'{"a": 1}' * 100


def test_plain_body_over_the_cap_is_refused() -> None:
    with pytest.raises(BodyTooLarge):
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
    with pytest.raises(BodyTooLarge):
        body.feed(bomb)  # one chunk: decompression itself is bounded by the cap
    assert body._size <= 1_000_001


def test_corrupt_gzip_is_undecodable() -> None:
    with pytest.raises(BodyUndecodable):
        _feed("gzip", b"\x1f\x8b\x08\x00garbage-not-gzip" * 4, 10_000)


def test_unknown_encoding_is_undecodable() -> None:
    with pytest.raises(BodyUndecodable, match="unsupported content-encoding 'br'"):
        CappedBody("br", 1000)
