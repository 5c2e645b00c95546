"""The ingress's authentication check (SPEC 9): who is calling, and may they call this.

For each message (not a job's replay: it keeps the identity it was submitted with) on an
endpoint whose `auth` is on:

- no credentials: 401, `WWW-Authenticate: Bearer`;
- a refused token: 401, `WWW-Authenticate: Bearer error="invalid_token",
  error_description="<the one-line reason>"`; a refused API key: 401, `Bearer`;
- the identity provider's keys not fetched yet (it was down at start): 503;
- a scope missing: 403, `WWW-Authenticate: Bearer error="insufficient_scope"`.

On a public endpoint valid credentials still name the caller (its `{client}`, its
limits) and refused ones are ignored. A `/ws` handshake has no endpoint yet: credentials
it sends must be valid (401 refuses the socket), none is fine. The identity goes into
`door.extras["identity"]`.

A `/ws` message is not authenticated again: the socket's identity (the handshake's, which
`stream.py` puts in the message's door) is checked against the message's endpoint, and a
token past its `exp` (plus the leeway) is a 401 there too, in the instant before the
socket closes with 1008.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config.auth import AuthSettings, EndpointAccess
from ..context import IDENTITY
from ..door import HANDSHAKE, JOB, SOCKET, Door, Refusal
from .authenticator import _AuthFailure
from .identity import ANONYMOUS, Identity, expires_at, missing_scopes
from .jwks import _KeysUnavailable

if TYPE_CHECKING:
    from ..runtime import Runtime

DEFAULTS = EndpointAccess()  # a code view's access: auth.required, no scopes, limits.rate
KEYS_RETRY_AFTER = 5  # seconds, on the 503 while the JWKS is not fetched yet
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')  # not allowed inside a quoted-string as is


def access_of(door: Door) -> EndpointAccess:
    """The routed endpoint's `auth`, `scopes` and `rate` (code views: the defaults)."""
    return getattr(door.target, "access", DEFAULTS)


def challenge(error: str | None = None, description: str | None = None,
              scope: str | None = None) -> str:
    """A `WWW-Authenticate: Bearer` value (RFC 6750 3); client text is made quote-safe."""
    params = [f'{name}="{_UNSAFE.sub("?", value)}"' for name, value in
              (("error", error), ("error_description", description), ("scope", scope))
              if value is not None]
    return "Bearer " + ", ".join(params) if params else "Bearer"


class AuthCheck:
    """Authentication and scopes, with the runtime's `Authenticator` (its JWKS cache)."""

    def __init__(self, settings: Callable[[], AuthSettings],
                 runtime: Callable[[], Runtime]) -> None:
        self._settings = settings  # the current config's: a reload keeps [auth] as it was
        self._runtime = runtime

    async def __call__(self, door: Door) -> Refusal | None:
        if door.kind == JOB or not self._settings().enabled:
            return None
        access = access_of(door)
        needed = door.target is not None and access.needs_auth(self._settings())
        strict = needed or door.kind == HANDSHAKE  # sent credentials must be valid
        try:
            runtime = self._runtime()
        except RuntimeError:
            return Refusal(503, "the gateway is not serving", {"Retry-After": "5"})
        authenticator = runtime.authenticator
        assert authenticator is not None
        if door.kind == SOCKET:
            identity = door.extras.get(IDENTITY, ANONYMOUS)
            ends = expires_at(identity, self._settings().leeway)
            if ends is not None and time.time() >= ends:
                runtime.metrics.auth_failure("expired")
                return Refusal(401, "token expired", {
                    "WWW-Authenticate": challenge("invalid_token", "token expired")})
        else:
            found = await self._identify(door, strict, runtime)
            if isinstance(found, Refusal):
                return found
            identity = found
        if needed and identity.kind == "anonymous":
            runtime.metrics.auth_failure("missing")
            return Refusal(401, f"authentication required: send {authenticator.kinds()}",
                           {"WWW-Authenticate": challenge()})
        lacking = missing_scopes(identity, access.scopes)
        if lacking:
            runtime.metrics.auth_failure("insufficient_scope")
            scopes = " ".join(access.scopes)
            return Refusal(403, f"missing scope: {' '.join(lacking)}", {
                "WWW-Authenticate": challenge("insufficient_scope",
                                              "the token lacks a required scope", scopes)})
        door.extras[IDENTITY] = identity
        return None

    async def _identify(self, door: Door, strict: bool, runtime: Runtime
                        ) -> Identity | Refusal:
        """The message's own credentials; refused ones are a refusal only when `strict`."""
        authenticator = runtime.authenticator
        assert authenticator is not None
        try:
            return await authenticator.identify(door.headers)
        except _KeysUnavailable as error:
            if not strict:
                return ANONYMOUS
            runtime.metrics.auth_failure("keys_unavailable")
            return Refusal(503, str(error), {"Retry-After": str(KEYS_RETRY_AFTER)})
        except _AuthFailure as failure:
            if not strict:
                return ANONYMOUS
            runtime.metrics.auth_failure(failure.metric)
            value = (challenge("invalid_token", failure.reason) if failure.token
                     else challenge())
            return Refusal(401, failure.reason, {"WWW-Authenticate": value})
