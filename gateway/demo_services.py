"""The demo's four fake services: fixed data derived from the ids, real-looking latencies.

Each is aiohttp.web's low-level server on 127.0.0.1 (no router: the routes below split
the path themselves). All data is derived from the ids, so the same request always gives
the same answer (tests and benchmarks depend on it). `gateway.demo` builds the config and
the views over them and runs `gateway demo`.

    users            ~80 ms   GET /users/{id}, GET /users?ids=1,2,3 (batch)   port 9001
    orders          ~120 ms   GET /orders?user={id}                           port 9002
    billing          ~60 ms   GET /accounts/{account_id}                      port 9003
    recommendations ~150 ms   GET /recommendations/{id}                       port 9004
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

MAX_USER_ID = 1000
ACCOUNT_BASE = 10_000  # user N has account ACCOUNT_BASE + N

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Perlman")
_TIERS = ("free", "pro", "enterprise")
_PLANS = ("free", "pro-monthly", "enterprise-annual")
_CURRENCIES = ("EUR", "USD", "GBP")
_PRODUCTS = ("keyboard", "monitor", "mouse", "headset", "webcam", "dock", "cable", "lamp")

Route = Callable[[str, Mapping[str, str]], web.Response]  # (raw path, query) -> reply


class _BadId(Exception):
    """An id in the path or query is not an integer: the demo answers 400 like a real API."""


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _BadId(f"{what} must be an integer, got {value!r}") from None


def json_response(obj: object, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, headers=headers,
                        content_type="application/json")


def _not_found(what: str) -> web.Response:
    return json_response({"error": f"no such {what}"}, 404)


def _user(user_id: int) -> dict[str, Any]:
    first = _FIRST[user_id % len(_FIRST)]
    last = _LAST[(user_id // len(_FIRST)) % len(_LAST)]
    return {
        "id": user_id,
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{user_id}@example.com",
        "account_id": ACCOUNT_BASE + user_id,
        "tier": _TIERS[user_id % len(_TIERS)],
    }


def _users_route(path: str, query: Mapping[str, str]) -> web.Response:
    parts = path.strip("/").split("/")
    if parts == ["users"]:
        if "ids" not in query:
            return json_response({"error": "missing query parameter 'ids'"}, 400)
        ids = [_int(raw, "id") for raw in query["ids"].split(",") if raw]
        # Unknown ids are left out: the caller matches items by their "id" field.
        return json_response([_user(i) for i in dict.fromkeys(ids) if 0 < i <= MAX_USER_ID])
    if len(parts) == 2 and parts[0] == "users":
        user_id = _int(parts[1], "user id")
        if not 0 < user_id <= MAX_USER_ID:
            return _not_found("user")
        return json_response(_user(user_id))
    return _not_found("route")


def _orders_route(path: str, query: Mapping[str, str]) -> web.Response:
    if path.rstrip("/") != "/orders":
        return _not_found("route")
    if "user" not in query:
        return json_response({"error": "missing query parameter 'user'"}, 400)
    user_id = _int(query["user"], "user")
    rng = random.Random(user_id)  # seeded: the same user always has the same orders
    orders: list[dict[str, Any]] = []
    for n in range(rng.randint(0, 4)):
        items: list[dict[str, Any]] = []
        total = 0.0
        for _ in range(rng.randint(1, 4)):
            qty, price = rng.randint(1, 3), rng.randint(500, 20_000) / 100
            items.append({"product": rng.choice(_PRODUCTS), "qty": qty, "price": price})
            total += qty * price
        orders.append(
            {"id": user_id * 100 + n, "user": user_id, "total": round(total, 2), "items": items}
        )
    return json_response(orders)


def _recommendations_route(path: str, query: Mapping[str, str]) -> web.Response:
    parts = path.strip("/").split("/")
    if len(parts) != 2 or parts[0] != "recommendations":
        return _not_found("route")
    user_id = _int(parts[1], "user id")
    rng = random.Random(-user_id - 1)  # a different stream from the orders of the same user
    scored = [(round(rng.uniform(0.5, 1.0), 3), p) for p in rng.sample(_PRODUCTS, 3)]
    items = [{"product": p, "score": score} for score, p in sorted(scored, reverse=True)]
    return json_response({"user": user_id, "items": items})


def _billing_route(path: str, query: Mapping[str, str]) -> web.Response:
    parts = path.strip("/").split("/")
    if len(parts) != 2 or parts[0] != "accounts":
        return _not_found("route")
    account_id = _int(parts[1], "account id")
    user_id = account_id - ACCOUNT_BASE
    if not 0 < user_id <= MAX_USER_ID:
        return _not_found("account")
    return json_response(
        {
            "account_id": account_id,
            "balance": round(random.Random(account_id).uniform(-50, 5000), 2),
            "currency": _CURRENCIES[account_id % len(_CURRENCIES)],
            "plan": _PLANS[user_id % len(_PLANS)],
        }
    )


class DemoServer:
    """One service on 127.0.0.1:`port` (0: a free one); `requests` counts what it received."""

    def __init__(self, route: Route, delay: float, port: int = 0) -> None:
        self._route = route
        self._delay = delay
        self.port = port
        self._server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=SHUTDOWN_TIMEOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return self._server.requests_count

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        await asyncio.sleep(self._delay)  # the latency of a real service, before any answer
        if request.method not in ("GET", "HEAD"):
            return json_response({"error": "method not allowed"}, 405, {"allow": "GET"})
        path = request.raw_path.partition("?")[0]  # still percent-encoded, like a real API's
        try:
            return self._route(path, dict(request.query.items()))  # the last value wins
        except _BadId as exc:
            return json_response({"error": str(exc)}, 400)


_SERVICES: dict[str, tuple[Route, float]] = {
    "users": (_users_route, 0.080),
    "orders": (_orders_route, 0.120),
    "recommendations": (_recommendations_route, 0.150),
    "billing": (_billing_route, 0.060),
}
DEMO_PORT = 9001  # users; the others follow in PORT_OFFSETS order (examples/gateway.toml)
PORT_OFFSETS = {"users": 0, "orders": 1, "billing": 2, "recommendations": 3}
SHUTDOWN_TIMEOUT = 1.0  # seconds a request in flight may take to finish once the demo stops


@dataclass
class DemoUpstreams:
    servers: dict[str, DemoServer]

    @property
    def urls(self) -> dict[str, str]:
        return {name: server.url for name, server in self.servers.items()}

    async def close(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for server in self.servers.values():
                tg.create_task(server.close())


async def start_demo_upstreams(scale: float = 1.0, base_port: int = 0) -> DemoUpstreams:
    """Start the four services; `scale` multiplies every delay (tests use 0.01).

    `base_port` 0 puts each on a random free port; otherwise users listens on it and the
    others on the next ports (PORT_OFFSETS); a taken port raises `OSError`.
    """
    demo = DemoUpstreams({})
    try:
        for name, (route, delay) in _SERVICES.items():
            port = base_port + PORT_OFFSETS[name] if base_port else 0
            server = DemoServer(route, delay * scale, port=port)
            await server.start()
            demo.servers[name] = server
    except BaseException:
        await demo.close()
        raise
    return demo
