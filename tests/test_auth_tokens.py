"""Bearer tokens: valid ones pass, every malformed or forged one is refused with one line."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt_support import SECRET, SigningKey, b64, claims, hs256, jwks, new_keys

from gateway.auth import (
    Identity,
    KeySet,
    TokenPolicy,
    missing_scopes,
    parse_jwks,
    scopes_of,
    verify,
)
from gateway.auth.tokens import _TokenError

KEYS = new_keys()
KEYSET = parse_jwks(jwks(*KEYS.values()))
POLICY = TokenPolicy(algorithms=("RS256", "ES256", "EdDSA"), issuer="https://idp.test",
                     audience="bff", leeway=30)
HS_POLICY = TokenPolicy(algorithms=("HS256",), leeway=30)
HS_KEYS = KeySet.from_secret(SECRET)


def refused(token: str, policy: TokenPolicy = POLICY, keys: KeySet = KEYSET) -> str:
    with pytest.raises(_TokenError) as caught:
        verify(token, policy, keys)
    reason = caught.value.reason
    assert reason
    assert "\n" not in reason
    assert len(reason) < 300
    return reason


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_token_signed_by_a_jwks_key_is_accepted(alg: str) -> None:
    token = KEYS[alg].sign(claims(scope="a b"))
    got = verify(token, POLICY, KEYSET)
    assert got["sub"] == "user-1"
    assert Identity.from_claims(got).scopes == {"a", "b"}


def test_hs256_secret_token_is_accepted_and_a_wrong_secret_refused() -> None:
    assert verify(hs256(claims()), HS_POLICY, HS_KEYS)["sub"] == "user-1"
    assert "signature" in refused(hs256(claims(), secret="x" * 40), HS_POLICY, HS_KEYS)


def test_oct_key_in_a_jwks_serves_hs256() -> None:
    oct_jwk = {"kty": "oct", "kid": "h1", "k": b64(SECRET.encode()), "alg": "HS256"}
    keys = parse_jwks({"keys": [oct_jwk]})
    assert verify(hs256(claims(), kid="h1"), HS_POLICY, keys)["sub"] == "user-1"


def test_alg_none_is_refused() -> None:
    token = jwt.encode(claims(), "", algorithm="none")
    assert "alg none" in refused(token)
    header = b64(json.dumps({"alg": "NONE", "kid": "rsa-1"}).encode())
    assert "alg none" in refused(f"{header}.{b64(b'{}')}.c2ln")


def test_hs256_token_signed_with_the_rsa_public_key_is_refused() -> None:
    """Algorithm confusion: the RSA public key (PEM) used as an HMAC secret."""
    from cryptography.hazmat.primitives import serialization
    pem = KEYS["RS256"].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = b64(json.dumps(claims()).encode())
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    import hashlib
    import hmac
    sig = b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    token = f"{header}.{body}.{sig}"
    both = TokenPolicy(algorithms=("RS256", "HS256"), issuer="https://idp.test", audience="bff")
    assert "does not match its key" in refused(token, both)


def test_token_whose_alg_differs_from_its_keys_alg_is_refused() -> None:
    es_as_rsa = KEYS["ES256"].sign(claims(), kid="rsa-1")
    assert "does not match" in refused(es_as_rsa)


def test_algorithm_outside_the_allowed_list_is_refused() -> None:
    assert "not allowed" in refused(hs256(claims()), POLICY)


@pytest.mark.parametrize(("extra", "reason"), [
    ({"exp": int(time.time()) - 120}, "expired"),
    ({"nbf": int(time.time()) + 120}, "not valid yet"),
    ({"iss": "https://evil.test"}, "issuer"),
    ({"aud": "someone-else"}, "audience"),
    ({"exp": "tomorrow"}, "invalid token"),
    ({"sub": 42}, "Subject"),
    ({"scope": ["a"]}, "scope"),
    ({"scp": [1, 2]}, "scp"),
    ({"iat": "now"}, "invalid token"),
])
def test_bad_claims_are_refused_with_a_reason(extra: dict[str, Any], reason: str) -> None:
    assert reason in refused(KEYS["RS256"].sign(claims(**extra)))


def test_leeway_accepts_a_token_just_expired() -> None:
    token = KEYS["RS256"].sign(claims(exp=int(time.time()) - 10))
    assert verify(token, POLICY, KEYSET)["sub"] == "user-1"


def test_unknown_kid_and_kid_with_path_characters_are_refused() -> None:
    assert "not a known key" in refused(KEYS["RS256"].sign(claims(), kid="other"))
    for kid in ("../../etc/passwd", "a/b", "a\\b", "..", "k\x00"):
        assert "plain key name" in refused(KEYS["RS256"].sign(claims(), kid=kid))


@pytest.mark.parametrize(("token", "reason"), [
    ("abc", "three"),
    ("a.b", "three"),
    ("a.b.c.d", "three"),
    ("a..c", "base64url"),
    ("a+b.c.d", "base64url"),
    (f"{b64(b'not json')}.e30.c2ln", "JSON"),
    (f"{b64(b'[1]')}.e30.c2ln", "JSON object"),
    (f"{b64(b'{}')}.e30.c2ln", "no alg"),
    (f"{b64(b'A' * 2000)}.e30.c2ln", "header longer"),
    ("x" * 20000, "longer than"),
])
def test_malformed_tokens_are_refused_with_one_line(token: str, reason: str) -> None:
    assert reason in refused(token)


def test_bad_payload_base64_and_json_are_refused() -> None:
    header = b64(json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode())
    assert refused(f"{header}.{b64(b'not json')}.c2ln")
    assert refused(f"{header}.{b64(b'[1, 2]')}.c2ln")
    assert refused(f"{header}.A.c2ln")


def test_scopes_come_from_scope_or_scp() -> None:
    assert scopes_of({"scope": "a b  c"}) == {"a", "b", "c"}
    assert scopes_of({"scp": ["x", "y", 3]}) == {"x", "y"}
    assert scopes_of({"scp": "x y"}) == {"x", "y"}
    assert scopes_of({}) == frozenset()
    who = Identity.from_claims({"sub": "u", "scope": "a"})
    assert missing_scopes(who, ["a", "b", "c"]) == ("b", "c")
    assert missing_scopes(who, ["a"]) == ()


_GOOD = KEYS["RS256"].sign(claims())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_token_mutation_is_refused_with_one_line_never_an_exception(
        data: st.DataObject) -> None:
    token = list(_GOOD)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        at = data.draw(st.integers(0, len(token) - 1))
        char = data.draw(st.characters(codec="utf-8"))
        if action == "replace":
            token[at] = char
        elif action == "delete":
            del token[at]
        else:
            token.insert(at, char)
    mutated = "".join(token)
    reason: str | None = None
    try:
        verify(mutated, POLICY, KEYSET)
    except _TokenError as exc:
        reason = exc.reason
    if reason is None:  # base64 padding bits may leave the decoded bytes unchanged
        assert _same_bytes(mutated, _GOOD)
    else:
        assert reason
        assert "\n" not in reason


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku"]),
                              st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                        st.lists(st.integers(), max_size=3))),
       payload=st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=10)),
                            lambda inner: st.dictionaries(st.text(max_size=5), inner,
                                                          max_size=4), max_leaves=10))
def test_arbitrary_header_and_payload_json_is_refused_cleanly(header: dict[str, Any],
                                                              payload: Any) -> None:
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.c2ln"
    with pytest.raises(_TokenError) as caught:
        verify(token, POLICY, KEYSET)
    assert "\n" not in caught.value.reason


@pytest.mark.parametrize("alg", ["\n", "HS256\r\nX-Forged: 1", "\x00"])
def test_control_characters_in_alg_stay_out_of_the_one_line_reason(alg: str) -> None:
    token = f"{b64(json.dumps({'alg': alg}).encode())}.{b64(b'{}')}.c2ln"
    with pytest.raises(_TokenError) as caught:
        verify(token, POLICY, KEYSET)
    assert "not allowed" in caught.value.reason
    assert not set("\r\n\x00") & set(caught.value.reason)


def _same_bytes(a: str, b: str) -> bool:
    import base64
    try:
        return all(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
                   == base64.urlsafe_b64decode(y + "=" * (-len(y) % 4))
                   for x, y in zip(a.split("."), b.split("."), strict=True))
    except ValueError:
        return False


def test_signing_key_helper_signs_with_its_kid() -> None:
    key: SigningKey = KEYS["ES256"]
    assert jwt.get_unverified_header(key.sign({}))["kid"] == "ec-1"
