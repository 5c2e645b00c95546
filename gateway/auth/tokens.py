"""Bearer tokens (JWS compact JWTs) checked with PyJWT, refusing with one readable line.

Before PyJWT sees a token its shape is checked here, cheaply and strictly: three
base64url parts, a bounded size, a JSON object header whose `alg` is allowed (never
`none`) and whose `kid` is a plain name. The key is then chosen by `kid` and must be of
the family the token's `alg` names (`oct` for HS*, `RSA` for RS*/PS*, `EC` for ES*, `OKP`
for EdDSA), and agree with the key's own `alg` when it has one: so an HS256 token is
never checked with an RSA public key used as an HMAC secret (algorithm confusion).
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from .jwks import Key, KeySet

MAX_TOKEN_BYTES = 16 * 1024  # a longer bearer token is refused unread
# Valid tokens remembered per key set, so that a client's next request with the same token
# costs a lookup instead of a signature check (HS256 ~90 µs, RS256 ~120 µs of CPU; the
# gateway's whole 3-call request is ~1 ms). Oldest out first; longer tokens never kept:
# at most MAX_VERIFIED * MAX_VERIFIED_TOKEN_BYTES (4 MiB) of tokens and their claims.
MAX_VERIFIED = 1024
MAX_VERIFIED_TOKEN_BYTES = 4096
MAX_HEADER_BYTES = 1024  # the decoded JOSE header
KID = re.compile(r"[A-Za-z0-9_.:=+-]{1,128}")  # no '/', '\\', '..' or control characters
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
FAMILY = {"HS": "oct", "RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

SUPPORTED = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
             "ES256", "ES384", "ES512", "EdDSA")


class _TokenError(Exception):
    """A token was refused; `reason` is one line, safe to show the client (401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class TokenPolicy:
    """What a valid token must satisfy, from `[auth]`."""

    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA", "HS256")
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0


def key_family(alg: str) -> str | None:
    """The JWK `kty` an algorithm needs, or None for an unknown algorithm."""
    return FAMILY.get(alg[:2]) if alg in SUPPORTED else None


def read_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, after every structural check; raises `_TokenError`."""
    if len(token) > MAX_TOKEN_BYTES:
        raise _TokenError(f"token longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise _TokenError("token is not three dot-separated parts")
    if not (parts[0] and parts[1] and all(_B64URL.fullmatch(part) for part in parts)):
        raise _TokenError("token part is not base64url")
    if len(parts[0]) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise _TokenError(f"token header longer than {MAX_HEADER_BYTES} bytes")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise _TokenError("token header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise _TokenError("token header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _TokenError("token header has no alg")
    if alg.lower() == "none":
        raise _TokenError("unsigned token (alg none) refused")
    if not parts[2]:
        raise _TokenError("token has no signature")
    kid = header.get("kid")
    if kid is not None and not (isinstance(kid, str) and KID.fullmatch(kid)
                                and ".." not in kid):
        raise _TokenError("token kid is not a plain key name")
    return header


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that verified, and when its time claims let it pass (PyJWT's rules)."""

    policy: TokenPolicy
    claims: dict[str, Any]
    start: float  # iat and nbf, less the leeway
    end: float  # exp, plus the leeway (exclusive)


def verify(token: str, policy: TokenPolicy, keys: KeySet,
           header: dict[str, Any] | None = None) -> dict[str, Any]:
    """The token's claims if it is valid under `policy` with one of `keys`; else `_TokenError`.

    A token these keys verified before under this policy is not checked again while its
    `iat`/`nbf`/`exp` still let it pass: the same bytes, signed by the same key, verify the
    same way. Outside that window (expired, say) it is checked in full, which refuses it
    with the reason. `header` is `read_header(token)`, when the caller has read it already.
    """
    hit = keys.verified.get(token)
    if hit is not None:
        if hit.policy is policy and hit.start <= time.time() < hit.end:
            return copy.deepcopy(hit.claims)  # a caller may change its claims, lists too
        del keys.verified[token]  # out of its window (or another policy): checked in full
    header = read_header(token) if header is None else header
    alg: str = header["alg"]
    if alg not in policy.algorithms or key_family(alg) is None:
        # repr: the alg is client text; a newline in it must not split the one-line reason
        raise _TokenError(f"token algorithm {alg[:32]!r} not allowed")
    key = choose_key(keys, header.get("kid"), alg)
    claims = _decode(token, key, alg, policy)
    _remember(keys.verified, token, policy, claims)
    return claims


def _remember(cache: dict[str, Any], token: str, policy: TokenPolicy,
              claims: dict[str, Any]) -> None:
    if len(token) > MAX_VERIFIED_TOKEN_BYTES:
        return
    # PyJWT passed: iat and nbf <= now + leeway, exp > now - leeway, each an int().
    start = max((int(claims[c]) for c in ("iat", "nbf") if c in claims),
                default=-math.inf) - policy.leeway
    end = int(claims["exp"]) + policy.leeway if "exp" in claims else math.inf
    cache.pop(token, None)
    while len(cache) >= MAX_VERIFIED:
        del cache[next(iter(cache))]  # the oldest
    cache[token] = _Verified(policy, copy.deepcopy(claims), start, end)


def choose_key(keys: KeySet, kid: str | None, alg: str) -> Key:
    """The key for `kid` (or the only key of the right family when the token has no kid)."""
    family = key_family(alg)
    if kid is not None:
        key = keys.by_kid.get(kid)
        if key is None:
            raise _TokenError("token kid is not a known key")
        candidates = [key]
    else:
        candidates = [k for k in keys.keys if k.kty == family]
        if len(candidates) != 1:
            raise _TokenError("token has no kid and no single key fits its algorithm")
    key = candidates[0]
    if key.kty != family or (key.alg is not None and key.alg != alg):
        raise _TokenError(f"token algorithm {alg} does not match its key")
    return key


def _decode(token: str, key: Key, alg: str, policy: TokenPolicy) -> dict[str, Any]:
    options: Any = {"require": [], "verify_aud": policy.audience is not None,
                    "verify_iss": policy.issuer is not None}
    try:
        with warnings.catch_warnings():
            # A short HS secret was reported once at load; PyJWT would warn per request.
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=policy.audience,
                issuer=policy.issuer, leeway=policy.leeway, options=options)
    except jwt.ExpiredSignatureError:
        raise _TokenError("token expired") from None
    except jwt.ImmatureSignatureError:
        raise _TokenError("token not valid yet (nbf)") from None
    except jwt.InvalidAudienceError:
        raise _TokenError("token audience is not this gateway's") from None
    except jwt.InvalidIssuerError:
        raise _TokenError("token issuer is not the configured one") from None
    except jwt.InvalidSignatureError:
        raise _TokenError("token signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise _TokenError(f"invalid token: {_one_line(exc)}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a claim of an unusable type
        raise _TokenError(f"invalid token: {_one_line(exc)}") from None
    _check_claim_types(claims)
    return claims


def _check_claim_types(claims: Mapping[str, Any]) -> None:
    for name in ("sub", "iss", "scope"):
        if name in claims and not isinstance(claims[name], str):
            raise _TokenError(f"token claim {name} is not a string")
    scp = claims.get("scp")
    if scp is not None and not (isinstance(scp, str) or (
            isinstance(scp, list) and all(isinstance(s, str) for s in scp))):
        raise _TokenError("token claim scp is not a string or a list of strings")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
