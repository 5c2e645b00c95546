"""Who may call an endpoint, as the OpenAPI document says it (SPEC 9; pure).

The document declares the credentials the gateway takes (`components.securitySchemes`:
`bearerAuth`, a JWT in `Authorization: Bearer`, when `[auth]` has a token source;
`apiKeyAuth`, the `X-API-Key` header, when it has `api_keys`) and, per operation, the
requirement that the ingress enforces (`auth/check.py`, `limits/check.py`):

- an endpoint whose `auth` is on: any one of the schemes, with its `scopes` as the
  bearer requirement's list (an API key carries no scopes, so it is not offered where
  scopes are required; scopes without a token source are a config error); 401 (and
  403 with scopes) with `WWW-Authenticate`; 503 while a `jwks_url` was not fetched yet;
- a public endpoint, with `[auth]` on: no credentials (`{}`) or any scheme, since valid
  ones still name the caller for `{client}` and the limits;
- a rate (`limits.rate` or the endpoint's own) or `limits.concurrency`: 429 with
  `Retry-After`, `RateLimit-Policy` and `RateLimit`; with a rate, a 200 carries the last
  two as well.

Without `[auth]` and `[limits]` nothing is added: the document is as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config
from ..config.auth import AuthSettings, EndpointAccess
from ..plan import Plan
from ..routing import Target

BEARER, API_KEY = "bearerAuth", "apiKeyAuth"
_DEFAULT = EndpointAccess()  # a code view's: auth.required, no scopes, limits.rate
ErrorResponse = Callable[[str, dict[str, Any]], dict[str, Any]]  # (description, headers)


def _header(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string"}, "description": description}


_CHALLENGE = {"WWW-Authenticate": _header(
    'Bearer, with error="invalid_token" and a one-line error_description when a token '
    'was refused, or error="insufficient_scope" and the scopes needed')}
_RATE_FIELDS = {
    "RateLimit-Policy": _header('the quotas that apply, e.g. "default";q=100;w=60 '
                                "(draft-ietf-httpapi-ratelimit-headers)"),
    "RateLimit": _header('what remains of each, e.g. "default";r=42;t=17'),
}
_RETRY_AFTER = {"Retry-After": _header("seconds to wait before the next attempt")}


def access_of(target: Target) -> EndpointAccess:
    """The endpoint's `auth`, `scopes` and `rate` (a code view has the defaults)."""
    return target.access if isinstance(target, Plan) else _DEFAULT


def security_schemes(auth: AuthSettings) -> dict[str, Any]:
    """`components.securitySchemes`: the credentials this config accepts."""
    schemes: dict[str, Any] = {}
    if auth.tokens:
        checked = [name for name, value in (("iss", auth.issuer), ("aud", auth.audience))
                   if value is not None]
        schemes[BEARER] = {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": (f"a JWT signed with {', '.join(auth.algorithms)}; exp, nbf and "
                            f"iat are checked" + (f", and {' and '.join(checked)}"
                                                  if checked else ""))}
    if auth.api_keys:
        schemes[API_KEY] = {"type": "apiKey", "in": "header", "name": "X-API-Key",
                            "description": "an API key issued to a client"}
    return schemes


def security(auth: AuthSettings, access: EndpointAccess) -> list[dict[str, list[str]]] | None:
    """The operation's `security` requirement; None when `[auth]` is off."""
    if not auth.enabled:
        return None
    if not access.needs_auth(auth):
        optional: list[dict[str, list[str]]] = [{}]
        return optional + [{name: []} for name in security_schemes(auth)]
    required: list[dict[str, list[str]]] = []
    if auth.tokens:
        required.append({BEARER: list(access.scopes)})
    if auth.api_keys and not access.scopes:  # scopes need tokens (a config rule)
        required.append({API_KEY: []})
    return required


def limited(config: Config, access: EndpointAccess) -> tuple[bool, bool]:
    """(a rate applies, any limit applies) to this endpoint."""
    rate = access.rate is not None or config.limits.rate is not None
    return rate, rate or config.limits.concurrency is not None


def apply(op: dict[str, Any], config: Config, target: Target, error: ErrorResponse) -> None:
    """Add the operation's `security` and the responses its auth and limits can give."""
    access = access_of(target)
    required = security(config.auth, access)
    if required is not None:
        op["security"] = required
    responses = op["responses"]
    if config.auth.enabled and access.needs_auth(config.auth):
        responses["401"] = error("no credentials, or a token or API key that is refused",
                                 _CHALLENGE)
        if access.scopes:
            responses["403"] = error(f"the token lacks a scope: {' '.join(access.scopes)}",
                                     _CHALLENGE)
        if config.auth.jwks_url is not None:
            _add_503(responses, error, "the identity provider's keys are not fetched yet")
    rate, any_limit = limited(config, access)
    if any_limit:
        responses["429"] = error("over this client's rate or requests in flight; nothing "
                                 "was called", {**_RETRY_AFTER, **_RATE_FIELDS})
    if rate and "200" in responses:
        responses["200"]["headers"] = {**responses["200"].get("headers", {}), **_RATE_FIELDS}


def _add_503(responses: dict[str, Any], error: ErrorResponse, description: str) -> None:
    existing = responses.get("503")
    if existing is None:
        responses["503"] = error(description, _RETRY_AFTER)
    else:  # a breaker's 503 already: one response, both reasons
        existing["description"] = f"{existing['description']}; or {description}"
