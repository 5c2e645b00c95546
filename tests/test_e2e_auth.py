"""Authentication at the ingress (SPEC 9): tokens signed per run, a real JWKS on loopback."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest
from jwt_support import SECRET, SigningKey, claims, hs256, jwks, new_keys
from redis_support import eventually
from support import (
    GatewayClientFactory,
    HypercornFactory,
    RawUpstreamFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
)
from webserver import Request, Response, json_response

from gateway import Gateway
from gateway.auth.jwks import FETCH_TIMEOUT

API_KEY = "partner-a-key-0123456789"


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return new_keys()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def idp(upstream: UpstreamFactory, *signing: SigningKey) -> Any:
    return await upstream(reply(jwks(*signing)))


def auth_config(users: Any, jwks_url: str | None = None, **auth: Any) -> dict[str, Any]:
    config = make_config(
        {"users": users},
        endpoint("/me/orders", call("orders", "users", "/users/{jwt.sub}/orders",
                                    query={"client": "{client}"})),
        endpoint("/me/dashboard", call("d", "users", "/dash"), scopes=["dashboard:read"]),
        endpoint("/tenant", call("t", "users", "/tenants/{jwt.tenant}")),
        endpoint("/public", call("p", "users", "/public"), auth=False),
    )
    config["auth"] = {"issuer": "https://idp.test", "audience": "bff", "required": True,
                      "api_keys": {"partner-a": API_KEY}, **auth}
    if jwks_url is not None:
        config["auth"]["jwks_url"] = jwks_url
    return config


async def test_no_credentials_is_a_401_bearer_challenge_with_the_envelope_and_no_call(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        keys: dict[str, SigningKey]) -> None:
    users = await upstream()
    provider = await idp(upstream, keys["RS256"])
    client = await gateway_client(auth_config(users, provider.url))
    response = await client.get("/me/orders", headers={"x-request-id": "r-401"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    body = await response.get_json()
    assert body["data"] is None
    assert body["error"].startswith("authentication required")
    assert response.headers["X-Request-ID"] == "r-401"
    assert users.seen == []


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_token_from_the_jwks_puts_its_claims_and_client_into_the_call(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        keys: dict[str, SigningKey], alg: str) -> None:
    users = await upstream()
    provider = await idp(upstream, *keys.values())
    client = await gateway_client(auth_config(users, provider.url))
    token = keys[alg].sign(claims(sub="user-42"))
    response = await client.get("/me/orders", headers=bearer(token))
    assert response.status_code == 200, await response.get_data()
    assert users.last.path == "/users/user-42/orders"
    assert users.last.query == {"client": "unknown"}  # limits.key = ip; the test client has none
    assert "authorization" not in users.last.headers  # only forward_headers pass it on
    assert len(provider.seen) == 1  # fetched at start, not per request


async def test_api_key_names_the_client_and_a_wrong_one_is_refused(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    config = auth_config(users, secret=SECRET)
    config["limits"] = {"key": "api_key"}
    client = await gateway_client(config)
    ok = await client.get("/public", headers={"X-API-Key": API_KEY})
    assert ok.status_code == 200
    wrong = await client.get("/tenant", headers={"X-API-Key": API_KEY[:-1] + "x"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert (await wrong.get_json())["error"] == "X-API-Key is not a known key"
    missing_claim = await client.get("/tenant", headers={"X-API-Key": API_KEY})
    assert missing_claim.status_code == 400  # an API key carries no claims
    assert "token claim 'jwt.tenant'" in (await missing_claim.get_json())["error"]
    assert [r.path for r in users.seen] == ["/public"]


def expired() -> dict[str, Any]:
    return claims(exp=int(time.time()) - 3600)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda k: k.sign(expired()), "token expired"),
    (lambda k: k.sign(claims(aud="someone-else")), "token audience is not this gateway's"),
    (lambda k: k.sign(claims(iss="https://evil.test")), "token issuer is not the configured one"),
    (lambda k: k.sign(claims(nbf=int(time.time()) + 3600)), "token not valid yet (nbf)"),
    (lambda k: k.sign(claims())[:-4] + "AAAA", "token signature does not verify"),
    (lambda k: k.sign(claims(), kid="rotated-away"), "token kid is not a known key"),
    (lambda k: "not-a-jwt", "token is not three dot-separated parts"),
])
async def test_a_refused_token_is_a_401_invalid_token_with_its_reason(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        keys: dict[str, SigningKey], make: Any, reason: str) -> None:
    users = await upstream()
    provider = await idp(upstream, keys["RS256"])
    client = await gateway_client(auth_config(users, provider.url))
    response = await client.get("/me/orders", headers=bearer(make(keys["RS256"])))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{reason}"')
    assert (await response.get_json())["error"] == reason
    assert users.seen == []


async def test_scopes_are_checked_from_scope_or_scp(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        keys: dict[str, SigningKey]) -> None:
    users = await upstream()
    provider = await idp(upstream, keys["ES256"])
    client = await gateway_client(auth_config(users, provider.url))
    sign = keys["ES256"].sign
    lacking = await client.get("/me/dashboard", headers=bearer(sign(claims(scope="orders"))))
    assert lacking.status_code == 403
    assert lacking.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", error_description="the token lacks a required '
        'scope", scope="dashboard:read"')
    assert (await lacking.get_json())["error"] == "missing scope: dashboard:read"
    assert users.seen == []
    by_scope = await client.get("/me/dashboard",
                                headers=bearer(sign(claims(scope="a dashboard:read"))))
    by_scp = await client.get("/me/dashboard",
                              headers=bearer(sign(claims(scp=["dashboard:read"]))))
    assert (by_scope.status_code, by_scp.status_code) == (200, 200)
    api_key = await client.get("/me/dashboard", headers={"X-API-Key": API_KEY})
    assert api_key.status_code == 403  # an API key carries no scopes


async def test_a_missing_claim_is_a_400_and_a_present_one_fills_the_path(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(auth_config(users, secret=SECRET))
    response = await client.get("/tenant", headers=bearer(hs256(claims())))
    assert response.status_code == 400
    assert (await response.get_json())["error"] == (
        "missing token claim 'jwt.tenant' (needed by call 't')")
    walk = await client.get("/tenant", headers=bearer(hs256(claims(tenant="a/../admin"))))
    assert walk.status_code == 400  # a claim is checked like any request value
    assert "'.' or '..'" in (await walk.get_json())["error"]
    ok = await client.get("/tenant", headers=bearer(hs256(claims(tenant="acme/eu"))))
    assert ok.status_code == 200
    assert users.last.path == "/tenants/acme%2Feu"  # one segment, like any value
    assert len(users.seen) == 1


async def test_a_public_endpoint_serves_anonymous_and_ignores_a_bad_token(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(auth_config(users, secret=SECRET))
    assert (await client.get("/public")).status_code == 200
    bad = await client.get("/public", headers=bearer("x.y.z"))
    assert bad.status_code == 200
    basic = await client.get("/me/orders", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert basic.status_code == 401  # another scheme is not a credential of the gateway's


async def test_auth_failures_are_counted_by_reason(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(auth_config(users, secret=SECRET))
    await client.get("/me/orders")
    await client.get("/me/orders", headers=bearer(hs256(expired())))
    await client.get("/me/orders", headers=bearer("a.b.c"))
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'gateway_auth_failures_total{reason="missing"} 1.0' in text
    assert 'gateway_auth_failures_total{reason="expired"} 1.0' in text
    assert 'gateway_auth_failures_total{reason="invalid_token"} 1.0' in text
    assert 'gateway_auth_failures_total{reason="insufficient_scope"} 0.0' in text


async def test_an_identity_provider_down_at_start_is_a_503_until_its_keys_arrive(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        keys: dict[str, SigningKey]) -> None:
    users = await upstream()
    up = asyncio.Event()

    async def provider_handler(request: Request) -> Response:
        if not up.is_set():
            return json_response({"error": "starting"}, status=503)
        return json_response(jwks(keys["RS256"]))

    provider = await upstream(provider_handler)
    gw = Gateway(auth_config(users, provider.url))
    client = await gateway_client(gw)  # starts although the provider answers 503
    token = keys["RS256"].sign(claims())
    response = await client.get("/me/orders", headers=bearer(token))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "identity provider keys unavailable" in (await response.get_json())["error"]
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    body = await ready.get_json()
    assert "JWKS answered 503" in body["reason"]
    assert body["auth"]["keys_loaded"] is False
    assert (await client.get("/public")).status_code == 200  # public endpoints still serve
    assert users.seen[-1].path == "/public"
    up.set()
    runtime = gw.current_runtime()
    assert runtime.jwks is not None
    jwks_cache = runtime.jwks
    await eventually(lambda: jwks_cache.loaded, within=5.0)  # retried with a backoff
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/me/orders", headers=bearer(token))).status_code == 200


async def test_a_token_of_the_fixed_secret_is_served_while_the_jwks_is_unavailable(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        keys: dict[str, SigningKey]) -> None:
    users = await upstream()
    provider = await upstream(reply({"error": "down"}, status=503))
    config = auth_config(users, provider.url, secret=SECRET,
                         algorithms=["RS256", "HS256"])
    client = await gateway_client(config)
    fixed = await client.get("/me/orders", headers=bearer(hs256(claims())))
    assert fixed.status_code == 200  # verified with auth.secret: no JWKS needed
    fetched = await client.get("/me/orders", headers=bearer(keys["RS256"].sign(claims())))
    assert fetched.status_code == 503  # this one needs the identity provider's keys
    assert "identity provider keys unavailable" in (await fetched.get_json())["error"]


async def test_an_identity_provider_that_never_answers_does_not_hold_up_start(
        upstream: UpstreamFactory, raw_upstream: RawUpstreamFactory,
        hypercorn_server: HypercornFactory, http: httpx.AsyncClient,
        keys: dict[str, SigningKey]) -> None:
    users = await upstream()
    hung_up = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # returns only when the gateway gives up on the fetch
        hung_up.set()

    provider = await raw_upstream(never_answer)
    gateway = await hypercorn_server(auth_config(users, provider.url + "/jwks.json"))
    # Serving while the first fetch is still pending: had start-up waited, the fetch would
    # have timed out (FETCH_TIMEOUT) and hung up, and its retry opened a second connection.
    assert provider.connections == 1
    assert not hung_up.is_set()
    token = keys["RS256"].sign(claims())
    refused = await http.get(gateway.url + "/me/orders", headers=bearer(token))
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert "identity provider keys unavailable" in refused.json()["error"]
    ready = await http.get(gateway.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["auth"]["keys_loaded"] is False
    assert "JWKS not fetched yet" in ready.json()["reason"]
    assert (await http.get(gateway.url + "/public")).status_code == 200
    assert not hung_up.is_set()  # all of that while the provider still holds the fetch
    gateway.process.send_signal(signal.SIGTERM)  # the pending fetch does not delay the stop
    assert await asyncio.wait_for(gateway.process.wait(), FETCH_TIMEOUT) == 0
