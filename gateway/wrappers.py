"""The Quart classes a `Gateway` serves with: what it keeps is in plain attributes.

`GatewayApp.gateway` is the `Gateway` that made the app (`gateway worker --app
module:app` and `serving.py` find it from the app alone). `GatewayRequest` carries
what the gateway learns about an HTTP request while it handles it: its arrival
time (one clock for `meta.elapsed_ms` and the request metrics) and the route it
matched (the metrics' `endpoint` label). Quart's `g` and `app.extensions` are
left to extensions of Quart; our own modules hand nothing through them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from quart import Quart, Request
from quart.globals import request_ctx

if TYPE_CHECKING:
    from .app import Gateway
    from .routing import Target


class GatewayRequest(Request):
    """Quart's request, plus its arrival time and the target it matched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        self.target: Target | None = None  # set once routed (a 405 too): labels its metrics


class GatewayApp(Quart):
    """The Quart app of one `Gateway`."""

    request_class = GatewayRequest

    def __init__(self, gateway: Gateway, import_name: str) -> None:
        self.setups = 0  # setup methods called (routes, hooks, handlers...): lane.py
        super().__init__(import_name)
        self.gateway = gateway

    def _check_setup_finished(self, f_name: str) -> None:
        """Every setup method (`route`, `before_request`, `errorhandler`...) passes here
        first: counted, so the lane knows when to look at the app's shape again."""
        self.setups += 1
        super()._check_setup_finished(f_name)


def current_request() -> GatewayRequest:
    """The HTTP request being handled (`quart.request`, typed as what the app makes)."""
    incoming = request_ctx.request
    if not isinstance(incoming, GatewayRequest):  # an app that changed its request_class
        raise TypeError("the request was not made by a GatewayApp")
    return incoming
