"""What a client (or an upstream) can and cannot make the gateway send, checked at the upstream.

Each upstream here records the raw request it received, so the assertions are about bytes
on the wire: the path (still percent-encoded), the query string, the headers.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import (
    GatewayClientFactory,
    RecordingServer,
    UpstreamFactory,
    call,
    echo,
    endpoint,
    free_port,
    make_config,
    reply,
)

from gateway import ConfigError, Gateway


def _paths_config(server: RecordingServer, base: str = "") -> dict[str, Any]:
    up = {"url": server.url + base}
    return make_config(
        {"up": up},
        endpoint("/items/<name>", call("item", "up", "/items/{name}")),
        endpoint("/files/<path:rest>", call("file", "up", "/files/{rest}")),
        endpoint("/search", call("found", "up", "/s/{query.q}",
                                 query={"q": "{query.q}", "fixed": "1"})),
        endpoint("/filter", call("found", "up", "/filter", query={"q": "{query.q}"})),
        endpoint("/by-header", call("found", "up", "/h/{header.x-key}")),
    )


# value sent by the client -> how the one path segment / query value must look upstream
HOSTILE = [
    ("a/b", "a%2Fb"),
    ("..%2F..%2Fadmin", "..%252F..%252Fadmin"),  # text: '../..' itself is a 400 (below)
    ("%2e%2e", "%252e%252e"),
    ("%2F..%2Fadmin", "%252F..%252Fadmin"),
    ("x?x=1", "x%3Fx%3D1"),
    ("x&fixed=2", "x%26fixed%3D2"),
    ("#frag", "%23frag"),
    ("@evil.com", "%40evil.com"),
    ("user:pw@evil.com:80", "user%3Apw%40evil.com%3A80"),
    ("//evil.com/x", "%2F%2Fevil.com%2Fx"),
    ("a b+c", "a%20b%2Bc"),
    ("é", "%C3%A9"),
]


@pytest.mark.parametrize(("value", "encoded"), HOSTILE)
async def test_query_value_is_one_encoded_segment_and_one_query_value(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, value: str, encoded: str
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_paths_config(up))
    response = await client.get("/search", query_string={"q": value})
    assert response.status_code == 200, await response.get_data(as_text=True)
    seen = up.last
    assert seen.path == f"/s/{encoded}"
    assert seen.raw_query == f"q={encoded}&fixed=1"
    assert seen.query == {"q": value, "fixed": "1"}
    assert seen.headers["host"] == f"127.0.0.1:{up.port}"


@pytest.mark.parametrize(("value", "encoded"), HOSTILE[:6])
async def test_header_value_is_one_encoded_segment(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, value: str, encoded: str
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_paths_config(up))
    response = await client.get("/by-header", headers={"X-Key": value})
    assert response.status_code == 200
    assert up.last.path == f"/h/{encoded}"


@pytest.mark.parametrize(
    ("raw_path", "encoded"),
    [
        ("/items/%40evil.com", "%40evil.com"),
        ("/items/a%3Fb%3Dc", "a%3Fb%3Dc"),
        ("/items/a%23frag", "a%23frag"),
        ("/items/%252e%252e", "%252e%252e"),
        ("/items/...", "..."),
        ("/files/a/b", "a%2Fb"),
        ("/files/a/...b/c..", "a%2F...b%2Fc.."),
    ],
)
async def test_route_value_is_one_encoded_segment(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, raw_path: str,
    encoded: str
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_paths_config(up))
    response = await client.get(raw_path)
    assert response.status_code == 200, await response.get_data(as_text=True)
    prefix = "/items/" if raw_path.startswith("/items/") else "/files/"
    assert up.last.path == prefix + encoded


async def test_base_path_of_the_upstream_cannot_be_left(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_paths_config(up, base="/api/v1"))
    response = await client.get("/search", query_string={"q": "../../../admin"})
    assert response.status_code == 400  # a dot segment, even encoded, never goes upstream
    assert up.requests == 0
    response = await client.get("/search", query_string={"q": "//admin"})
    assert response.status_code == 200
    assert up.last.path == "/api/v1/s/%2F%2Fadmin"


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/items/%2e%2e", None),
        ("/items/%2E", None),
        ("/items/..", None),
        ("/files/..", None),
        ("/files/a%2F..%2F..%2Fetc", None),
        ("/files/x/../../etc/passwd", None),
        ("/files/./x", None),
        ("/items/a%0d%0ab", None),
        ("/items/a%0A", None),
        ("/items/a%00", None),
        ("/files/a/%0d%0a/b", None),
        ("/search", {"q": "../../admin"}),
        ("/search", {"q": "a/./b"}),
        ("/search", {"q": ".."}),
        ("/search", {"q": "."}),
        ("/search", {"q": "a\r\nX-Injected: 1"}),
        ("/search", {"q": "a\nb"}),
        ("/search", {"q": "a\x00b"}),
        ("/filter", {"q": "a\r\nb"}),
    ],
)
async def test_dot_segments_and_control_characters_are_400_and_nothing_is_sent(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, path: str,
    query: dict[str, str] | None
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_paths_config(up))
    response = await client.get(path, query_string=query)
    assert response.status_code == 400, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["data"] is None
    assert body["error"]
    assert up.requests == 0


async def test_dot_segment_in_a_query_value_is_harmless(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_paths_config(up))
    response = await client.get("/filter", query_string={"q": ".."})
    assert response.status_code == 200
    assert up.last.path == "/filter"
    assert up.last.raw_query == "q=.."


async def test_dot_segment_from_an_upstream_reply_fails_the_call_not_the_path(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    first = await upstream(reply({"next": ".."}))
    second = await upstream(echo)
    client = await gateway_client(make_config(
        {"first": first, "second": second},
        endpoint("/x", call("first", "first"), call("second", "second", "/v1/{first.next}"))))
    response = await client.get("/x")
    assert response.status_code == 502
    assert second.requests == 0


# -- headers ----------------------------------------------------------------------------------


def _headers_config(server: RecordingServer, **upstream_keys: Any) -> dict[str, Any]:
    return make_config({"up": {"url": server, **upstream_keys}},
                       endpoint("/x", call("seen", "up")))


async def test_only_allowlisted_headers_reach_the_upstream(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_headers_config(up, forward_headers=["authorization",
                                                                       "X-Tenant"]))
    response = await client.get("/x", headers={
        "Authorization": "Bearer t0k3n",
        "X-Tenant": "acme",
        "Cookie": "session=secret",
        "X-Other": "nope",
        "X-Forwarded-Host": "evil.com",
        "Host": "evil.com",
    })
    assert response.status_code == 200
    seen = up.last.headers
    assert seen["authorization"] == "Bearer t0k3n"
    assert seen["x-tenant"] == "acme"
    assert "cookie" not in seen
    assert "x-other" not in seen
    assert "x-forwarded-host" not in seen
    assert seen["host"] == f"127.0.0.1:{up.port}"


async def test_allowlisted_header_named_in_connection_is_not_forwarded(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_headers_config(up, forward_headers=["authorization",
                                                                       "x-tenant"]))
    response = await client.get("/x", headers={
        "Connection": "keep-alive, X-Tenant",
        "X-Tenant": "acme",
        "Authorization": "Bearer t0k3n",
    })
    assert response.status_code == 200
    seen = up.last.headers
    assert "x-tenant" not in seen
    assert seen["authorization"] == "Bearer t0k3n"


async def test_hop_by_hop_headers_never_reach_the_upstream(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_headers_config(up, forward_headers=["authorization"]))
    response = await client.get("/x", headers={
        "Connection": "x-secret",
        "X-Secret": "1",
        "Keep-Alive": "timeout=99",
        "TE": "trailers",
        "Upgrade": "websocket",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "Trailer": "x-late",
    })
    assert response.status_code == 200
    seen = up.last.headers
    for name in ("x-secret", "keep-alive", "te", "upgrade", "proxy-authorization",
                 "proxy-connection", "trailer"):
        assert name not in seen, name
    assert seen.get("connection", "keep-alive").lower() in ("keep-alive", "close")


@pytest.mark.parametrize("name", ["connection", "Keep-Alive", "te", "upgrade",
                                  "proxy-authorization", "transfer-encoding"])
def test_hop_by_hop_header_cannot_be_allowlisted(name: str) -> None:
    config = make_config({"up": {"url": "http://127.0.0.1:9", "forward_headers": [name]}},
                         endpoint("/x", call("a", "up")))
    with pytest.raises(ConfigError, match=r"upstreams\.up\.forward_headers\[0\]"):
        Gateway(config)


async def test_upstream_response_headers_do_not_leak_to_the_client(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(reply({"ok": 1}, headers={"Set-Cookie": "sid=1", "X-Internal": "db7",
                                                  "Keep-Alive": "timeout=5"}))
    client = await gateway_client(_headers_config(up))
    response = await client.get("/x")
    assert response.status_code == 200
    for name in ("set-cookie", "x-internal", "keep-alive"):
        assert name not in response.headers


async def test_upstream_cookies_are_never_replayed_to_later_calls(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    async def sets_cookie(request: Any) -> Any:
        response = await echo(request)
        response.headers.add("Set-Cookie", "session=user-a; Path=/")
        return response

    up = await upstream(sets_cookie)
    client = await gateway_client(_headers_config(up))
    await client.get("/x")
    await client.get("/x")
    assert len(up.seen) == 2
    assert "cookie" not in up.seen[1].headers


async def test_static_headers_with_env_values_arrive_and_cannot_be_overridden(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2E_UPSTREAM_KEY", "k-123")
    up = await upstream(echo)
    client = await gateway_client(_headers_config(
        up, headers={"X-Api-Key": "${E2E_UPSTREAM_KEY}", "X-Static": "plain"}))
    response = await client.get("/x", headers={"X-Api-Key": "client-forged"})
    assert response.status_code == 200
    seen = up.last.headers
    assert seen["x-api-key"] == "k-123"
    assert seen["x-static"] == "plain"


async def test_environment_proxies_are_ignored(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await upstream(reply({"from": "proxy"}))
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    up = await upstream(reply({"from": "upstream"}))
    client = await gateway_client(_headers_config(up))
    response = await client.get("/x")
    assert response.status_code == 200
    assert (await response.get_json())["data"] == {"seen": {"from": "upstream"}}
    assert proxy.requests == 0
    assert up.requests == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, status: int
) -> None:
    target = await upstream(reply({"stolen": True}))
    redirecting = await upstream(reply({}, status=status,
                                       headers={"Location": target.url + "/stolen"}))
    client = await gateway_client(_headers_config(redirecting))
    response = await client.get("/x")
    assert response.status_code == 502
    body = await response.get_json()
    assert body["meta"]["calls"]["seen"]["status"] == status
    assert redirecting.requests == 1
    assert target.requests == 0
