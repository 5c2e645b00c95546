"""Binding the listening sockets before saying anything, for `gateway demo`, `serve` and examples.

A busy port must be one clear line and a non-zero exit, not a banner that claims to serve
followed by a traceback. So the sockets are created first (Hypercorn's own
`Config.create_sockets`), and only then is the banner printed and the app served on them.
"""

from __future__ import annotations

import errno
from typing import Any

from .errors import BindError as BindError  # its home is errors.py; callers import it here too

DEFAULT_BIND = "127.0.0.1:8000"


def bind_sockets(config: Any) -> Any:
    """`config.create_sockets()` (a `hypercorn.config.Sockets`); raises `BindError`.

    Sockets bound before a failure are closed again, so nothing is left half-open.
    """
    for address in config.bind:
        if not _valid(address):
            raise BindError(address, "expected HOST:PORT, e.g. 127.0.0.1:8000")
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        raise BindError(", ".join(config.bind), os_reason(exc)) from None
    # Listening now, not when Hypercorn starts serving (after the app's start-up): a client
    # that believes the banner waits in the backlog instead of being refused.
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.listen(config.backlog)
    return sockets


def close_sockets(sockets: Any) -> None:
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


def probe(config: Any) -> None:
    """Raise `BindError` unless every address of `config.bind` can be listened on right now.

    For `gateway serve`, whose sockets Hypercorn creates itself a moment later.
    """
    close_sockets(bind_sockets(config))


async def serve_on(app: Any, config: Any, sockets: Any) -> None:
    """Serve `app` on already bound `sockets` until SIGINT/SIGTERM (Hypercorn's own worker).

    A gateway's app is told first, so its `/ws` sockets close with 1001 at once (serving.py).
    """
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import wrap_app

    from .serving import gateway_of, signalled_trigger

    with signalled_trigger(gateway_of(app)) as trigger:
        await worker_serve(wrap_app(app, config.wsgi_max_body_size, None), config,
                           sockets=sockets, shutdown_trigger=trigger)


def _valid(address: str) -> bool:
    if address.startswith(("unix:", "fd://")):
        return True
    _, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and int(port) <= 65535  # ":8000": every interface


def os_reason(exc: OSError) -> str:
    """An OSError as the few words a user needs, e.g. "address already in use"."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    if exc.errno is not None and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__

