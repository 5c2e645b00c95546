"""Credentials -> `Identity`: the bearer token or the `X-API-Key` a message carries.

A token wins over an API key when both are sent. An `Authorization` header with
another scheme (`Basic ...`), or a bearer token when no token source is configured,
is not a credential of the gateway's: it may be meant for an upstream that
`forward_headers` passes it to, so it is ignored here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .apikeys import ApiKeys
from .identity import ANONYMOUS, Identity
from .jwks import Key, KeySet
from .tokens import TokenPolicy, _TokenError, choose_key, read_header, verify

__all__ = ["Authenticator"]


class _Settings(Protocol):
    """What `config.auth.AuthSettings` gives (a Protocol: auth/ does not import config/)."""

    @property
    def secret(self) -> str | None: ...
    @property
    def issuer(self) -> str | None: ...
    @property
    def audience(self) -> str | None: ...
    @property
    def algorithms(self) -> tuple[str, ...]: ...
    @property
    def leeway(self) -> float: ...
    @property
    def api_keys(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def file_keys(self) -> KeySet | None: ...
    @property
    def tokens(self) -> bool: ...


class _Keys(Protocol):
    """A JWKS source: `JwksCache` (refreshes on an unknown kid), or a fixed set."""

    @property
    def loaded(self) -> bool: ...
    async def keys_soon(self) -> KeySet: ...
    async def refresh_for(self, kid: str) -> KeySet: ...


class _AuthFailure(Exception):
    """Credentials were sent and refused; `reason` is one line for the client.

    `token` tells a refused bearer token (`error="invalid_token"`) from a refused API key;
    `metric` is the bounded `reason` label of `gateway_auth_failures_total`.
    """

    def __init__(self, reason: str, *, token: bool, metric: str) -> None:
        super().__init__(reason)
        self.reason, self.token, self.metric = reason, token, metric


class Authenticator:
    """Checks a message's credentials against `[auth]`; one per runtime."""

    def __init__(self, settings: _Settings, jwks: _Keys | None = None) -> None:
        self.policy = TokenPolicy(algorithms=settings.algorithms, issuer=settings.issuer,
                                  audience=settings.audience, leeway=settings.leeway)
        self.tokens = settings.tokens
        self.api_keys = ApiKeys(dict(settings.api_keys))
        self._jwks = jwks
        fixed: list[Key] = []
        if settings.file_keys is not None:
            fixed += settings.file_keys.keys
        if settings.secret is not None:
            fixed += KeySet.from_secret(settings.secret).keys
        self._fixed = KeySet.of(fixed)
        self._merged: tuple[KeySet, KeySet] | None = None  # (fetched, fetched + fixed)

    def kinds(self) -> str:
        """What a client may send, for the "authentication required" line."""
        sent = (["Authorization: Bearer TOKEN"] if self.tokens else []) + (
            ["X-API-Key"] if self.api_keys else [])
        return " or ".join(sent)

    async def identify(self, headers: Mapping[str, str] | Any) -> Identity:
        """The caller; `ANONYMOUS` without credentials of ours.

        Raises `_AuthFailure` for refused credentials and `_KeysUnavailable` when a token
        was sent but the identity provider's keys could not be fetched yet.
        """
        token = _bearer(headers.get("authorization")) if self.tokens else None
        if token is not None:
            return Identity.from_claims(await self._claims(token))
        presented = headers.get("x-api-key")
        if presented is not None and self.api_keys:
            client = self.api_keys.client_for(presented)
            if client is None:
                raise _AuthFailure("X-API-Key is not a known key", token=False,
                                  metric="invalid_api_key")
            return Identity.from_api_key(client)
        return ANONYMOUS

    async def _claims(self, token: str) -> dict[str, Any]:
        try:
            if not token:
                raise _TokenError("empty bearer token")
            header = read_header(token)
            return verify(token, self.policy, await self._keys(header), header)
        except _TokenError as error:
            metric = "expired" if error.reason == "token expired" else "invalid_token"
            raise _AuthFailure(error.reason, token=True, metric=metric) from None

    async def _keys(self, header: dict[str, Any]) -> KeySet:
        kid = header.get("kid")
        if self._jwks is None:
            return self._fixed
        if not self._jwks.loaded and self._fixed_fits(kid, header["alg"]):
            return self._fixed  # `auth.secret` does not need the JWKS
        fetched = await self._jwks.keys_soon()  # _KeysUnavailable until a fetch succeeded
        if kid is not None and kid not in fetched.by_kid:
            fetched = await self._jwks.refresh_for(kid)  # at most once a minute
        if not self._fixed.keys:
            return fetched
        if self._merged is None or self._merged[0] is not fetched:
            self._merged = (fetched, KeySet.of([*fetched.keys, *self._fixed.keys]))
        return self._merged[1]

    def _fixed_fits(self, kid: str | None, alg: str) -> bool:
        try:
            choose_key(self._fixed, kid, alg)
        except _TokenError:
            return False
        return True


def _bearer(value: str | None) -> str | None:
    """The token of `Authorization: Bearer TOKEN`; None for no header or another scheme."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()
