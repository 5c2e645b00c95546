"""One `gateway serve` worker: Hypercorn's asyncio worker, plus what a graceful stop needs.

Once shutdown begins, Hypercorn lets the responses in flight finish and then closes
their keep-alive connections, but says so in none of them: a client that sends its next
request on such a connection in that moment gets a reset. Here the shutdown trigger
first raises the `Drain` flag, and every HTTP/1.x response that starts from then on
carries `Connection: close`, so clients open a new connection (to a live worker) instead.

What starts the graceful stop: SIGTERM; SIGINT too when this process is the whole server
(`--workers 1`); under the master (supervisor.py) also its shutdown event, which it sets
on SIGINT/SIGTERM. SIGHUP is the app's (reload.py).

The trigger also tells the gateway (`Gateway.going_away()`): Hypercorn waits up to
`graceful_timeout` for every open connection and then cancels the rest, and an idle
WebSocket never finishes by itself, so Ctrl-C used to take that whole wait and give the
client 1011 and the log a `CancelledError` traceback. Told first, `/ws` sockets close
with 1001 ("going away") at once and Hypercorn's wait ends with them. `gateway demo`
and the examples get the same through `signalled_trigger` (listen.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any, cast

from . import collector

if TYPE_CHECKING:  # imported in the worker, not in `gateway serve`'s master
    from .app import Gateway

SHUTDOWN_POLL = 0.1  # seconds between looks at the master's shutdown event (as Hypercorn's)
_HTTP1 = frozenset({"1.0", "1.1"})  # HTTP/2 and 3 forbid the Connection header

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(slots=True)
class Drain:
    """Raised once this worker has begun its graceful stop."""

    closing: bool = False


class CloseWhenDraining:
    """ASGI middleware: `Connection: close` on every HTTP/1.x response started while draining."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("http_version") not in _HTTP1:
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.closing:
                headers = [(name, value) for name, value in message.get("headers", ())
                           if name.lower() != b"connection"]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)


def run_worker(config: Any, sockets: Any = None, shutdown_event: Event | None = None) -> None:
    """A worker process's target (and the whole server with one worker): serve until stopped."""
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.logging import Logger as HypercornLogger
    from hypercorn.utils import load_application

    from .logs import AccessLogger

    if config.logger_class is HypercornLogger and config.statsd_host is None:
        config.logger_class = AccessLogger  # the access log's json lines name the route
    loaded = load_application(config.application_path, config.wsgi_max_body_size)
    collector.tune()  # after the app is loaded: what it holds is never traversed again
    drain = Drain()
    inner: ASGIApp = loaded.app  # type: ignore[attr-defined]  # an ASGIWrapper's app
    app = ASGIWrapper(cast(Any, CloseWhenDraining(inner, drain)))
    loop_factory = None
    if config.worker_class == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(debug=config.debug, loop_factory=loop_factory) as runner:
        runner.get_loop().set_exception_handler(_exception_handler)
        runner.run(_serve(app, config, sockets, shutdown_event, drain, gateway_of(inner)))


async def _serve(app: Any, config: Any, sockets: Any, shutdown_event: Event | None,
                 drain: Drain, gw: Gateway | None) -> None:
    from hypercorn.asyncio.run import worker_serve

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Under the master, SIGINT stays ignored (inherited): a Ctrl-C reaches the whole
    # process group and only the master decides how the workers stop.
    signals = [signal.SIGTERM] if shutdown_event is not None else [signal.SIGTERM,
                                                                   signal.SIGINT]
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    async def shutdown_trigger() -> None:
        while not stop.is_set() and not (shutdown_event is not None
                                         and shutdown_event.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SHUTDOWN_POLL)
        drain.closing = True
        if gw is not None:
            gw.going_away()  # /ws sockets close with 1001 now, not cut at graceful_timeout

    try:
        await worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def signalled_trigger(gw: Gateway | None) -> Iterator[Callable[[], Awaitable[None]]]:
    """A Hypercorn `shutdown_trigger` for SIGINT/SIGTERM that tells `gw` first.

    Its handlers are on the running loop inside the `with` only: once serving is over,
    a Ctrl-C during the clean-up interrupts as usual instead of setting a spent event.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    async def trigger() -> None:
        await stop.wait()
        if gw is not None:
            gw.going_away()

    try:
        yield trigger
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def gateway_of(app: Any) -> Gateway | None:
    """The `Gateway` whose Quart app `app` is (Hypercorn may wrap it); None for other apps."""
    from .wrappers import GatewayApp  # quart: in the worker only

    inner = getattr(app, "app", app)
    return inner.gateway if isinstance(inner, GatewayApp) else None


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if not isinstance(context.get("exception"), ssl.SSLError):  # a failed TLS handshake
        loop.default_exception_handler(context)
