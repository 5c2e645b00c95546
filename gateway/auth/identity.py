"""Who is calling: the `Identity` a request carries past authentication, and scope checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["anonymous", "jwt", "api_key"]


@dataclass(frozen=True)
class Identity:
    """The caller as authentication saw it; `client` names it for limits and `{client}`.

    `client` is the API key's client name, or the token's `sub`; None when anonymous
    (the limits then key by IP or header as configured).
    """

    kind: Kind = "anonymous"
    client: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    scopes: frozenset[str] = frozenset()

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        sub = claims.get("sub")
        return cls(kind="jwt", client=sub if isinstance(sub, str) else None,
                   claims=claims, scopes=scopes_of(claims))

    @classmethod
    def from_api_key(cls, client: str) -> Identity:
        return cls(kind="api_key", client=client)


ANONYMOUS = Identity()


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The token's scopes: OAuth's space-separated `scope`, or a `scp` list (or string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


def missing_scopes(identity: Identity, required: Iterable[str]) -> tuple[str, ...]:
    """The required scopes the identity lacks, in config order (empty = allowed)."""
    return tuple(s for s in required if s not in identity.scopes)


def expires_at(identity: Identity, leeway: float) -> float | None:
    """When (epoch seconds) the identity's token stops being accepted: its `exp` plus the
    leeway, as `verify` counts it; None for an identity that does not expire."""
    exp = identity.claims.get("exp") if identity.kind == "jwt" else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp) + leeway
