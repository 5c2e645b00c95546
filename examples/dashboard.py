"""A `combine` hook: business logic over the replies of a config endpoint.

Wired by `combine = "examples.dashboard:combine"` in examples/gateway.toml.
It receives the call results (name -> data, after select/rename, defaults
for failed optional calls) and the request context; its return value is
the response's `data`. Sync hooks run in a worker thread; async ones on the loop.
"""

from __future__ import annotations

from typing import Any

from gateway import RequestContext


def combine(results: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    user = results["user"]
    orders = results["orders"] or []
    account = results["account"]
    return {
        "user": user,
        "order_count": len(orders),
        "spent": round(sum(o.get("total", 0) for o in orders), 2),
        "balance": account.get("balance"),
        "request_id": ctx.request_id,
    }
