"""The circuit breaker around an upstream's attempts (`breaker`; breaker.py has the policy)."""

from __future__ import annotations

from ..breaker import CircuitBreaker, counts_as_failure
from ..context import current_call
from ..errors import CallError, MemoryBudgetExhausted
from ..pipeline import Call, Next, Reply


class BreakerLayer:
    """Refuses calls while the circuit is open; tells it how each call that ran ended.

    A call refused for the memory budget, or cancelled, says nothing about the
    upstream's health: its trial (if it was one) is given back.
    """

    __slots__ = ("breaker",)

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    async def __call__(self, call: Call, next: Next) -> Reply:
        breaker = self.breaker
        trial = breaker.admit()
        try:
            reply = await next(call)
        except CallError as error:
            if isinstance(error, MemoryBudgetExhausted):
                breaker.cancel(trial)
            elif counts_as_failure(error):
                caller = current_call()
                breaker.failure(trial, caller.label if caller is not None else None)
            else:
                breaker.success(trial)
            raise
        except BaseException:
            breaker.cancel(trial)
            raise
        breaker.success(trial)
        return reply
