"""Tokens a key set verified are remembered (auth/tokens.py), and only while that is sound.

A remembered token costs a lookup instead of a signature check; these tests hold the
conditions under which the answer is still the full check's: its time claims, its keys,
the policy, the claims a caller got, and the bound.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from jwt_support import SECRET, claims, hs256

from gateway.auth import KeySet, TokenPolicy, verify
from gateway.auth.tokens import MAX_VERIFIED, MAX_VERIFIED_TOKEN_BYTES, _TokenError

POLICY = TokenPolicy(algorithms=("HS256",), leeway=0)


def rss_kib() -> int:
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    keys = KeySet.from_secret(SECRET)
    token = hs256(claims(exp=int(time.time()) + 1))
    assert verify(token, POLICY, keys)["sub"] == "user-1"
    assert token in keys.verified
    assert verify(token, POLICY, keys)["sub"] == "user-1"  # remembered
    time.sleep(max(0.0, int(time.time()) + 1.05 - time.time()))  # past exp (a whole second)
    while time.time() < keys.verified[token].end:
        time.sleep(0.05)
    with pytest.raises(_TokenError, match="token expired"):
        verify(token, POLICY, keys)


def test_a_token_not_yet_valid_is_not_remembered_as_valid() -> None:
    keys = KeySet.from_secret(SECRET)
    early = hs256(claims(nbf=int(time.time()) + 3600))
    with pytest.raises(_TokenError, match="nbf"):
        verify(early, POLICY, keys)
    assert early not in keys.verified
    with pytest.raises(_TokenError, match="nbf"):
        verify(early, POLICY, keys)


def test_other_keys_check_a_remembered_token_again() -> None:
    """A JWKS refresh or a reload makes a new key set: a key that left takes its tokens."""
    token = hs256(claims())
    verify(token, POLICY, KeySet.from_secret(SECRET))
    with pytest.raises(_TokenError, match="signature does not verify"):
        verify(token, POLICY, KeySet.from_secret("another-secret-of-32-bytes-or-more!!"))


def test_another_policy_checks_a_remembered_token_again() -> None:
    keys = KeySet.from_secret(SECRET)
    token = hs256(claims(aud="bff"))
    verify(token, TokenPolicy(algorithms=("HS256",), audience="bff", leeway=0), keys)
    with pytest.raises(_TokenError, match="audience"):
        verify(token, TokenPolicy(algorithms=("HS256",), audience="other", leeway=0), keys)


def test_claims_a_caller_changes_are_not_what_the_next_request_gets() -> None:
    keys = KeySet.from_secret(SECRET)
    token = hs256(claims())
    first = verify(token, POLICY, keys)
    first["sub"] = "someone-else"
    again = verify(token, POLICY, keys)
    assert again["sub"] == "user-1"
    again["sub"] = "someone-else"
    assert verify(token, POLICY, keys)["sub"] == "user-1"


def test_nested_claims_a_caller_changes_do_not_widen_the_next_requests_scopes() -> None:
    keys = KeySet.from_secret(SECRET)
    token = hs256(claims(scp=["read"]))
    verify(token, POLICY, keys)["scp"].append("admin")  # e.g. a `combine` hook
    verify(token, POLICY, keys)["scp"].append("admin")  # and again, from the memory
    assert verify(token, POLICY, keys)["scp"] == ["read"]


def test_remembered_tokens_are_bounded_in_number_and_size() -> None:
    keys = KeySet.from_secret(SECRET)
    long = hs256(claims(pad="x" * MAX_VERIFIED_TOKEN_BYTES))
    verify(long, POLICY, keys)
    assert long not in keys.verified  # valid, but too long to keep
    tokens = [hs256(claims(sub=f"user-{i}", pad="y" * 2000)) for i in range(3 * MAX_VERIFIED)]
    before = rss_kib()
    for token in tokens:
        verify(token, POLICY, keys)
    assert len(keys.verified) == MAX_VERIFIED
    assert tokens[-1] in keys.verified  # the newest kept, the oldest let go
    assert tokens[0] not in keys.verified
    # 1,024 tokens of ~2.8 KB and their claims: a few MiB, not the 3,072 verified.
    assert rss_kib() - before < 16 * 1024
