"""Behind a reverse proxy: `limits.trusted_proxies` names the client once, for everything after.

The ASGI layer as a function over scopes; then a real `gateway serve` whose access log
(JSON) names the client a trusted proxy forwarded for, and ignores a forged
`X-Forwarded-For` from a peer it does not trust. Loopback has a whole /8: a client bound
to 127.0.0.2 is a different peer from 127.0.0.1, the trusted "proxy".
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from support import HypercornFactory, UpstreamFactory, call, endpoint, make_config, reply

from gateway.proxies import PEER_KEY, ClientAddress

TRUSTED = ("127.0.0.1/32", "10.0.0.0/8")


async def seen_scope(scope: dict[str, Any], trusted: tuple[str, ...] = TRUSTED
                     ) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(_: Any) -> None:
        return None

    await ClientAddress(app, lambda: trusted)(scope, nothing, ignore)  # type: ignore[arg-type]
    return seen[0]


def scope_of(peer: tuple[str, int] | None, *forwarded: str, kind: str = "http"
             ) -> dict[str, Any]:
    return {"type": kind, "client": peer,
            "headers": [(b"host", b"a"), *((b"X-Forwarded-For", f.encode()) for f in forwarded)]}


async def test_trusted_peer_makes_the_forwarded_address_the_client() -> None:
    scope = await seen_scope(scope_of(("127.0.0.1", 5000), "203.0.113.7"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope[PEER_KEY] == ("127.0.0.1", 5000)


async def test_right_most_untrusted_hop_wins_over_what_the_client_wrote() -> None:
    scope = await seen_scope(scope_of(("127.0.0.1", 5000), "6.6.6.6, 198.51.100.9",
                                      "10.1.2.3"))
    assert scope["client"] == ("198.51.100.9", 0)


async def test_untrusted_peer_keeps_its_address_whatever_it_forwards() -> None:
    scope = await seen_scope(scope_of(("198.51.100.9", 4000), "127.0.0.1"))
    assert scope["client"] == ("198.51.100.9", 4000)
    assert PEER_KEY not in scope


async def test_no_trusted_proxies_never_reads_the_header() -> None:
    scope = await seen_scope(scope_of(("127.0.0.1", 5000), "203.0.113.7"), trusted=())
    assert scope["client"] == ("127.0.0.1", 5000)


async def test_websocket_handshake_scope_is_rewritten_too() -> None:
    scope = await seen_scope(scope_of(("10.0.0.5", 80), "203.0.113.8", kind="websocket"))
    assert scope["client"] == ("203.0.113.8", 0)


async def test_lifespan_and_peerless_scopes_pass_untouched() -> None:
    lifespan = {"type": "lifespan"}
    assert await seen_scope(dict(lifespan)) == lifespan
    assert (await seen_scope(scope_of(None, "203.0.113.7")))["client"] is None


async def test_a_reload_that_changes_the_trusted_list_applies_to_the_next_request() -> None:
    trusted: list[tuple[str, ...]] = [()]
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["client"])

    layer = ClientAddress(app, lambda: trusted[0])
    for now in [(), ("127.0.0.1/32",)]:
        trusted[0] = now
        await layer(scope_of(("127.0.0.1", 1), "203.0.113.7"), None, None)  # type: ignore[arg-type]
    assert seen == [("127.0.0.1", 1), ("203.0.113.7", 0)]


# -- a real gateway serve: the access log names the real client ---------------------------------


async def access_clients(output: str) -> dict[str, str]:
    """request id -> the access line's `client`."""
    found = {}
    for line in output.splitlines():
        fields = json.loads(line)
        if fields["logger"] == "hypercorn.access" and fields["request_id"]:
            found[fields["request_id"]] = fields["client"]
    return found


async def test_access_log_names_the_client_a_trusted_proxy_forwarded_for(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(reply({"ok": 1}))
    config = make_config({"up": up}, endpoint("/r", call("c", "up", "/x")), log_format="json")
    config["limits"] = {"trusted_proxies": ["127.0.0.1/32"]}
    server = await hypercorn_server(config)
    forged = {"X-Forwarded-For": "203.0.113.7"}
    async with httpx.AsyncClient(trust_env=False, timeout=10) as proxy, httpx.AsyncClient(
            trust_env=False, timeout=10,
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")) as outsider:
        via_proxy = await proxy.get(server.url + "/r",
                                    headers={**forged, "X-Request-ID": "via-proxy"})
        direct = await outsider.get(server.url + "/r",
                                    headers={**forged, "X-Request-ID": "forged"})
    assert via_proxy.status_code == direct.status_code == 200
    clients: dict[str, str] = {}
    for _ in range(100):  # the access line is written after the response
        clients = await access_clients(server.output())
        if len(clients) >= 2:
            break
        await asyncio.sleep(0.05)
    assert clients["via-proxy"] == "203.0.113.7:0"
    assert clients["forged"].startswith("127.0.0.2:")

