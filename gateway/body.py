"""Upstream bodies decoded and capped chunk by chunk (pure).

The cap counts decoded bytes, and decompression itself is bounded twice: no
call to zlib produces more than `SLICE_BYTES` (so the caller can yield to the
event loop between slices: a bomb never blocks it for more than a slice's
worth of CPU), nor more than what is left of the cap (so a gzip bomb costs at
most `limit` bytes of memory, never the size it would inflate to). Every
decoded byte is also taken from the process's memory budget (budget.py), all
of them up front when the body declared its length (`expect`).

A `CappedBody` is also the one holder of the body's bytes while the call
lasts: callers pass the holder around, not the bytes, and `discard` it when
the call fails, so no exception, traceback or frame kept alive afterwards can
keep the buffer alive with it.
"""

from __future__ import annotations

import zlib

from .budget import Lease

# The most one decompress call may produce: 0.2-1 ms of CPU, then the loop runs again.
SLICE_BYTES = 128 * 1024


class _BodyTooLarge(Exception):
    """The decoded body passed the cap."""


class _BodyUndecodable(Exception):
    """The body's content-encoding is unknown, or the compressed data is corrupt."""


class CappedBody:
    """Collects a body's raw chunks, decoding `gzip`/`deflate`, never past `limit` bytes.

    `push(chunk)` decodes the first slice of a chunk and says whether more of it is left,
    `more()` decodes the next slice (the caller yields to its event loop in between);
    `feed(chunk)` does both at once. `finish()` joins the body, `take()` hands it over.
    Any failure empties the holder before it is raised.
    """

    __slots__ = ("_chunks", "_decoder", "_deflate_raw_tried", "_frame", "_frame_above",
                 "_lease", "_limit", "_pending", "_prepaid", "_size", "framed")

    def __init__(self, content_encoding: str, limit: int, lease: Lease | None = None,
                 frame: tuple[bytes, bytes] = (b"", b""), frame_above: int = 0) -> None:
        # Joined around a body of more than `frame_above` bytes by `finish` (reader.py).
        self._frame = frame
        self._frame_above = frame_above
        self.framed = False  # whether `value` holds the frame around the body
        self._limit = limit
        self._lease = lease
        self._size = 0
        self._prepaid = 0  # taken from the lease ahead of the bytes (a declared length)
        self._chunks: list[bytes] = []
        self._pending = b""  # compressed input zlib has not consumed yet
        self._deflate_raw_tried = False
        encoding = content_encoding.strip().lower()
        if encoding in ("", "identity"):
            self._decoder = None
        elif encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise _BodyUndecodable(f"unsupported content-encoding '{encoding[:40]}'")

    @property
    def size(self) -> int:
        """Decoded bytes held."""
        return self._size

    @property
    def compressed(self) -> bool:
        return self._decoder is not None

    def expect(self, size: int) -> None:
        """The body declared its decoded size: take all of it from the budget now.

        A body that cannot fit then fails before a byte is read, and one that fits is
        never refused halfway by calls that started after it.
        """
        if self._lease is not None and size > self._prepaid:
            self._lease.take(size - self._prepaid)
            self._prepaid = size

    def feed(self, chunk: bytes) -> None:
        """Take a raw chunk and decode all of it (slice by slice, without yielding)."""
        pending = self.push(chunk)
        while pending:
            pending = self.more()

    def push(self, chunk: bytes) -> bool:
        """Take a raw chunk; True if part of it is still to decode (call `more` until False)."""
        if self._decoder is None:
            self._guarded_add(chunk)
            return False
        self._pending = chunk
        return self.more()

    def more(self) -> bool:
        """Decode one more slice of the chunk fed last; True while some is still left."""
        try:
            self._step()
        except BaseException:
            self.discard()
            raise
        return bool(self._pending)

    def finish(self) -> bytes:
        """The body is complete: flush the decoder, join the chunks into one, return it."""
        try:
            while self._pending:
                self._step()
            if self._decoder is not None:
                try:
                    tail = self._decoder.flush()  # input all consumed: at most a few bytes
                except zlib.error as exc:
                    raise _BodyUndecodable(str(exc)) from exc
                self._add(tail)
                if not self._decoder.eof:
                    raise _BodyUndecodable("compressed data ends early")
        except BaseException:
            self.discard()
            raise
        self._decoder = None
        if (self._frame[0] or self._frame[1]) and self._size > self._frame_above:
            # The one join, with the frame: no copy of the body but this one.
            self._chunks = [b"".join((self._frame[0], *self._chunks, self._frame[1]))]
            self.framed = True
        elif len(self._chunks) > 1:
            # One join at a time in the process (no await here): the copy is transient.
            self._chunks = [b"".join(self._chunks)]
        return self.value

    @property
    def value(self) -> bytes:
        """The joined body (after `finish`; inside its frame if framed); empty once discarded."""
        return self._chunks[0] if self._chunks else b""

    def take(self) -> bytes:
        """Hand the body over, without its frame (a copy then); the holder is empty afterwards."""
        value = self.value
        self._chunks = []
        if self.framed and value:
            value = value[len(self._frame[0]):len(value) - len(self._frame[1])]
        self.framed = False
        return value

    def discard(self) -> None:
        """Let go of every byte held now (the budget lease is the caller's to release)."""
        self._chunks = []
        self.framed = False
        self._pending = b""
        self._decoder = None

    def _step(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        # One byte more than allowed tells "too large"; never more than a slice at once.
        most = min(SLICE_BYTES, self._limit - self._size + 1)
        data = self._pending
        try:
            out = decoder.decompress(data, most)
        except zlib.error as exc:
            out = self._retry_raw_deflate(data, most, exc)
        self._pending = b"" if self._decoder is None else self._decoder.unconsumed_tail
        self._add(out)

    def _retry_raw_deflate(self, chunk: bytes, most: int, exc: zlib.error) -> bytes:
        # "deflate" is often sent without its zlib header; retry once as raw deflate.
        if self._size or self._deflate_raw_tried or self._decoder is None:
            raise _BodyUndecodable(str(exc)) from exc
        self._deflate_raw_tried = True
        self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return self._decoder.decompress(chunk, most)
        except zlib.error as again:
            raise _BodyUndecodable(str(again)) from again

    def _guarded_add(self, data: bytes) -> None:
        try:
            self._add(data)
        except BaseException:
            self.discard()
            raise

    def _add(self, data: bytes) -> None:
        if not data:
            return
        size = self._size + len(data)
        if size > self._limit:
            raise _BodyTooLarge
        if self._lease is not None:
            unpaid = len(data) - self._prepaid
            if unpaid > 0:
                self._lease.take(unpaid)  # _BudgetExhausted when the process is at its budget
            self._prepaid = max(0, -unpaid)
        self._size = size
        self._chunks.append(data)
