"""Malformed and hostile tokens against the live gateway (SPEC 9, bad input): every one is
a 401 with one readable line and `error="invalid_token"`, no traceback anywhere, and
nothing reaches the upstream. Hand-written cases in process, then hypothesis over token
mutations against a real Hypercorn."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jwt_support import SECRET, SigningKey, b64, claims, jwks, new_keys
from support import (
    GatewayClientFactory,
    HypercornFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
)

KEYS = new_keys()
RSA = KEYS["RS256"]
OCT = {"kty": "oct", "kid": "hs-1", "alg": "HS256",
       "k": base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode()}


def config(users: Any, provider: Any) -> dict[str, Any]:
    raw = make_config({"users": users},
                      endpoint("/me", call("me", "users", "/users/{jwt.sub}")))
    raw["auth"] = {"jwks_url": provider.url, "required": True, "issuer": "https://idp.test",
                   "audience": "bff", "algorithms": ["RS256", "ES256", "EdDSA", "HS256"]}
    return raw


async def jwks_with_oct(upstream: UpstreamFactory) -> Any:
    document = jwks(*KEYS.values())
    document["keys"].append(OCT)

    async def serve(request: Any) -> Any:
        from webserver import json_response
        return json_response(document)

    return await upstream(serve)


def token(header: Any, payload: Any, signature: str = "c2ln") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{signature}"


def signed(payload: dict[str, Any]) -> str:
    """RS256-signed as given: PyJWT's `jwt.encode` refuses claims of the wrong type itself."""
    return jwt.PyJWS().encode(json.dumps(payload).encode(), RSA.private, algorithm="RS256",
                              headers={"kid": RSA.kid})


def public_pem(key: SigningKey) -> bytes:
    return key.private.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def hs_with(secret: bytes, **header: Any) -> str:
    """An HS256 token whose HMAC key is `secret` (PyJWT refuses PEM keys; sign by hand)."""
    import hashlib
    import hmac
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


GOOD_HEADER = {"alg": "RS256", "kid": "rsa-1"}
CASES: list[tuple[str, str, str]] = [
    ("empty", "", "empty bearer token"),
    ("one part", "abc", "token is not three dot-separated parts"),
    ("four parts", "a.b.c.d", "token is not three dot-separated parts"),
    ("bad base64", "a*b.c.d", "token part is not base64url"),
    ("spaces", "a b.c.d", "token part is not base64url"),
    ("header not JSON", f"{b64(b'{nope')}.{b64(b'{}')}.c2ln", "token header is not base64url JSON"),
    ("header a list", token([1, 2], {}), "token header is not a JSON object"),
    ("no alg", token({"kid": "rsa-1"}, {}), "token header has no alg"),
    ("alg none", token({"alg": "none"}, claims(), ""), "unsigned token (alg none) refused"),
    ("alg None signed", token({"alg": "None"}, claims()), "unsigned token (alg none) refused"),
    ("alg unknown", token({"alg": "XS256"}, claims()), "token algorithm 'XS256' not allowed"),
    ("no signature", token(GOOD_HEADER, claims(), ""), "token has no signature"),
    ("kid with path", token({"alg": "RS256", "kid": "../../etc/passwd"}, claims()),
     "token kid is not a plain key name"),
    ("kid with slash", token({"alg": "RS256", "kid": "a/b"}, claims()),
     "token kid is not a plain key name"),
    ("kid not a string", token({"alg": "RS256", "kid": 7}, claims()),
     "token kid is not a plain key name"),
    ("payload not JSON", f"{b64(json.dumps(GOOD_HEADER).encode())}.{b64(b'[[[')}.c2ln",
     "token signature does not verify"),
    ("huge header", token({"alg": "RS256", "x": "a" * 2000}, claims()),
     "token header longer than 1024 bytes"),
    # Algorithm confusion: an HS256 token keyed with the RSA public key, named or not.
    ("HS256 with the RSA key's kid", hs_with(public_pem(RSA), kid="rsa-1"),
     "token algorithm HS256 does not match its key"),
    ("RS256 naming the oct key", RSA.sign(claims(), kid="hs-1"),
     "token algorithm RS256 does not match its key"),
]
CLAIM_TYPES: list[tuple[str, Any, str]] = [
    ("sub a number", {"sub": 42}, "invalid token: Subject must be a string"),
    ("exp a string", {"exp": "tomorrow"}, "invalid token: Expiration Time claim (exp) must be"),
    ("nbf a list", {"nbf": [1]}, "invalid token: Not Before claim (nbf) must be"),
    ("iat a string", {"iat": "x"}, "invalid token: Issued At claim (iat) must be"),
    ("aud a number", {"aud": 5}, "token audience is not this gateway's"),
    ("scope a list", {"scope": ["a"]}, "token claim scope is not a string"),
    ("scp of numbers", {"scp": [1, 2]}, "token claim scp is not a string or a list of strings"),
    ("iss a list", {"iss": ["https://idp.test"]}, "token issuer is not the configured one"),
    ("claims a list", [1, 2], "invalid token: Invalid payload string"),
]


@pytest.mark.parametrize(("name", "bad", "reason"), CASES, ids=[c[0] for c in CASES])
async def test_a_malformed_token_is_a_401_with_one_line_and_nothing_forwarded(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        name: str, bad: str, reason: str) -> None:
    users = await upstream()
    client = await gateway_client(config(users, await jwks_with_oct(upstream)))
    response = await client.get("/me", headers={"Authorization": f"Bearer {bad}"})
    await refused_cleanly(response.status_code, await response.get_json(),
                          response.headers.get("WWW-Authenticate", ""), reason)
    assert users.seen == []


@pytest.mark.parametrize(("name", "extra", "reason"), CLAIM_TYPES,
                         ids=[c[0] for c in CLAIM_TYPES])
async def test_a_signed_token_with_claims_of_the_wrong_type_is_a_401(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        name: str, extra: Any, reason: str) -> None:
    users = await upstream()
    client = await gateway_client(config(users, await jwks_with_oct(upstream)))
    payload = {**claims(), **extra} if isinstance(extra, dict) else extra
    response = await client.get("/me", headers={"Authorization": f"Bearer {signed(payload)}"})
    await refused_cleanly(response.status_code, await response.get_json(),
                          response.headers.get("WWW-Authenticate", ""), reason)
    assert users.seen == []


async def test_a_token_over_the_header_limit_is_a_431_before_authentication(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(config(users, await jwks_with_oct(upstream)))
    huge = token(GOOD_HEADER, {"pad": "a" * 20000})
    response = await client.get("/me", headers={"Authorization": f"Bearer {huge}"})
    assert response.status_code == 431
    assert (await response.get_json())["error"] == "request headers are larger than 16384 bytes"
    assert users.seen == []


async def refused_cleanly(status: int, body: Any, challenge: str, reason: str) -> None:
    assert status == 401, body
    assert body["data"] is None
    assert body["error"].startswith(reason), body["error"]
    assert "\n" not in body["error"]
    assert "Traceback" not in body["error"]
    assert len(body["error"]) <= 260
    assert challenge.startswith('Bearer error="invalid_token", error_description="')


def test_the_confusion_token_really_is_keyed_with_the_public_key() -> None:
    forged = hs_with(public_pem(RSA), kid="rsa-1")
    head, body, mac = forged.split(".")
    import hashlib
    import hmac
    expected = hmac.new(public_pem(RSA), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert b64(expected) == mac  # what a library that trusts `alg` would accept
    with pytest.raises(jwt.InvalidKeyError):  # PyJWT itself refuses a PEM as an HMAC key
        jwt.encode({}, public_pem(RSA), algorithm="HS256")


# -- hypothesis over mutations, against a real Hypercorn --------------------------------------

GOOD = RSA.sign(claims())
_HEADER_SHAPES = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "HS256", "none", "NONE", "ES256", "EdDSA", "PS256", ""])},
    optional={"kid": st.one_of(st.sampled_from(["rsa-1", "hs-1", "ec-1", "../x", "a\\b", ""]),
                               st.text(max_size=12), st.integers()),
              "typ": st.text(max_size=5), "crit": st.lists(st.text(max_size=4), max_size=2),
              "jku": st.just("http://evil.test/jwks.json")})
_CLAIM_SHAPES = st.dictionaries(
    st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "scope", "scp"]),
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
              st.text(max_size=8), st.lists(st.integers(), max_size=2)), max_size=5)


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["chars", "parts", "header", "claims"]))
    if kind == "chars":
        chars = list(GOOD)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(chars) - 1))
            action = draw(st.sampled_from(["replace", "delete", "insert"]))
            char = draw(st.characters(min_codepoint=0x21, max_codepoint=0xFF))
            if action == "replace":
                chars[at] = char
            elif action == "delete":
                del chars[at]
            else:
                chars.insert(at, char)
        return "".join(chars)
    if kind == "parts":
        parts = GOOD.split(".")
        picked = draw(st.lists(st.sampled_from([*parts, "", "e30", "AAAA"]), max_size=5))
        return ".".join(picked)
    if kind == "header":
        signature = draw(st.sampled_from([GOOD.split(".")[2], "c2ln", ""]))
        return token(draw(_HEADER_SHAPES), claims(), signature)
    return signed({**claims(), **draw(_CLAIM_SHAPES)})  # validly signed, odd claims


def _same_token(candidate: str) -> bool:
    """A mutation that decodes to the same bytes (base64's spare padding bits)."""
    try:
        return all(base64.urlsafe_b64decode(a + "=" * (-len(a) % 4))
                   == base64.urlsafe_b64decode(b + "=" * (-len(b) % 4))
                   for a, b in zip(candidate.split("."), GOOD.split("."), strict=True))
    except ValueError:
        return False


async def test_hypothesis_token_mutations_against_a_real_hypercorn(
        upstream: UpstreamFactory, hypercorn_server: HypercornFactory) -> None:
    users = await upstream()
    server = await hypercorn_server(config(users, await jwks_with_oct(upstream)))
    outcomes: list[tuple[str, int]] = []
    clients: list[httpx.Client] = []  # one, made in the hypothesis thread (it reads certs)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutated_tokens())
    @example(signed({**claims(), "sub": ""}))  # valid, but no path segment: a 400
    def check(bad: str) -> None:
        assume(bad.strip() == bad and bad)  # h11 refuses a header value with edge spaces
        response = clients[0].get(server.url + "/me",
                                  headers={b"Authorization": b"Bearer " + bad.encode("latin-1")})
        outcomes.append((bad, response.status_code))
        if response.status_code == 200:  # only a token that is still the valid one
            assert _same_token(bad) or _valid_claims_only(bad), bad
            return
        if response.status_code == 400:  # a valid token whose `sub` cannot be a path segment
            assert _valid_claims_only(bad), (bad, response.text)
            assert "{jwt.sub}" in response.json()["error"], (bad, response.text)
            return
        assert response.status_code == 401, (bad, response.text)
        body = response.json()
        assert body["data"] is None
        assert body["error"]
        assert "\n" not in body["error"]
        assert response.headers["WWW-Authenticate"].startswith(
            'Bearer error="invalid_token", error_description="')

    def run() -> None:
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            clients.append(client)
            check()

    await asyncio.to_thread(run)  # hypothesis's loop in a thread; the upstream serves here
    passed = sum(1 for _, status in outcomes if status == 200)
    assert len(users.seen) == passed  # nothing refused reached the upstream
    assert len(outcomes) >= 100
    assert "Traceback" not in server.output()


def _valid_claims_only(candidate: str) -> bool:
    """A validly signed token whose extra claims happen to be acceptable (e.g. `sub` text)."""
    try:
        jwt.decode(candidate, RSA.private.public_key(), algorithms=["RS256"], audience="bff",
                   issuer="https://idp.test", leeway=30)
    except jwt.PyJWTError:
        return False
    return True
