"""A code-defined endpoint: the fan-out written in Python with `@gw.aggregate`.

Run it against the demo upstreams (beside `make run`, which holds port 8000):

    source .venv/bin/activate
    python -m examples.code_view          # demo upstreams + this gateway on 127.0.0.1:8001
    curl -s localhost:8001/overview/7
    curl -s -H 'X-Gateway-Strategy: sequential' localhost:8001/overview/7

`--bind HOST:PORT` (or CODE_VIEW_BIND) listens elsewhere.

`fan.gather` runs the calls concurrently, or one after another when the
request asks for the sequential strategy; every call gets the upstream's
timeout, header rules and body cap, and shows in `meta.calls`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from gateway import Fan, Gateway

DEFAULT_BIND = "127.0.0.1:8001"  # beside `gateway demo` on 8000


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


async def _main(bind: str) -> None:
    from hypercorn.config import Config

    from gateway.demo import demo_config, start_demo_upstreams
    from gateway.listen import bind_sockets, close_sockets, serve_on

    config = Config()
    config.bind = [bind]
    sockets = bind_sockets(config)  # a taken port fails here, before anything is printed
    try:
        upstreams = await start_demo_upstreams()
    except BaseException:
        close_sockets(sockets)
        raise
    try:
        gw = build(demo_config(upstreams.urls))
        print(f"listening on http://{bind}; try: curl -s http://{bind}/overview/7", flush=True)
        await serve_on(gw.app, config, sockets)
    finally:
        await upstreams.close()


def main(argv: list[str] | None = None) -> int:
    from gateway.listen import BindError

    parser = argparse.ArgumentParser(prog="python -m examples.code_view",
                                     description="A code-defined endpoint on the demo upstreams.")
    parser.add_argument("--bind", metavar="HOST:PORT",
                        default=os.environ.get("CODE_VIEW_BIND", DEFAULT_BIND),
                        help=f"where to listen (default: $CODE_VIEW_BIND, else {DEFAULT_BIND})")
    args = parser.parse_args(argv)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_main(args.bind))
    except BindError as exc:
        print(f"code_view: {exc}; pass --bind HOST:PORT", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
