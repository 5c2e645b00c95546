"""The way in: every incoming message becomes `(target, ctx)` here, or one refusal.

Four entry points bring messages: an HTTP request (`app.py`), a `/ws`
handshake and each of its messages (`stream.py`), the dashboard's run API
(`dashboard.py`) and a job's replay (`jobs/runner.py`). Each describes its
message as a `Door` and calls `Ingress.admit`, which, in this order (SPEC 9):

0. framing guard: `guard.FramingGuard`, on the raw ASGI scope before Quart
   reads a byte (it must close the connection); the messages inside a socket,
   a run or a job came through a framed request already;
1. routes the message (404/405 raise here; the HTTP entry point adds `Allow`);
2. runs `CHECKS` in order: origin, then (issue 15) authentication, then rate
   limits; the first that refuses ends the message;
3. reads and checks the body and the request values: `RequestContext`.

Anything refused is a `_Refused` (a `RequestError`): the HTTP entry point
answers `Ingress.refusal(door, error)` (the envelope, `result.refusal`),
`/ws` an `error` message, the run API its JSON error, a job its failed
outcome. A socket's handshake (`Ingress.handshake`) runs the same checks
with no target.

Adding a check (authentication, a rate limit): a class of the `Check`
shape, `async def __call__(self, door) -> Refusal | None`, that returns a
`Refusal` (status, one line, any headers such as `WWW-Authenticate` or
`Retry-After`) or None; its state is built from the config in `__init__`.
Then one line in `checks()`, in its place in the order. What it learns
(who is calling) goes in `door.extras`, which becomes `ctx.extras`; what it
holds for the message's lifetime is released through `door.on_close`, which
the entry point runs (`door.close()`) once the message is answered.

Authentication (`auth/check.py`) and the limits (`limits/check.py`) are the
checks of SPEC 9; they read their state from the runtime (the JWKS cache, the
counters), so they refuse with 503 while the gateway is not serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from . import guard
from .auth.check import AuthCheck
from .config import STRATEGIES
from .context import HeaderMap, RequestContext
from .door import HANDSHAKE, HTTP, JOB, RUN, SOCKET, Door, Refusal
from .errors import RequestError
from .limits.check import LimitCheck
from .origin import OriginPolicy
from .plan import Plan
from .result import Result, refusal, request_id, strategy_of
from .routing import Target
from .template import Inputs

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["HANDSHAKE", "HTTP", "JOB", "RUN", "SOCKET", "Admitted", "Check", "Door", "Ingress",
           "OriginCheck", "Refusal", "checks", "wants_body"]

class _Refused(RequestError):
    """The ingress turned a message away; carries the check's headers."""

    def __init__(self, message: str, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, status)
        self.headers = dict(headers or {})


class Check(Protocol):
    """One step of the way in; returns a `Refusal` to end the message there."""

    async def __call__(self, door: Door) -> Refusal | None: ...


class Admitted(NamedTuple):
    target: Target
    ctx: RequestContext
    body: bytes  # as it arrived (a job keeps it)


class OriginCheck:
    """A `/ws` handshake from a browser origin the policy refuses: 403."""

    def __init__(self, origins: Callable[[], OriginPolicy]) -> None:
        self._origins = origins  # the current config's: a reload may change the list

    async def __call__(self, door: Door) -> Refusal | None:
        if door.kind != HANDSHAKE:  # HTTP's CORS is the browser's to enforce
            return None
        origin = door.headers.get("origin")
        if origin is not None and not self._origins().allows_socket(origin, door.headers):
            return Refusal(403, "origin not allowed")
        return None


def checks(gw: Gateway) -> tuple[Check, ...]:
    """The checks every message meets, in the order SPEC 9 gives them."""
    return (
        OriginCheck(lambda: gw.origins),
        AuthCheck(lambda: gw.config.auth, gw.current_runtime),
        LimitCheck(lambda: gw.config.limits, gw.current_runtime),
    )


class Ingress:
    """Routes, checks and parses incoming messages for one gateway."""

    def __init__(self, gw: Gateway, chain: tuple[Check, ...] | None = None) -> None:
        self._gw = gw
        self.checks = checks(gw) if chain is None else chain

    async def admit(self, door: Door) -> Admitted:
        """The message's target and context; raises `_Refused`/`RequestError` if refused."""
        gw = self._gw
        if door.target is None:
            door.target, door.params = gw.router.match(door.path, door.method)
        target = door.target
        try:
            await self._check(door)
            body = door.body
            if door.read is not None:
                body = await door.read(target) if wants_body(target) else b""
            ctx = self.context(target, door.params, method=door.method, path=door.path,
                               query=door.query, headers=door.headers, body=body,
                               started=door.started, extras=door.extras)
        except BaseException:
            door.close()  # refused (or cancelled) here: the entry point never runs it
            raise
        return Admitted(target, ctx, body)

    async def handshake(self, door: Door) -> None:
        """A socket's handshake through the same checks (no target yet)."""
        await self._check(door)

    def refusal(self, door: Door, error: RequestError) -> Result:
        """`error` as the envelope, for the entry points that answer with one."""
        extra = error.headers if isinstance(error, _Refused) else None
        return refusal(error.status, str(error), request_id=request_id(door.headers),
                       strategy=strategy_of(door.headers, self._gw.config.gateway.strategy),
                       started=door.started, extra=extra)

    def context(self, target: Target, params: Mapping[str, Any], *, method: str, path: str,
                query: Mapping[str, str], headers: HeaderMap, body: bytes,
                started: float | None = None,
                extras: Mapping[str, Any] | None = None) -> RequestContext:
        """Check and parse what a request brings; raises `RequestError` for bad input.

        `extras` (what the checks learnt: the identity, the client key) is in the context
        before the request values are checked, so a missing `{jwt.CLAIM}` is a 400 here.
        """
        started = time.perf_counter() if started is None else started
        strategy = self._strategy(target, headers.get("x-gateway-strategy"))
        parsed = _parse_json(body) if body and wants_body(target) else None
        ctx = RequestContext(request_id=request_id(headers), method=method, path=path,
                             params=params, query=query, headers=headers, body=parsed,
                             strategy=strategy, started=started)
        if extras:
            ctx.extras.update(extras)
        if isinstance(target, Plan):
            target.check_request(Inputs(params, query, headers, parsed, {},
                                        ctx.identity.claims, ctx.client))
        return ctx

    async def _check(self, door: Door) -> None:
        for check in self.checks:
            refused = await check(door)
            if refused is not None:
                raise _Refused(refused.message, refused.status, refused.headers)

    def _strategy(self, target: Target, header: str | None) -> str:
        if header is not None:
            value = header.strip().lower()
            if value not in STRATEGIES:
                raise RequestError("X-Gateway-Strategy must be 'parallel' or 'sequential'")
            return value
        return target.strategy or self._gw.config.gateway.strategy


def wants_body(target: Target) -> bool:
    return target.needs_body if isinstance(target, Plan) else True


def _parse_json(body: bytes) -> Any:
    try:
        return guard.bounded_body(orjson.loads(body), body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {str(exc).splitlines()[0]}"
                           ) from None
