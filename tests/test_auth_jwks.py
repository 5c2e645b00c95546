"""The JWKS cache against a real loopback identity provider; JWKS parsing; API keys."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwt_support import claims, jwks, new_keys
from support import RawUpstreamFactory, UpstreamFactory, contention, reply
from webserver import Request, Response, json_response

from gateway.auth import (
    ApiKeys,
    JwksCache,
    TokenPolicy,
    parse_jwks,
    read_jwks_file,
    verify,
)
from gateway.auth import jwks as jwks_module
from gateway.auth.jwks import _JwksError, _KeysUnavailable

KEYS = new_keys()
POLICY = TokenPolicy(algorithms=("RS256", "ES256"), audience="bff")


class Idp:
    """What the identity provider serves now; `down` answers 503."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.down = False

    async def handle(self, request: Request) -> Response:
        if self.down:
            return json_response({"error": "down"}, 503)
        return json_response(self.document)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_keys_are_fetched_at_start_and_refreshed_once_a_minute_on_unknown_kid(
        upstream: UpstreamFactory) -> None:
    idp = Idp(jwks(KEYS["RS256"]))
    server = await upstream(idp.handle)
    clock = Clock()
    async with httpx.AsyncClient() as client:
        cache = JwksCache(f"{server.url}/jwks.json", client, clock=clock)
        await cache.start()
        await cache.first_attempt()
        assert cache.problem is None
        assert len(server.seen) == 1
        assert "rsa-1" in cache.keys().by_kid
        # The provider rotates in a new key: the first unknown kid triggers one fetch ...
        idp.document = jwks(KEYS["RS256"], KEYS["ES256"])
        clock.now += 61
        keys = await cache.refresh_for("ec-1")
        assert "ec-1" in keys.by_kid
        assert len(server.seen) == 2
        assert verify(KEYS["ES256"].sign(claims()), POLICY, keys)["sub"] == "user-1"
        # ... and a flood of made-up kids within the minute fetches nothing more.
        for i in range(50):
            await cache.refresh_for(f"made-up-{i}")
        assert len(server.seen) == 2
        clock.now += 60
        await cache.refresh_for("made-up-again")
        assert len(server.seen) == 3
        await cache.close()


async def test_provider_down_at_start_is_retried_while_keys_are_unavailable(
        upstream: UpstreamFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwks_module, "RETRY_FIRST", 0.05)
    idp = Idp(jwks(KEYS["RS256"]))
    idp.down = True
    server = await upstream(idp.handle)
    async with httpx.AsyncClient() as client:
        cache = JwksCache(f"{server.url}/jwks.json", client)
        await cache.start()  # does not raise: the gateway starts without its IdP
        await cache.first_attempt()
        assert cache.problem is not None
        assert "503" in cache.problem
        with pytest.raises(_KeysUnavailable, match="503"):
            cache.keys()
        await asyncio.sleep(0.2)
        assert len(server.seen) >= 2  # retried in the background, with a backoff
        idp.down = False
        for _ in range(100):
            if _problem(cache) is None:
                break
            await asyncio.sleep(0.05)
        assert _problem(cache) is None
        assert "rsa-1" in cache.keys().by_kid
        seen = len(server.seen)
        await asyncio.sleep(0.3)
        assert len(server.seen) == seen  # no more retries once fetched
        await cache.close()


async def test_start_does_not_wait_for_the_fetch_but_early_tokens_do(
        upstream: UpstreamFactory) -> None:
    server = await upstream(reply(jwks(KEYS["RS256"]), delay=0.3))
    async with httpx.AsyncClient() as client:
        cache = JwksCache(f"{server.url}/jwks.json", client)
        await cache.start()
        assert not cache.loaded  # start returned with the fetch under way
        assert cache.problem == "JWKS not fetched yet"
        keys = await cache.keys_soon()  # a token in the first seconds waits for it
        assert "rsa-1" in keys.by_kid
        assert len(server.seen) == 1
        await cache.close()


async def test_a_hung_provider_refuses_early_tokens_after_the_first_wait(
        raw_upstream: RawUpstreamFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwks_module, "FIRST_WAIT", 0.2)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await raw_upstream(never_answer)
    async with httpx.AsyncClient() as client:
        cache = JwksCache(f"{server.url}/jwks.json", client)
        await cache.start()
        loop = asyncio.get_running_loop()
        asked = loop.time()
        with pytest.raises(_KeysUnavailable, match="not fetched yet"):
            await cache.keys_soon()
        assert loop.time() - asked < jwks_module.FETCH_TIMEOUT / 2  # not the fetch's timeout
        asked, contended = loop.time(), contention()
        with pytest.raises(_KeysUnavailable):  # after FIRST_WAIT: refused without waiting
            await cache.keys_soon()
        assert loop.time() - asked - (contention() - contended) < 0.1  # less the load
        await cache.close()  # the pending fetch is cancelled


def _problem(cache: JwksCache) -> str | None:
    return cache.problem


async def test_unreachable_provider_is_a_problem_not_a_crash() -> None:
    async with httpx.AsyncClient() as client:
        cache = JwksCache("http://127.0.0.1:9/jwks.json", client)
        await cache.start()
        await cache.first_attempt()
        assert cache.problem is not None
        assert "127.0.0.1:9" in cache.problem
        await cache.close()  # the retry task is cancelled and awaited


async def test_oversize_or_bad_jwks_document_is_refused(upstream: UpstreamFactory) -> None:
    idp = Idp({"keys": [{"kty": "RSA", "n": "x" * (1024 * 1024)}]})
    server = await upstream(idp.handle)
    async with httpx.AsyncClient() as client:
        cache = JwksCache(f"{server.url}/jwks.json", client)
        await cache.start()
        await cache.first_attempt()
        assert cache.problem is not None
        assert "larger than" in cache.problem
        await cache.close()


@pytest.mark.parametrize(("document", "reason"), [
    ([], '"keys" list'),
    ({"keys": {}}, '"keys" list'),
    ({"keys": [1]}, "not an object"),
    ({"keys": [{"kty": "XYZ"}]}, "unsupported kty"),
    ({"keys": [{"kty": "RSA", "kid": 5}]}, "kid is not a string"),
    ({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "use": "enc"}]}, "use"),
    ({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}, "JWKS key 0"),
    ({"keys": [{"kty": "oct"}] * 101}, "more than 100"),
])
def test_bad_jwks_documents_are_refused_with_a_reason(document: Any, reason: str) -> None:
    with pytest.raises(_JwksError, match=reason):
        parse_jwks(document)


def test_private_keys_in_a_jwks_are_refused() -> None:
    import jwt
    private = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(KEYS["RS256"].private))
    with pytest.raises(_JwksError, match="private key"):
        parse_jwks({"keys": [private]})


def test_jwks_file_is_read_at_load(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(jwks(KEYS["ES256"])))
    assert "ec-1" in read_jwks_file(str(path)).by_kid
    with pytest.raises(_JwksError, match="cannot read"):
        read_jwks_file(str(tmp_path / "missing.json"))
    path.write_text("{")
    with pytest.raises(_JwksError, match="not JSON"):
        read_jwks_file(str(path))


def test_api_key_maps_to_its_client_and_others_to_none() -> None:
    keys = ApiKeys({"partner-a": "key-a-123", "partner-b": "key-b-456"})
    assert keys.client_for("key-a-123") == "partner-a"
    assert keys.client_for("key-b-456") == "partner-b"
    assert keys.client_for("key-a-12") is None
    assert keys.client_for("") is None
    assert keys.client_for("k" * 10_000) is None
    assert keys.client_for("\udcff") is None
    assert not ApiKeys({})
    assert keys
