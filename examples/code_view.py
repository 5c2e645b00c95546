"""A code-defined endpoint: the fan-out written in Python with `@gw.aggregate`.

Run it against the demo upstreams:

    python -m examples.code_view          # starts demo upstreams + this gateway on :8000
    curl -s localhost:8000/overview/7
    curl -s -H 'X-Gateway-Strategy: sequential' localhost:8000/overview/7

`fan.gather` runs the calls concurrently, or one after another when the
request asks for the sequential strategy; every call gets the upstream's
timeout, header rules and body cap, and shows in `meta.calls`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import Fan, Gateway


def build(config: dict[str, Any]) -> Gateway:
    gw = Gateway(config)

    @gw.aggregate("/overview/<int:user_id>")
    async def overview(fan: Fan, user_id: int) -> dict[str, Any]:
        user, orders, recs = await fan.gather(
            fan.get("users", f"/users/{fan.segment(user_id)}", name="user"),
            fan.get("orders", "/orders", params={"user": user_id}, optional=True, default=[]),
            fan.get("recommendations", f"/recommendations/{fan.segment(user_id)}",
                    optional=True, default={"items": []}),
        )
        account = await fan.get("billing", f"/accounts/{fan.segment(user['account_id'])}",
                                name="account")
        return {
            "name": user["name"],
            "spent": round(sum(o["total"] for o in orders), 2),
            "top_pick": (recs["items"] or [{}])[0].get("product"),
            "balance": account["balance"],
        }

    return gw


async def _main() -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from gateway.demo import demo_config, start_demo_upstreams

    upstreams = await start_demo_upstreams()
    try:
        config = Config()
        config.bind = ["127.0.0.1:8000"]
        print("try: curl -s localhost:8000/overview/7")
        await serve(build(demo_config(upstreams.urls)).app, config)
    finally:
        await upstreams.close()


if __name__ == "__main__":
    asyncio.run(_main())
