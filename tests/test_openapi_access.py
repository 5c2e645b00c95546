"""The OpenAPI document's security: the schemes `[auth]` accepts, each operation's
requirement as the ingress enforces it, and the 401/403/429/503 its auth and limits give."""

from __future__ import annotations

from typing import Any

import schemathesis
from support import call, endpoint, make_config

from gateway import Fan, Gateway
from gateway.openapi import document

SECRET = "an-hs256-secret-of-at-least-32-bytes!"
KEY = "partner-a-key-0123456789"


def _config(auth: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
            **upstream: Any) -> dict[str, Any]:
    """/me (auth, a scope when tokens are configured, its own rate), /open, /default."""
    me: dict[str, Any] = {"rate": "10/second"}
    if auth is not None:
        me["auth"] = True
        if auth.keys() & {"secret", "jwks_url", "jwks_file"}:
            me["scopes"] = ["dashboard:read"]
    config = make_config(
        {"up": {"url": "http://127.0.0.1:9", **upstream}},
        endpoint("/me", call("me", "up", "/me"), **me),
        endpoint("/open", call("open", "up", "/open"), **({"auth": False} if auth else {})),
        endpoint("/default", call("default", "up", "/default")))
    if auth is not None:
        config["auth"] = auth
    if limits is not None:
        config["limits"] = limits
    return config


def _doc(config: dict[str, Any], code_view: bool = False) -> dict[str, Any]:
    gw = Gateway(config)
    if code_view:
        @gw.aggregate("/code")
        async def code(fan: Fan) -> dict[str, Any]:
            return {}
    return document(gw.config, gw.router)


FULL = {"secret": SECRET, "api_keys": {"partner-a": KEY}, "required": True,
        "issuer": "https://idp.test", "audience": "bff"}


def op(doc: dict[str, Any], path: str) -> dict[str, Any]:
    operation: dict[str, Any] = doc["paths"][path]["get"]
    return operation


def test_document_declares_the_bearer_jwt_and_api_key_schemes() -> None:
    doc = _doc(_config(FULL))
    schemathesis.openapi.from_dict(doc).validate()  # the OAS 3.1 meta-schema
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["bearerAuth"]["bearerFormat"] == "JWT"
    assert "iss and aud" in schemes["bearerAuth"]["description"]
    assert schemes["apiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                     "description": "an API key issued to a client"}


def test_only_the_configured_schemes_are_declared() -> None:
    assert list(_doc(_config({"secret": SECRET}))["components"]["securitySchemes"]) == [
        "bearerAuth"]
    assert list(_doc(_config({"api_keys": {"partner-a": KEY}}))["components"][
        "securitySchemes"]) == ["apiKeyAuth"]


def test_each_operation_requires_what_its_endpoint_enforces() -> None:
    doc = _doc(_config(FULL), code_view=True)
    # Scopes: only a token can carry them.
    assert op(doc, "/me")["security"] == [{"bearerAuth": ["dashboard:read"]}]
    # auth.required applies to endpoints without their own `auth`, code views included.
    assert op(doc, "/default")["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    assert op(doc, "/code")["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    # Public: no credentials, or any (they still name the caller).
    assert op(doc, "/open")["security"] == [{}, {"bearerAuth": []}, {"apiKeyAuth": []}]


def test_refusals_of_auth_are_documented_where_they_can_happen() -> None:
    doc = _doc(_config(FULL))
    me, default, public = op(doc, "/me"), op(doc, "/default"), op(doc, "/open")
    assert {"401", "403"} <= me["responses"].keys()
    assert "WWW-Authenticate" in me["responses"]["401"]["headers"]
    assert "dashboard:read" in me["responses"]["403"]["description"]
    assert "401" in default["responses"]
    assert "403" not in default["responses"]
    assert not {"401", "403"} & public["responses"].keys()
    assert me["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"}


def test_an_identity_provider_not_fetched_yet_is_a_503_beside_the_breakers() -> None:
    jwks = {"jwks_url": "http://127.0.0.1:9/jwks.json", "required": True}
    plain = op(_doc(_config(jwks)), "/default")["responses"]["503"]
    assert "identity provider" in plain["description"]
    assert "Retry-After" in plain["headers"]
    both = op(_doc(_config(jwks, breaker={"failures": 3, "reset": 60})), "/default")
    assert "breaker" in both["responses"]["503"]["description"]
    assert "identity provider" in both["responses"]["503"]["description"]
    assert "503" not in op(_doc(_config(jwks)), "/open")["responses"]


def test_limits_document_429_and_the_ratelimit_fields() -> None:
    doc = _doc(_config(limits={"concurrency": 4}))
    # Only the concurrency: a 429 everywhere, no RateLimit on a 200 except /me's own rate.
    for path in ("/open", "/default", "/me"):
        refused = op(doc, path)["responses"]["429"]
        assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= refused["headers"].keys()
    assert "RateLimit" not in op(doc, "/open")["responses"]["200"]["headers"]
    assert "RateLimit" in op(doc, "/me")["responses"]["200"]["headers"]
    rated = _doc(_config(limits={"rate": "100/minute"}))
    assert "RateLimit-Policy" in op(rated, "/open")["responses"]["200"]["headers"]
    assert "security" not in op(rated, "/open")  # limits alone ask for no credentials


def test_without_auth_and_limits_the_document_adds_nothing() -> None:
    config = _config()
    config["endpoints"][0].pop("rate")
    doc = _doc(config)
    assert "securitySchemes" not in doc["components"]
    for item in doc["paths"].values():
        for operation in item.values():
            assert "security" not in operation
            assert not {"401", "403", "429"} & operation["responses"].keys()


def test_schemathesis_finds_every_auth_and_limit_answer_documented() -> None:
    """Against the in-process app with [auth] and [limits] on: whatever schemathesis sends
    (no token, a made-up X-API-Key, a burst past /me's rate), the answer is documented."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.python import asgi
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    config = _config({"secret": SECRET, "api_keys": {"partner-a": KEY}, "required": True},
                     {"rate": "1000/second", "concurrency": 8})
    app = Gateway(config).app
    statuses: set[int] = set()
    try:
        schema = schemathesis.openapi.from_asgi("/_gateway/openapi.json", app)

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy())
        def check(case: Any) -> None:
            response = case.call()
            statuses.add(response.status_code)
            assert response.status_code != 500, response.text
            case.validate_response(response, checks=[
                status_code_conformance, content_type_conformance,
                response_headers_conformance, response_schema_conformance])

        check()
    finally:
        asgi.shutdown_lifespans()
    assert 401 in statuses  # the door refused, as documented
