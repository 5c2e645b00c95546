"""`[auth]`, `[limits]` and an endpoint's `auth`/`scopes`/`rate`: validated at load, key paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jwt_support import jwks, new_keys

from gateway.config import Config, parse_config
from gateway.errors import ConfigError
from gateway.limits import Rate
from gateway.template import Inputs, Ref, lookup, missing, parse_refs

SECRET = "s" * 32
KEY = "partner-key-0123456789"


def config(auth: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
           path: str = "/x", env: dict[str, str] | None = None,
           endpoint: dict[str, Any] | None = None) -> Config:
    raw: dict[str, Any] = {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [{"route": "/e", "calls": [{"name": "c", "upstream": "u", "path": path}],
                       **(endpoint or {})}],
    }
    if auth is not None:
        raw["auth"] = auth
    if limits is not None:
        raw["limits"] = limits
    return parse_config(raw, env=env or {})


def problems(**kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(**kw)
    return caught.value.problems


def test_defaults_leave_auth_and_limits_off() -> None:
    got = config()
    assert not got.auth.enabled
    assert not got.limits.enabled
    assert got.endpoints[0].access.auth is None


def test_full_sections_load() -> None:
    got = config(
        auth={"secret": "${JWT_SECRET}", "issuer": "https://idp", "audience": "bff",
              "algorithms": ["HS256"], "leeway": 10, "required": True,
              "api_keys": {"partner-a": "${PA}"}},
        limits={"store": "redis://127.0.0.1:6379/0", "key": "jwt.sub", "rate": "100/minute",
                "burst": 20, "concurrency": 16, "trusted_proxies": ["127.0.0.1/32", "::1"]},
        env={"JWT_SECRET": SECRET, "PA": KEY},
        endpoint={"scopes": ["dashboard:read"], "rate": "10/second"},
        path="/users/{jwt.sub}/{client}")
    assert got.auth.secret == SECRET
    assert got.auth.api_keys == (("partner-a", KEY),)
    assert got.auth.required
    assert got.auth.leeway == 10
    assert got.limits.rate == Rate(100, 60, 20)
    assert got.limits.concurrency == 16
    assert got.limits.key == "jwt.sub"
    access = got.endpoints[0].access
    assert access.scopes == ("dashboard:read",)
    assert access.rate == Rate(10, 1)
    assert access.needs_auth(got.auth)


def test_jwks_file_is_read_at_load(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(jwks(new_keys()["ES256"])))
    got = config(auth={"jwks_file": str(path)})
    assert got.auth.file_keys is not None
    assert "ec-1" in got.auth.file_keys.by_kid
    path.write_text("[]")
    assert problems(auth={"jwks_file": str(path)}) == [
        'auth.jwks_file: JWKS is not an object with a "keys" list']


@pytest.mark.parametrize(("auth", "expected"), [
    ({"jwks_url": "ftp://x"}, "auth.jwks_url: 'ftp://x' is not an http(s) URL"),
    ({"jwks_url": 5}, "auth.jwks_url: must be a non-empty string"),
    ({"jwks_url": "http://a", "jwks_file": "k.json"}, "auth.jwks_file: give jwks_url or"),
    ({"jwks_file": "/nonexistent/k.json"}, "auth.jwks_file: cannot read"),
    ({"secret": "short"}, "auth.secret: must be at least 32 bytes"),
    ({"secret": "${NOPE}"}, "auth.secret: environment variable NOPE is not set"),
    ({"secret": SECRET, "algorithms": ["none"]}, "auth.algorithms[0]: 'none'"),
    ({"secret": SECRET, "algorithms": ["HS999"]}, "auth.algorithms[0]: 'HS999' is not one"),
    ({"secret": SECRET, "algorithms": []}, "auth.algorithms: must be a non-empty list"),
    ({"secret": SECRET, "leeway": -1}, "auth.leeway: must be a number of seconds"),
    ({"secret": SECRET, "leeway": True}, "auth.leeway: must be a number of seconds"),
    ({"secret": SECRET, "required": "yes"}, "auth.required: must be a boolean"),
    ({"required": True}, "auth.required: needs jwks_url, jwks_file, secret or api_keys"),
    ({"issuer": ""}, "auth.issuer: must be a non-empty string"),
    ({"audience": 3}, "auth.audience: must be a non-empty string"),
    ({"api_keys": "k"}, "auth.api_keys: must be a table"),
    ({"api_keys": {"a b": KEY}}, "auth.api_keys.a b: a client name is"),
    ({"api_keys": {"a": 1}}, "auth.api_keys.a: must be a non-empty string"),
    ({"api_keys": {"a": "short"}}, "auth.api_keys.a: an API key must be at least 16"),
    ({"api_keys": {"a": KEY, "b": KEY}}, "auth.api_keys.b: same key as auth.api_keys.a"),
    ({"jwks": "x"}, "auth.jwks: unknown key"),
    ("x", "auth: must be a table"),
])
def test_bad_auth_keys_are_refused_with_their_path(auth: Any, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(auth=auth)), problems(auth=auth)


@pytest.mark.parametrize(("limits", "expected"), [
    ({"store": "mongodb://x"}, "limits.store: must be \"memory\" or a redis:// URL"),
    ({"key": "cookie"}, "limits.key: must be \"ip\""),
    ({"key": "header."}, "limits.key: must be \"ip\""),
    ({"rate": 100}, "limits.rate: must be a string"),
    ({"rate": "100/day"}, "limits.rate: '100/day' is not N/second"),
    ({"rate": "0/second"}, "limits.rate: '0/second': N must be at least 1"),
    ({"rate": "5/second", "burst": 0}, "limits.burst: must be an integer >= 1"),
    ({"burst": 5}, "limits.burst: needs limits.rate"),
    ({"concurrency": 0}, "limits.concurrency: must be an integer >= 1"),
    ({"trusted_proxies": "10.0.0.0/8"}, "limits.trusted_proxies: must be a list"),
    ({"trusted_proxies": ["10.0.0.0/33"]}, "limits.trusted_proxies[0]: '10.0.0.0/33' is not"),
    ({"rates": "1/second"}, "limits.rates: unknown key"),
    ("x", "limits: must be a table"),
])
def test_bad_limits_keys_are_refused_with_their_path(limits: Any, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(limits=limits)), problems(limits=limits)


def test_header_limit_key_is_accepted() -> None:
    assert config(limits={"key": "header.X-Tenant", "rate": "1/second"}).limits.key == \
        "header.X-Tenant"


@pytest.mark.parametrize(("endpoint", "auth", "expected"), [
    ({"auth": "yes"}, {"secret": SECRET}, "endpoints[0].auth: must be a boolean"),
    ({"auth": True}, None, "endpoints[0].auth: needs [auth]"),
    ({"scopes": "a"}, {"secret": SECRET}, "endpoints[0].scopes: must be a list"),
    ({"scopes": ["a b"]}, {"secret": SECRET}, "endpoints[0].scopes: must be a list"),
    ({"scopes": ["a"], "auth": False}, {"secret": SECRET}, "endpoints[0].scopes: need auth"),
    ({"scopes": ["a"], "auth": True}, {"api_keys": {"p": KEY}}, "endpoints[0].scopes: need tok"),
    ({"rate": "fast"}, None, "endpoints[0].rate: 'fast' is not N/second"),
    ({"path": "/u/{jwt.sub}"}, None, "endpoints[0]: '{jwt.sub}' needs authentication"),
    ({"path": "/u/{jwt.sub}", "auth": False}, {"secret": SECRET, "required": True},
     "endpoints[0]: '{jwt.sub}' needs authentication"),
    ({"path": "/u", "query": {"who": "{jwt.sub}"}}, None, "endpoints[0]: '{jwt.sub}' needs"),
])
def test_bad_endpoint_access_keys_are_refused(endpoint: dict[str, Any], auth: Any,
                                              expected: str) -> None:
    path = endpoint.pop("path", "/x")
    query = endpoint.pop("query", None)
    kw: dict[str, Any] = {"auth": auth, "path": path, "endpoint": endpoint}
    if query is not None:
        raw: dict[str, Any] = {
            "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
            "endpoints": [{"route": "/e", "calls": [
                {"name": "c", "upstream": "u", "path": path, "query": query}]}]}
        with pytest.raises(ConfigError) as caught:
            parse_config(raw, env={})
        found = caught.value.problems
    else:
        found = problems(**kw)
    assert any(p.startswith(expected) for p in found), found


def test_jwt_placeholder_on_an_authenticated_endpoint_loads_and_renders() -> None:
    got = config(auth={"secret": SECRET, "required": True}, path="/users/{jwt.sub}/{client}")
    assert got.endpoints[0].calls[0].path == "/users/{jwt.sub}/{client}"
    refs = [r for r in parse_refs("/users/{jwt.sub}/{client}", (), ()) if isinstance(r, Ref)]
    assert [r.source for r in refs] == ["jwt", "client"]
    inputs = Inputs({}, {}, {}, None, {}, claims={"sub": "u-1"}, client="partner-a")
    assert [lookup(r, inputs, "c") for r in refs] == ["u-1", "partner-a"]
    nothing = Inputs({}, {}, {}, None, {})
    assert str(missing(refs[0], "c")) == "missing token claim 'jwt.sub' (needed by call 'c')"
    with pytest.raises(Exception, match="missing client key 'client'"):
        lookup(refs[1], nothing, "c")


def test_route_parameter_named_client_still_wins_and_jwt_is_reserved() -> None:
    refs = [r for r in parse_refs("/{client}", ("client",), ()) if isinstance(r, Ref)]
    assert refs[0].source == "param"
    raw: dict[str, Any] = {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [{"route": "/e/<jwt>", "calls": [{"name": "c", "upstream": "u"}]}]}
    with pytest.raises(ConfigError, match="route parameter 'jwt' clashes"):
        parse_config(raw, env={})


def test_jwks_url_reads_the_environment_like_an_upstream_url() -> None:
    raw = {"jwks_url": "${IDP_URL:-http://127.0.0.1:9100}/.well-known/jwks.json"}
    assert config(auth=raw).auth.jwks_url == "http://127.0.0.1:9100/.well-known/jwks.json"
    given = config(auth=raw, env={"IDP_URL": "https://idp.example"}).auth
    assert given.jwks_url == "https://idp.example/.well-known/jwks.json"
    assert "auth.jwks_url: environment variable NOPE is not set" in problems(
        auth={"jwks_url": "${NOPE}/jwks"})
