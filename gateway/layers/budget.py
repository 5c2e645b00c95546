"""A reply's bytes on the process's memory budget, from their first chunk until parsed."""

from __future__ import annotations

from ..budget import MemoryBudget
from ..pipeline import Call, Next, Reply
from ..reader import BodyReader


class BodyLayer:
    """Each attempt takes a lease; the wire reads into `call.received` on it; parsed here.

    Only `call.received` holds the bytes, emptied here when the attempt fails, so
    neither the error nor the frames its traceback keeps can keep the buffer alive.
    The pool slot below is free again before a big body is parsed off the loop.
    """

    __slots__ = ("budget", "reader")

    def __init__(self, budget: MemoryBudget, reader: BodyReader) -> None:
        self.budget = budget
        self.reader = reader

    async def __call__(self, call: Call, next: Next) -> Reply:
        lease = call.lease = self.budget.lease()
        try:
            reply = await next(call)
            received = call.received
            assert received is not None
            reply.data, reply.encoded = await self.reader.parse_held(
                received, reply.status, lease)  # a thread parse keeps it if we are cancelled
            if call.cacheable:  # only the cache layers keep the bytes (take() copies them)
                call.raw = received.take()
        finally:
            if call.received is not None:
                call.received.discard()
                call.received = None
            call.lease = None
            lease.release()
        return reply
