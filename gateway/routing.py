"""Route matching for aggregate endpoints, config-defined and code-defined alike.

Our own werkzeug `Map` rather than Quart's url rules, so that the same
matcher serves HTTP, jobs and the WebSocket, and a config reload can swap it
whole while requests in flight keep the plan they matched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, RequestRedirect, RoutingException, Rule

from .config import RESERVED_PREFIXES
from .errors import RequestError
from .plan import Plan

if TYPE_CHECKING:
    from .fan import Fan

ViewFunc = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class CodeView:
    """An endpoint written in Python: `async def view(fan, **route_params)`."""

    route: str
    methods: tuple[str, ...]
    func: Callable[..., Awaitable[Any]]
    strategy: str | None = None
    deadline: float | None = None

    async def __call__(self, fan: Fan, params: dict[str, Any]) -> Any:
        return await self.func(fan, **params)


Target = Plan | CodeView


class Router:
    """Matches (path, method) to a plan or code view and its route parameters."""

    def __init__(self, plans: Iterable[Plan], views: Iterable[CodeView] = ()) -> None:
        self._targets: list[Target] = []
        self._map = Map(strict_slashes=False, merge_slashes=False)
        for plan in plans:
            self._add(plan.route, (plan.method,), plan)
        for view in views:
            self._add(view.route, view.methods, view)
        self._adapter = self._map.bind("gateway")

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(self._targets)

    @property
    def views(self) -> tuple[CodeView, ...]:
        return tuple(t for t in self._targets if isinstance(t, CodeView))

    def with_view(self, view: CodeView) -> Router:
        """A new router with one more code view (routers are never changed in place)."""
        plans = [t for t in self._targets if isinstance(t, Plan)]
        return Router(plans, [*self.views, view])

    def _add(self, route: str, methods: tuple[str, ...], target: Target) -> None:
        check_route(route)
        self._map.add(Rule(route, endpoint=len(self._targets), methods=list(methods)))
        self._targets.append(target)

    def match(self, path: str, method: str) -> tuple[Target, dict[str, Any]]:
        """The target and its route parameters; `RequestError` 400/404/405 otherwise."""
        if any(ch in path for ch in "\r\n\0"):  # werkzeug's `path` converter stops at \n
            raise RequestError("request path holds CR, LF or NUL (percent-decoded)")
        try:
            index, params = self._adapter.match(path, method)
            params = dict(params)
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            raise RequestError(f"{method} is not allowed on {path} (allowed: {allowed})",
                               405) from None
        except (NotFound, RequestRedirect):
            raise RequestError(f"no endpoint for {method} {path}", 404) from None
        return self._targets[index], params

    def allowed(self, path: str) -> tuple[frozenset[str], Target | None]:
        """The methods some route serves `path` with (HEAD with GET), and one such target.

        Each method werkzeug names is matched for real: its `allowed_methods` skips the
        converters, so `/n/100` would count for `<int(max=99):n>`.
        """
        methods: set[str] = set()
        target: Target | None = None
        for method in sorted(self._adapter.allowed_methods(path)):
            try:
                index, _ = self._adapter.match(path, method)
            except (HTTPException, RoutingException):  # a converter refused the value
                continue
            methods.add(method)
            target = target or self._targets[index]
        return frozenset(methods), target


def check_route(route: str) -> None:
    for prefix in RESERVED_PREFIXES:
        if route == prefix or route.startswith(prefix + "/"):
            raise ValueError(f"route '{route}' is reserved for the gateway ({prefix})")
