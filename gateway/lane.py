"""The lane: aggregate requests answered on raw ASGI, without Quart's per-request machinery.

For an aggregate endpoint (config or `@gw.aggregate`) the gateway uses none of what
Quart does per request: the router, the ingress, the runner and the envelope are its
own. Quart's request and app contexts, url adapter, hook walks and `Response` objects
still cost ~330 µs of CPU per request, a fifth of a 3-call fan-out
(BENCHMARKS.md, "The lane"). So a request this lane can answer exactly as
`Gateway._dispatch` would is answered here, and any other passes to Quart unchanged:

- not HTTP/1.x (HTTP/2 and 3 may send a body without `Content-Length`: waiting for
  its first message would hold a stream that Quart answers at once); HEAD or OPTIONS
  (Quart's automatic HEAD, CORS preflights, `Allow`); another method than the
  catch-all route's; a `root_path`;
- a body (`Content-Length` above 0, `Transfer-Encoding`, or a first `http.request`
  message that has bytes or more to come: Quart reads and caps it; the message is
  replayed to it) or a `Prefer` header (`respond-async`: jobs);
- a path our router does not serve (404, 405 with `Allow` and 400 are Quart's path);
- an app someone extended through Quart itself (a route, a request hook, an error
  handler or a request signal the gateway did not add): Quart must then see every
  request, as it would rank a user's route above the catch-all. Checked on every
  request: Quart takes new routes and hooks while it serves;
- a path under the gateway's own routes (`/healthz`, `/jobs/...`: RESERVED_PREFIXES),
  which Quart ranks above a catch-all code view such as `/<name>`.

A code view on the lane runs outside Quart's request and app contexts (`quart.request`,
`g`, `current_app` are unset), as it does in a job: its request is `fan.ctx`.

What the lane does is what Quart plus `_dispatch`, `health.observe` and the CORS hook
do for such a request: the same `Headers` (title-cased names, `Remote-Addr`), the same
`args`, the same answer and metrics, a disconnect cancels the work, and an unexpected
error is the 500 envelope with the request id, logged; `tests/test_lane.py` holds them
to it byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    HTTPScope,
    Scope,
)
from quart import signals
from werkzeug.datastructures import Headers, ImmutableMultiDict

from . import envelope
from .config import RESERVED_PREFIXES
from .door import Door
from .errors import RequestError
from .ingress import HTTP
from .logs import ROUTE_SCOPE_KEY
from .result import Result, internal_error

if TYPE_CHECKING:
    from quart import Quart

    from .app import Gateway
    from .routing import Target

log = logging.getLogger("gateway")

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Any]

# The catch-all route's methods less OPTIONS; all known to the metrics' `method` label.
LANE_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_HTTP1 = frozenset({"1.0", "1.1"})
_PASS_HEADERS = frozenset({b"transfer-encoding", b"prefer"})
_SIGNALS = (signals.request_started, signals.request_finished,
            signals.request_tearing_down, signals.got_request_exception,
            signals.appcontext_pushed, signals.appcontext_popped,
            signals.appcontext_tearing_down)


def app_shape(app: Quart) -> tuple[object, ...]:
    """What the app's setup methods added: routes, request and app-context hooks, error
    handlers, blueprints. Only a setup method changes these (`GatewayApp.setups` counts
    its calls), so the lane recounts them only then."""
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs,
             app.url_value_preprocessors, app.url_default_functions)
    return (sum(1 for _ in app.url_map.iter_rules()),
            *(sum(len(funcs) for funcs in hook.values()) for hook in hooks),
            len(app.teardown_appcontext_funcs),
            sum(len(by_code) for spec in app.error_handler_spec.values()
                for by_code in spec.values()),
            len(app.blueprints), app.url_map.host_matching, app.subdomain_matching)


def app_wiring(app: Quart) -> tuple[object, ...]:
    """What changes without a setup method: signal receivers, `SERVER_NAME`, the views and
    session the catch-all runs with. Cheap enough to look at on every request."""
    return (*(bool(signal.receivers) for signal in _SIGNALS), app.config["SERVER_NAME"],
            app.view_functions.get("aggregate"), app.view_functions.get("aggregate_root"),
            type(app.session_interface))


class Lane:
    """Raw ASGI in front of the Quart app (inside the framing guard and the client address)."""

    def __init__(self, gw: Gateway, inner: ASGIApp, cors: bool) -> None:
        self._gw = gw
        self._inner = inner
        self._cors = cors  # the app has the CORS hook (`Gateway._cors`), so the lane adds it
        self._own: tuple[object, ...] = ()  # app_shape when sealed
        self._own_wiring: tuple[object, ...] = ()
        self._setups = -1  # GatewayApp.setups when the shape was last compared
        self._shaped = False  # and whether it was still the gateway's own
        self._told = False  # the log line, once
        self.served = 0  # requests the lane answered (the rest went to Quart)

    def seal(self) -> None:
        """The gateway's own setup is done: what the app holds now is all its own."""
        app = self._gw.app
        self._own, self._own_wiring = app_shape(app), app_wiring(app)

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if (scope["type"] == "http" and scope["method"] in LANE_METHODS
                and scope["http_version"] in _HTTP1 and self.is_open()):
            routed = self._routed(scope)
            if routed is not None:
                # Without `Content-Length` or `Transfer-Encoding` an HTTP/1.x request has no
                # body and its first message is there at once; an in-process client (Quart's
                # test client) may still send one: it goes to Quart, the message replayed.
                taken = [await receive()]
                while (taken[-1]["type"] == "http.request" and not taken[-1].get("body")
                       and taken[-1].get("more_body")):  # the test client's empty first part
                    taken.append(await receive())
                last = taken[-1]
                if last["type"] == "http.request" and not last.get("body"):
                    await self._serve(scope, receive, send, *routed)
                    return
                receive = _replay(taken, receive)
        await self._inner(scope, receive, send)

    def is_open(self) -> bool:
        """Whether the app is still only what the gateway made of it. Quart takes new routes
        and hooks while it serves, so this is asked on every request: the setup part is
        recounted when a setup method has run, the rest looked at each time."""
        app = self._gw.app
        if app.setups != self._setups:  # a setup method ran since: recount (rare)
            self._setups = app.setups
            self._shaped = bool(self._own) and app_shape(app) == self._own
        open_ = self._shaped and app_wiring(app) == self._own_wiring
        if not open_ and not self._told:
            self._told = True
            log.info("the app was extended through Quart: every request goes through it")
        return open_

    def _routed(self, scope: HTTPScope) -> tuple[float, Target, dict[str, Any],
                                                 Headers] | None:
        started = time.perf_counter()
        if scope.get("root_path"):
            return None
        headers = Headers()
        headers["Remote-Addr"] = (scope.get("client") or ["<local>"])[0]
        for raw_name, raw_value in scope["headers"]:
            if raw_name in _PASS_HEADERS or (raw_name == b"content-length"
                                             and raw_value.strip() != b"0"):
                return None
            headers.add(raw_name.decode("latin1").title(), raw_value.decode("latin1"))
        if scope["http_version"] < "1.1":
            headers.setdefault("Host", self._gw.app.config["SERVER_NAME"] or "")
        path = scope["path"]
        if not path.startswith("/"):
            return None
        path = "/" + path.lstrip("/")
        if any(path == r or path.startswith(r + "/") for r in RESERVED_PREFIXES):
            return None  # the gateway's own routes (/healthz...) outrank a catch-all view
        try:
            target, params = self._gw.router.match(path, scope["method"])
        except RequestError:
            return None
        return started, target, params, headers

    async def _serve(self, scope: HTTPScope, receive: ASGIReceiveCallable,
                     send: ASGISendCallable, started: float, target: Target,
                     params: dict[str, Any], headers: Headers) -> None:
        """Answer one request; a disconnect before the answer cancels the work (as Quart)."""
        self.served += 1
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        watch = asyncio.ensure_future(_watch(receive, task, gone))
        try:
            result, extra = await self._answer(scope, started, target, params, headers)
            await self._send(scope, send, result, extra, headers, started, target)
        except asyncio.CancelledError:
            if not gone.is_set() or task.uncancel():
                raise  # the server's cancellation (too), not only the client's disconnect
        finally:
            watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch  # ends at once (cancelled, or it saw the disconnect): none left behind

    async def _answer(self, scope: HTTPScope, started: float, target: Target,
                      params: dict[str, Any], headers: Headers
                      ) -> tuple[Result, dict[str, str]]:
        """The result, and the headers the checks add to a 2xx (`RateLimit`)."""
        gw, method = self._gw, scope["method"]
        path = "/" + scope["path"].lstrip("/")
        args = ImmutableMultiDict(parse_qsl(scope["query_string"].decode(),
                                            keep_blank_values=True,
                                            errors="werkzeug.url_quote"))
        client = scope.get("client")
        door = Door(HTTP, method, path, args, headers, read=_no_body, started=started,
                    peer=str(client[0]) if client else None, target=target, params=params)
        try:
            try:
                admitted = await gw.ingress.admit(door)
            except RequestError as error:
                return gw.ingress.refusal(door, error), {}
            try:
                result = await gw.run(admitted.target, admitted.ctx)
            finally:
                door.close()
        except Exception as error:
            return self._bug(headers, error), {}
        if 200 <= result.status < 300:  # `RateLimit` on every 2xx (SPEC 9)
            return result, door.response_headers
        return result, {}

    def _bug(self, headers: Headers, error: Exception) -> Result:
        """A bug: the 500 envelope with the request id, logged; never a traceback (as Quart)."""
        answer = internal_error(headers, self._gw.config.gateway.strategy)
        log.error("unhandled error (request id %s)", answer.headers["X-Request-ID"],
                  exc_info=error)
        return answer

    async def _send(self, scope: HTTPScope, send: ASGISendCallable, result: Result,
                    extra: dict[str, str], headers: Headers, started: float,
                    target: Target) -> None:
        try:
            body = envelope.dumps(result.body)
        except Exception as error:  # as `_respond` inside Quart's error handling
            result = self._bug(headers, error)
            body = envelope.dumps(result.body)
        # As Quart's Response writes them: the result's, the body's, then `update` with the
        # checks' (a name already there keeps its place), then CORS.
        out = [*result.headers.items(), ("Content-Type", "application/json"),
               ("Content-Length", str(len(body)))]
        if extra:
            _update(out, extra)
        if self._cors:
            cors = self._gw.origins.reply_headers(headers)
            if cors:
                out += [*cors.items(), ("Vary", "Origin")]
        endpoint = str(target.route)
        scope[ROUTE_SCOPE_KEY] = endpoint  # type: ignore[literal-required]  # logs.py
        runtime = self._gw.runtime
        if runtime is not None:
            runtime.metrics.request(endpoint, scope["method"], result.status,
                                    time.perf_counter() - started)
        # Quart's RESPONSE_TIMEOUT bounds the writes: a client that stops reading cannot
        # hold the task (its slot is already free).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._gw.app.config["RESPONSE_TIMEOUT"]):
                await send({"type": "http.response.start", "status": result.status,
                            "headers": [(k.lower().encode(), v.encode()) for k, v in out]})
                await send({"type": "http.response.body", "body": body, "more_body": False})


async def _watch(receive: ASGIReceiveCallable, task: asyncio.Task[Any],
                 gone: asyncio.Event) -> None:
    """Cancel `task` when the client disconnects (Quart's receiver task does the same)."""
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                task.cancel()
                return


def _update(out: list[tuple[str, str]], extra: dict[str, str]) -> None:
    """werkzeug's `Headers.update`: a name already in `out` is replaced where it stands."""
    for name, value in extra.items():
        lower = name.lower()
        at = [i for i, (k, _) in enumerate(out) if k.lower() == lower]
        if at:
            out[at[0]] = (name, value)
            for i in reversed(at[1:]):
                del out[i]
        else:
            out.append((name, value))


def _replay(taken: list[ASGIReceiveEvent], receive: ASGIReceiveCallable
            ) -> ASGIReceiveCallable:
    """`receive` that first gives back, in order, the messages the lane already took."""
    pending = list(reversed(taken))

    async def replayed() -> ASGIReceiveEvent:
        return pending.pop() if pending else await receive()

    return replayed


async def _no_body(_target: Target) -> bytes:
    return b""


__all__ = ["LANE_METHODS", "Lane", "app_shape"]
