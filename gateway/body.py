"""Upstream bodies decoded and capped chunk by chunk (pure).

The cap counts decoded bytes, and decompression itself is bounded: each
compressed chunk may only produce what is left of the budget, so a gzip bomb
costs at most `limit` bytes of memory, never the size it would inflate to.
"""

from __future__ import annotations

import zlib


class BodyTooLarge(Exception):
    """The decoded body passed the cap."""


class BodyUndecodable(Exception):
    """The body's content-encoding is unknown, or the compressed data is corrupt."""


class CappedBody:
    """Collects a body's raw chunks, decoding `gzip`/`deflate`, never past `limit` bytes."""

    __slots__ = ("_chunks", "_decoder", "_deflate_raw_tried", "_limit", "_size")

    def __init__(self, content_encoding: str, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self._deflate_raw_tried = False
        encoding = content_encoding.strip().lower()
        if encoding in ("", "identity"):
            self._decoder = None
        elif encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise BodyUndecodable(f"unsupported content-encoding '{encoding[:40]}'")

    def feed(self, chunk: bytes) -> None:
        if self._decoder is None:
            self._add(chunk)
            return
        room = self._limit - self._size + 1  # one byte more than allowed tells "too large"
        try:
            out = self._decoder.decompress(chunk, room)
        except zlib.error as exc:
            out = self._retry_raw_deflate(chunk, room, exc)
        if self._decoder.unconsumed_tail:
            raise BodyTooLarge
        self._add(out)

    def finish(self) -> bytes:
        if self._decoder is not None:
            try:
                self._add(self._decoder.flush())
            except zlib.error as exc:
                raise BodyUndecodable(str(exc)) from exc
        return b"".join(self._chunks)

    def _retry_raw_deflate(self, chunk: bytes, room: int, exc: zlib.error) -> bytes:
        # "deflate" is often sent without its zlib header; retry once as raw deflate.
        if self._size or self._deflate_raw_tried or self._decoder is None:
            raise BodyUndecodable(str(exc)) from exc
        self._deflate_raw_tried = True
        self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return self._decoder.decompress(chunk, room)
        except zlib.error as again:
            raise BodyUndecodable(str(again)) from again

    def _add(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self._limit:
            raise BodyTooLarge
        self._chunks.append(data)
