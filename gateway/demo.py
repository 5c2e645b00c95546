"""Built-in demo upstreams: four fake services on loopback, and a gateway config for them.

`gateway demo` must show fan-out, chaining, optional calls, batching and a Python `combine`
with no network and no setup. So this module starts four small HTTP services on 127.0.0.1
whose latencies differ like real ones do, making the saving of parallel over sequential
visible in `meta`, and builds the matching config. All data is derived from the ids, so the
same request always gives the same answer (tests and benchmarks depend on it).

    users            ~80 ms   GET /users/{id}, GET /users?ids=1,2,3 (batch)   port 9001
    orders          ~120 ms   GET /orders?user={id}                           port 9002
    billing          ~60 ms   GET /accounts/{account_id}                      port 9003
    recommendations ~150 ms   GET /recommendations/{id}                       port 9004

`gateway demo` puts them on those fixed ports when they are free (so that
`examples/gateway.toml` reaches them), else on random ones; tests use random ones. The services
themselves are in `gateway.demo_services`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from gateway.demo_services import (
    ACCOUNT_BASE,
    DEMO_PORT,
    MAX_USER_ID,
    PORT_OFFSETS,
    DemoServer,
    DemoUpstreams,
    start_demo_upstreams,
)
from gateway.listen import BindError, bind_sockets, close_sockets, os_reason, serve_on

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.fan import Fan

__all__ = ["ACCOUNT_BASE", "MAX_USER_ID", "DemoServer", "DemoUpstreams", "combine_profile",
           "demo_config", "register_demo_views", "run_demo", "start_demo_upstreams"]


def demo_config(urls: dict[str, str]) -> dict[str, Any]:
    """The gateway config (same shape as the TOML file) for upstreams at `urls`."""
    user_call = {"name": "user", "upstream": "users", "path": "/users/{user_id}"}
    account_call = {"name": "account", "upstream": "billing", "path": "/accounts/{user.account_id}"}
    return {
        "gateway": {"strategy": "parallel", "timeout": 2.0, "deadline": 5.0},
        "upstreams": {
            "users": {
                "url": urls["users"],
                "batch": {
                    "path": "/users",
                    "param": "ids",
                    "key": "id",
                    "max_size": 50,
                    "window_ms": 5,
                },
            },
            "orders": {"url": urls["orders"]},
            "recommendations": {"url": urls["recommendations"]},
            "billing": {"url": urls["billing"]},
        },
        "endpoints": [
            {
                "route": "/dashboard/<int:user_id>",
                "method": "GET",
                "calls": [
                    {
                        **user_call,
                        "select": ["id", "name", "account_id", "tier"],
                        "rename": {"name": "full_name"},
                    },
                    {
                        "name": "orders",
                        "upstream": "orders",
                        "path": "/orders",
                        "query": {"user": "{user_id}"},
                        "optional": True,
                        "default": [],
                    },
                    {
                        "name": "recommendations",
                        "upstream": "recommendations",
                        "path": "/recommendations/{user_id}",
                        "optional": True,
                        "default": {"items": []},
                    },
                    account_call,
                ],
            },
            {
                "route": "/profile/<int:user_id>",
                "method": "GET",
                "combine": "gateway.demo:combine_profile",
                "calls": [dict(user_call), dict(account_call)],
            },
            {
                # Three keyed calls, one upstream request: GET /users?ids=a,b,c (batching).
                "route": "/team/<int:a>/<int:b>/<int:c>",
                "method": "GET",
                "calls": [
                    {"name": f"member_{key}", "upstream": "users", "batch_key": "{" + key + "}"}
                    for key in ("a", "b", "c")
                ],
            },
        ],
    }


def combine_profile(results: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """The `combine` hook of /profile: shows business logic merging two upstreams' replies."""
    user, account = results["user"], results["account"]
    return {
        "id": user["id"],
        "name": user.get("full_name", user.get("name")),
        "balance": account["balance"],
        "currency": account["currency"],
        "plan": account["plan"],
    }


def register_demo_views(gw: Gateway) -> None:
    """A code-defined endpoint: the same fan-out written in Python with `@gw.aggregate`."""

    @gw.aggregate("/summary/<int:user_id>")
    async def summary(fan: Fan, user_id: int) -> dict[str, Any]:
        user, orders = await fan.gather(
            fan.get("users", f"/users/{user_id}", name="user"),
            fan.get("orders", "/orders", params={"user": user_id}, optional=True, default=[]),
        )
        return {
            "name": user["name"],
            "orders": len(orders),
            "spent": round(sum(o["total"] for o in orders), 2),
        }


# --- `gateway demo` ---------------------------------------------------------------------------

ACTIVATE_HINT = "(run `source .venv/bin/activate` first, or use .venv/bin/gateway)"


async def run_demo(config: Any, upstream_port: int | None) -> None:
    """Bind the gateway's address, start the upstreams, print the banner, serve until Ctrl-C.

    `config` is the Hypercorn config (its `bind` is the gateway's address). `upstream_port`
    None means DEMO_PORT if those ports are free, else random ones; 0 means random ones.
    Raises `BindError` (nothing printed yet) when an address is taken.
    """
    from gateway.app import Gateway

    sockets = bind_sockets(config)
    try:
        upstreams = await _start_upstreams(upstream_port)
    except BaseException:
        close_sockets(sockets)
        raise
    try:
        gw = Gateway(demo_config(upstreams.urls))
        register_demo_views(gw)
        base = f"http://{config.bind[0]}"
        print(demo_banner(base, upstreams, fixed=_on_fixed_ports(upstreams)), flush=True)
        await serve_on(gw.app, config, sockets)
    finally:
        await upstreams.close()


async def _start_upstreams(upstream_port: int | None) -> DemoUpstreams:
    if upstream_port is not None:
        try:
            return await start_demo_upstreams(base_port=upstream_port)
        except OSError as exc:
            last = upstream_port + len(PORT_OFFSETS) - 1
            raise BindError(f"127.0.0.1:{upstream_port}-{last} (the demo upstreams)",
                            os_reason(exc), what="upstreams") from None
    try:
        return await start_demo_upstreams(base_port=DEMO_PORT)
    except OSError:
        last = DEMO_PORT + len(PORT_OFFSETS) - 1
        print(f"note: a port of {DEMO_PORT}-{last} is taken, so the demo upstreams use random "
              "ports; examples/gateway.toml reaches them only with USERS_URL, ORDERS_URL and "
              "BILLING_URL set to the URLs below", file=sys.stderr, flush=True)
        return await start_demo_upstreams()


def _on_fixed_ports(upstreams: DemoUpstreams) -> bool:
    return all(server.port == DEMO_PORT + PORT_OFFSETS[name]
               for name, server in upstreams.servers.items())


def demo_banner(base: str, upstreams: DemoUpstreams, fixed: bool) -> str:
    """What `gateway demo` prints once it listens: the upstreams and the commands to try."""
    lines = ["gateway demo: upstreams on loopback (no network needed)"]
    lines += [f"  {name:<16} {url}" for name, url in upstreams.urls.items()]
    lines += [
        "",
        f"dashboard (waterfalls, parallel vs sequential): {base}/_gateway/",
        f"WebSocket progress per call: {base.replace('http', 'ws', 1)}/ws",
        "",
        f"gateway listening on {base}; try:",
        f"  curl -s {base}/dashboard/7 | python3 -m json.tool",
        f"  curl -s -H 'X-Gateway-Strategy: sequential' {base}/dashboard/7 | python3 -m json.tool",
        f"  curl -s {base}/profile/7        # a Python combine hook",
        f"  curl -s {base}/summary/7        # a code-defined endpoint (@gw.aggregate)",
        f"  curl -si {base}/dashboard/0     # an upstream 404 passed through",
        f"  curl -s {base}/team/1/2/3       # three keyed calls batched into one upstream call",
        f"  gateway bench --url {base} /dashboard/7",
    ]
    if fixed:
        lines.append("  gateway bench --config examples/gateway.toml /dashboard/7")
    lines += [f"  {ACTIVATE_HINT}", "Ctrl-C stops it."]
    return "\n".join(lines)

