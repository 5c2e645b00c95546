"""The one origin policy: CORS for HTTP, the handshake rule for `/ws` (pure)."""

from __future__ import annotations

from gateway.origin import OriginPolicy


def test_listed_origin_gets_cors_headers_others_none() -> None:
    policy = OriginPolicy(["https://app.example"])
    assert policy.enabled
    got = policy.reply_headers({"origin": "https://app.example"})
    assert got["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Server-Timing" in got["Access-Control-Expose-Headers"]
    assert policy.reply_headers({"origin": "https://evil.example"}) == {}
    assert policy.reply_headers({}) == {}


def test_preflight_only_from_an_allowed_origin() -> None:
    policy = OriginPolicy(["*"])
    asked = {"origin": "https://a.example", "access-control-request-method": "POST"}
    assert policy.is_preflight("OPTIONS", asked)
    assert not policy.is_preflight("GET", asked)
    assert not policy.is_preflight("OPTIONS", {"origin": "https://a.example"})
    assert not OriginPolicy(["https://b.example"]).is_preflight("OPTIONS", asked)
    assert policy.preflight_headers(asked)["Access-Control-Allow-Headers"] == "content-type"


def test_socket_any_origin_without_a_list_else_listed_or_same_host() -> None:
    assert OriginPolicy([]).allows_socket("https://x.example", {})
    policy = OriginPolicy(["https://app.example"])
    assert policy.allows_socket("https://app.example", {})
    assert policy.allows_socket("http://gw:8000", {"host": "gw:8000"})
    assert not policy.allows_socket("https://x.example", {"host": "gw:8000"})
