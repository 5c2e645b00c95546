"""schemathesis against a live gateway: `gateway serve` (a real Hypercorn, the shipped
hypercorn.toml) with real upstreams on loopback, one of them failing with 500s.

The schemathesis CLI runs its coverage phase (missing and extra parameters, methods the
document does not list: 405 with a matching `Allow`) and its fuzzing phase (positive and
negative data) with every check: what the document allows must be served, what it forbids
refused, every response as documented, and no 500 (tests/schemathesis_hooks.py; the
by-design 502/503/504 of the failing upstream are excluded by name). Bounded: a few
examples per operation, a fixed seed, a subprocess timeout.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import (
    HypercornFactory,
    UpstreamFactory,
    call,
    echo,
    endpoint,
    make_config,
    reply,
)

from gateway.openapi import PATH

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
HOOKS = Path(__file__).parent / "schemathesis_hooks.py"
# Seconds. The run takes about 10 on an idle 2-core machine, 50 with eight test suites on it.
RUN_TIMEOUT = 200.0


@pytest.mark.timeout(RUN_TIMEOUT + 40)
async def test_schemathesis_against_a_live_gateway_finds_nothing(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, tmp_path: Path
) -> None:
    up = await upstream(echo)
    flaky = await upstream(reply({"e": 1}, status=500))
    config = make_config(
        {"up": {"url": up, "timeout": 2.0, "forward_headers": ["x-tenant"]},
         "flaky": {"url": flaky, "timeout": 2.0, "breaker": {"failures": 3, "reset": 60}}},
        endpoint("/users/<int:user_id>",
                 call("user", "up", "/users/{user_id}", query={"verbose": "{query.verbose}"}),
                 call("orders", "flaky", "/orders", query={"user": "{user_id}"},
                      optional=True, default=[])),
        endpoint("/items/<name>/<uuid:token>",
                 call("item", "up", "/items/{name}/{token}/{header.x-tenant}")),
        endpoint("/orders", call("order", "up", "/orders/{body.id}", method="POST",
                                 body={"note": "{body.note}", "who": "{body.user.name}"}),
                 method="POST"),
        endpoint("/search", call("found", "up", "/s/{query.q}", query={"q": "{query.q}"})),
        endpoint("/files/<path:rest>", call("file", "up", "/files/{rest}")),
        endpoint("/kinds/<any(a, b):kind>/<float:ratio>/<int(min=1, max=99):n>",
                 call("kinds", "up", "/k/{kind}/{ratio}/{n}")),
        endpoint("/broken", call("broken", "flaky", "/broken")),
    )
    server = await hypercorn_server(config)
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", server.url + PATH,
        "--phases", "coverage,fuzzing", "--max-examples", "6", "--workers", "2",
        "--seed", "11", "--generation-database", "none", "--continue-on-failure",
        "--exclude-checks", "not_a_server_error", "--request-timeout", "10",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"})
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    report = out.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
    assert "No issues found" in report, report[-3000:]
    assert up.requests > 0  # cases got past the door and were served
    assert flaky.requests > 0  # ... and the failing upstream was met (502/503 by design)
