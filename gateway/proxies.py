"""Behind a reverse proxy: the ASGI scope's `client` becomes the real client, once.

`ClientAddress` is the outermost ASGI layer. When the TCP peer is in
`limits.trusted_proxies`, it rewrites `scope["client"]` to the address that
`limits.clientip.client_ip` finds in `X-Forwarded-For` (port 0: the proxy did
not say), in place, as uvicorn's ProxyHeadersMiddleware does. Everything after
it reads the real client from the one place ASGI puts it: Hypercorn's access
log (`%(h)s`, the JSON `client` field), Quart's `request.remote_addr`, the
`/ws` handshake's scope, the rate limits' `key = "ip"`. So the walk happens
once per request and nobody walks the header a second time (a second walk
would go one hop further whenever the client itself sits in a trusted range).
The TCP peer stays readable as `scope[PEER_KEY]`.

Without trusted proxies (the default) the scope is left as Hypercorn made it
and a client's `X-Forwarded-For` is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from .limits.clientip import Network, client_ip, parse_networks

PEER_KEY = "gateway.peer"  # the TCP peer (host, port), when `client` was rewritten
_FORWARDED_FOR = b"x-forwarded-for"


class ClientAddress:
    """ASGI middleware: `scope["client"]` is the client as `trusted_proxies` defines it."""

    def __init__(self, app: Any,
                 trusted: Callable[[], tuple[str, ...]]) -> None:
        self.app = app
        self._trusted = trusted  # the current config's: a reload may change the list
        self._parsed: tuple[tuple[str, ...], tuple[Network, ...]] = ((), ())

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if scope["type"] in ("http", "websocket"):
            networks = self.networks()
            peer = scope.get("client")
            if networks and peer is not None:
                forwarded = [value.decode("latin-1") for name, value in scope["headers"]
                             if name.lower() == _FORWARDED_FOR]
                client = client_ip(peer[0], forwarded, networks)
                if client != peer[0]:
                    scope[PEER_KEY] = peer  # type: ignore[literal-required]
                    scope["client"] = (client, 0)
        await self.app(scope, receive, send)

    def networks(self) -> tuple[Network, ...]:
        """The trusted networks, parsed once per config (validated at load)."""
        cidrs = self._trusted()
        if cidrs is not self._parsed[0]:
            self._parsed = (cidrs, parse_networks(cidrs))
        return self._parsed[1]
