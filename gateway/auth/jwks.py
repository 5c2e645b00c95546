"""Keys to verify tokens with: a JWKS parsed into a `KeySet`, and `JwksCache`, which keeps
one fetched from the identity provider.

The cache fetches at start and again only when a token names an unknown `kid`, at most
once per `REFRESH_INTERVAL` after the previous fetch: never per request, so a flood of
made-up kids costs one fetch a minute. The first fetch runs in the cache's own task, so
start-up never waits on the identity provider (one that hangs would hold it for
FETCH_TIMEOUT); it is retried there with a backoff until it succeeds. Until then `keys()`
raises `_KeysUnavailable` (the endpoints that need a token answer 503) and `problem` says
why (for `/readyz`); only in the first FIRST_WAIT seconds does a request wait for the
first attempt instead, so a gateway that just started does not refuse its first tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson

log = logging.getLogger("gateway.auth")

REFRESH_INTERVAL = 60.0  # seconds between two fetches triggered by unknown kids
MAX_JWKS_BYTES = 1024 * 1024
MAX_KEYS = 100
RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # backoff while the first fetch fails
FETCH_TIMEOUT = 10.0
FIRST_WAIT = 2.0  # seconds after start during which a token waits for the first fetch
MIN_HS_SECRET = 32  # bytes; RFC 7518 3.2 wants a key at least the hash's size


class _KeysUnavailable(Exception):
    """The key set is not loaded yet (identity provider down): answer 503, not 401."""


class _JwksError(ValueError):
    """A JWKS document is unusable; the message is one line."""


@dataclass(frozen=True)
class Key:
    kid: str | None
    kty: str  # oct, RSA, EC, OKP
    alg: str | None  # the JWK's own alg, when it names one
    key: Any  # what PyJWT verifies with (bytes for oct, a cryptography public key)


@dataclass(frozen=True)
class KeySet:
    keys: tuple[Key, ...] = ()
    by_kid: Mapping[str, Key] = field(default_factory=dict)
    # Tokens these keys verified (tokens.verify): a new key set starts empty, so a key
    # that leaves the provider's JWKS takes its tokens' verdicts with it.
    verified: dict[str, Any] = field(default_factory=dict, init=False, compare=False,
                                     repr=False)

    @classmethod
    def of(cls, keys: list[Key]) -> KeySet:
        return cls(tuple(keys), {k.kid: k for k in keys if k.kid is not None})

    @classmethod
    def from_secret(cls, secret: str) -> KeySet:
        """The `auth.secret` (HS256) as a one-key set."""
        return cls.of([Key(None, "oct", None, secret.encode())])


def parse_jwks(document: Any) -> KeySet:
    """A JWKS (`{"keys": [...]}`) as a `KeySet`; private keys and unknown types are refused."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _JwksError('JWKS is not an object with a "keys" list')
    raw_keys: list[Any] = document["keys"]
    if len(raw_keys) > MAX_KEYS:
        raise _JwksError(f"JWKS has more than {MAX_KEYS} keys")
    keys: list[Key] = []
    for i, raw in enumerate(raw_keys):
        try:
            keys.append(_key(raw))
        except _JwksError as exc:
            raise _JwksError(f"JWKS key {i}: {exc}") from None
    return KeySet.of(keys)


def _key(raw: Any) -> Key:
    if not isinstance(raw, dict):
        raise _JwksError("not an object")
    kty, kid, alg, use = raw.get("kty"), raw.get("kid"), raw.get("alg"), raw.get("use")
    if kty not in ("oct", "RSA", "EC", "OKP"):
        raise _JwksError(f"unsupported kty {kty!r}")
    if kid is not None and not isinstance(kid, str):
        raise _JwksError("kid is not a string")
    if alg is not None and not isinstance(alg, str):
        raise _JwksError("alg is not a string")
    if use not in (None, "sig"):
        raise _JwksError(f"use {use!r} is not sig")
    if kty != "oct" and "d" in raw:
        raise _JwksError("is a private key; publish only public keys")
    try:
        parsed = jwt.PyJWK(raw)
    except jwt.PyJWTError as exc:
        raise _JwksError(" ".join(str(exc).split())[:200]) from None
    return Key(kid, kty, alg, parsed.key)


def read_jwks_file(path: str) -> KeySet:
    """`auth.jwks_file`, read once at load (before the loop runs); raises `_JwksError`."""
    try:
        with open(path, "rb") as f:
            body = f.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        raise _JwksError(f"cannot read {path}: {exc.strerror}") from None
    return _decode(body)


def _decode(body: bytes) -> KeySet:
    if len(body) > MAX_JWKS_BYTES:
        raise _JwksError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _JwksError("JWKS is not JSON") from None
    return parse_jwks(document)


class JwksCache:
    """The identity provider's keys, fetched with the runtime's httpx client."""

    def __init__(self, url: str, client: httpx.AsyncClient, *,
                 refresh_interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._client = client
        self._interval = refresh_interval
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at: float | None = None  # the previous fetch attempt
        self._lock = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()  # the first fetch has finished, either way
        self._patient_until = 0.0  # loop time; see FIRST_WAIT
        self.problem: str | None = "JWKS not fetched yet"
        self.fetches = 0

    async def start(self) -> None:
        """Fetch in the cache's own task (at once, then with a backoff until a fetch
        succeeds), which `close()` ends: start-up does not wait on the provider."""
        loop = asyncio.get_running_loop()
        self._patient_until = loop.time() + FIRST_WAIT
        self._retry = loop.create_task(self._fetch_until_loaded(), name="gateway-jwks-fetch")

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.wait([self._retry])
            self._retry = None

    async def first_attempt(self) -> None:
        """Wait until the first fetch has finished, whatever its outcome."""
        await self._attempted.wait()

    @property
    def loaded(self) -> bool:
        """Whether a key set was fetched (a later failed refresh keeps it)."""
        return self._keys is not None

    def keys(self) -> KeySet:
        if self._keys is None:
            raise _KeysUnavailable(f"identity provider keys unavailable: {self.problem}")
        return self._keys

    async def keys_soon(self) -> KeySet:
        """`keys()`, but in the first FIRST_WAIT seconds after start a caller waits for the
        first fetch (at most that long) rather than be refused while it is under way."""
        if self._keys is None and not self._attempted.is_set():
            left = self._patient_until - asyncio.get_running_loop().time()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._attempted.wait()
        return self.keys()

    async def refresh_for(self, kid: str) -> KeySet:
        """The keys, fetched again if `kid` is unknown and the last fetch is old enough."""
        keys = self.keys()
        if kid in keys.by_kid:
            return keys
        async with self._lock:
            current = self.keys()
            if kid in current.by_kid or not self._may_fetch():
                return current
            await self._fetch()
            return self.keys()

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._interval

    async def _fetch_until_loaded(self) -> None:
        delay = RETRY_FIRST
        while True:
            async with self._lock:
                fetched = await self._fetch()
            self._attempted.set()
            if fetched:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _fetch(self) -> bool:
        self._fetched_at = self._clock()
        self.fetches += 1
        try:
            async with self._client.stream("GET", self.url, timeout=FETCH_TIMEOUT) as reply:
                if reply.status_code != 200:
                    raise _JwksError(f"JWKS answered {reply.status_code}")
                body = bytearray()
                async for chunk in reply.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise _JwksError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
            keys = _decode(bytes(body))
        except (httpx.HTTPError, _JwksError) as exc:
            self.problem = f"{self.url}: {' '.join(str(exc).split()) or type(exc).__name__}"
            log.warning("JWKS fetch failed: %s", self.problem)
            return False
        self._keys, self.problem = keys, None
        return True
