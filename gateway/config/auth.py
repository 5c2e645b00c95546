"""The `[auth]` and `[limits]` sections and an endpoint's `auth`, `scopes` and `rate` (pure).

Parsed apart from the other sections: `loading.py` and `endpoints.py` call these with the
checker's `fail(path, reason)` and its `${VAR}` expansion, so every problem still carries
its key path and all are reported at once. A key source (`jwks_url`, `jwks_file`,
`secret`, `api_keys`) turns authentication on; without one, `auth.required` and an
endpoint's `auth = true` are config errors.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..auth.jwks import MIN_HS_SECRET, KeySet, _JwksError, read_jwks_file
from ..auth.tokens import SUPPORTED
from ..limits.clientip import parse_networks
from ..limits.ratelimit import Rate, parse_rate

Fail = Callable[[str, str], None]
Expand = Callable[[str, str], str]  # (key path, value) -> value with ${VAR} filled in

LIMIT_KEYS = ("ip", "jwt.sub", "api_key")
_HEADER_KEY = re.compile(r"header\.[A-Za-z0-9-]+")
_JWT_REF = re.compile(r"\{jwt\.[^{}]*\}")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class AuthSettings:
    jwks_url: str | None = None
    jwks_file: str | None = None
    secret: str | None = None  # HS256
    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway: float = 30.0
    required: bool = False
    api_keys: tuple[tuple[str, str], ...] = ()  # (client name, key)
    file_keys: KeySet | None = None  # jwks_file, read at load

    @property
    def enabled(self) -> bool:
        return bool(self.jwks_url or self.jwks_file or self.secret or self.api_keys)

    @property
    def tokens(self) -> bool:
        return bool(self.jwks_url or self.jwks_file or self.secret)


@dataclass(frozen=True)
class LimitsSettings:
    store: str = "memory"
    key: str = "ip"
    rate: Rate | None = None
    concurrency: int | None = None
    trusted_proxies: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.rate is not None or self.concurrency is not None


@dataclass(frozen=True)
class EndpointAccess:
    """An endpoint's own `auth` (None = `auth.required`), `scopes` and `rate`."""

    auth: bool | None = None
    scopes: tuple[str, ...] = ()
    rate: Rate | None = None

    def needs_auth(self, settings: AuthSettings) -> bool:
        return settings.required if self.auth is None else self.auth


def _unknown(fail: Fail, raw: dict[str, Any], path: str, known: Iterable[str]) -> None:
    known = set(known)
    for key in raw:
        if key not in known:
            fail(f"{path}.{key}", "unknown key")


def _str(fail: Fail, raw: dict[str, Any], path: str, key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        fail(f"{path}.{key}", "must be a non-empty string")
        return None
    return value


def parse_auth(fail: Fail, raw: Any, expand: Expand) -> AuthSettings:
    p = "auth"
    if not isinstance(raw, dict):
        fail(p, "must be a table")
        return AuthSettings()
    _unknown(fail, raw, p, ("jwks_url", "jwks_file", "secret", "issuer", "audience",
                            "algorithms", "leeway", "required", "api_keys"))
    jwks_url, jwks_file = _str(fail, raw, p, "jwks_url"), _str(fail, raw, p, "jwks_file")
    if jwks_url is not None:
        jwks_url = expand(f"{p}.jwks_url", jwks_url)  # ${IDP_URL:-...} like an upstream url
    secret = _str(fail, raw, p, "secret")
    if secret is not None:
        secret = expand(f"{p}.secret", secret)
        if len(secret.encode()) < MIN_HS_SECRET:
            fail(f"{p}.secret", f"must be at least {MIN_HS_SECRET} bytes (RFC 7518 3.2)")
    if jwks_url is not None and not re.match(r"https?://[^/\s]+", jwks_url):
        fail(f"{p}.jwks_url", f"'{jwks_url}' is not an http(s) URL")
    if jwks_url and jwks_file:
        fail(f"{p}.jwks_file", "give jwks_url or jwks_file, not both")
    file_keys = None
    if jwks_file is not None:
        try:
            file_keys = read_jwks_file(jwks_file)
        except _JwksError as exc:
            fail(f"{p}.jwks_file", str(exc))
    algorithms = _algorithms(fail, raw, p, secret is not None)
    leeway = raw.get("leeway", 30)
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not 0 <= leeway <= 3600:
        fail(f"{p}.leeway", "must be a number of seconds from 0 to 3600")
        leeway = 30
    required = raw.get("required", False)
    if not isinstance(required, bool):
        fail(f"{p}.required", "must be a boolean")
        required = False
    settings = AuthSettings(
        jwks_url=jwks_url, jwks_file=jwks_file, secret=secret,
        issuer=_str(fail, raw, p, "issuer"), audience=_str(fail, raw, p, "audience"),
        algorithms=algorithms, leeway=float(leeway), required=required,
        api_keys=_api_keys(fail, raw.get("api_keys", {}), f"{p}.api_keys", expand),
        file_keys=file_keys)
    if required and not settings.enabled:
        fail(f"{p}.required", "needs jwks_url, jwks_file, secret or api_keys")
    return settings


def _algorithms(fail: Fail, raw: dict[str, Any], p: str, has_secret: bool) -> tuple[str, ...]:
    if "algorithms" not in raw:
        return ("HS256",) if has_secret and not (raw.get("jwks_url") or raw.get("jwks_file")) \
            else ("RS256", "ES256", "EdDSA") + (("HS256",) if has_secret else ())
    value = raw["algorithms"]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        fail(f"{p}.algorithms", "must be a non-empty list of strings")
        return ()
    for i, alg in enumerate(value):
        if alg.lower() == "none":
            fail(f"{p}.algorithms[{i}]", "'none' (unsigned tokens) is always refused")
        elif alg not in SUPPORTED:
            fail(f"{p}.algorithms[{i}]", f"'{alg}' is not one of {', '.join(SUPPORTED)}")
    return tuple(value)


def _api_keys(fail: Fail, raw: Any, p: str, expand: Expand) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        fail(p, "must be a table of client name = key")
        return ()
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for client, key in raw.items():
        where = f"{p}.{client}"
        if not _CLIENT_NAME.fullmatch(client):
            fail(where, "a client name is letters, digits, '_', '.', '-' (at most 64)")
        if not isinstance(key, str) or not key:
            fail(where, "must be a non-empty string")
            continue
        key = expand(where, key)
        if len(key) < 16:
            fail(where, "an API key must be at least 16 characters")
        elif key in seen:
            fail(where, f"same key as {p}.{seen[key]}")
        seen[key] = client
        out.append((client, key))
    return tuple(out)


def parse_limits(fail: Fail, raw: Any) -> LimitsSettings:
    p = "limits"
    if not isinstance(raw, dict):
        fail(p, "must be a table")
        return LimitsSettings()
    _unknown(fail, raw, p, ("store", "key", "rate", "burst", "concurrency", "trusted_proxies"))
    store = raw.get("store", "memory")
    if not isinstance(store, str) or not (store == "memory" or re.match(
            r"rediss?://[^/\s]+", store) or store.startswith("unix://")):
        fail(f"{p}.store", "must be \"memory\" or a redis:// URL")
        store = "memory"
    elif store != "memory" and importlib.util.find_spec("redis") is None:
        fail(f"{p}.store", "a redis store needs the redis extra: "
                           "pip install 'quart-aggregation-gateway[redis]'")
    key = raw.get("key", "ip")
    if not isinstance(key, str) or not (key in LIMIT_KEYS or _HEADER_KEY.fullmatch(key)):
        fail(f"{p}.key", "must be \"ip\", \"jwt.sub\", \"api_key\" or \"header.NAME\"")
        key = "ip"
    rate = _rate(fail, raw, p)
    burst = raw.get("burst")
    if burst is not None:
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            fail(f"{p}.burst", "must be an integer >= 1")
        elif rate is None:
            fail(f"{p}.burst", "needs limits.rate")
        else:
            rate = Rate(rate.count, rate.period, burst)
    concurrency = raw.get("concurrency")
    if concurrency is not None and (isinstance(concurrency, bool)
                                    or not isinstance(concurrency, int) or concurrency < 1):
        fail(f"{p}.concurrency", "must be an integer >= 1")
        concurrency = None
    proxies = raw.get("trusted_proxies", [])
    if not isinstance(proxies, list) or not all(isinstance(v, str) for v in proxies):
        fail(f"{p}.trusted_proxies", "must be a list of CIDRs")
        proxies = []
    for i, cidr in enumerate(proxies):
        try:
            parse_networks([cidr])
        except ValueError as exc:
            fail(f"{p}.trusted_proxies[{i}]", str(exc))
    return LimitsSettings(store=store, key=key, rate=rate, concurrency=concurrency,
                          trusted_proxies=tuple(proxies))


def _rate(fail: Fail, raw: dict[str, Any], p: str) -> Rate | None:
    if "rate" not in raw:
        return None
    value = raw["rate"]
    if not isinstance(value, str):
        fail(f"{p}.rate", "must be a string like \"100/minute\"")
        return None
    try:
        return parse_rate(value)
    except ValueError as exc:
        fail(f"{p}.rate", str(exc))
        return None


ENDPOINT_KEYS = ("auth", "scopes", "rate")


def parse_access(fail: Fail, p: str, raw: dict[str, Any], auth: AuthSettings,
                 templates: Iterable[Any]) -> EndpointAccess:
    """An endpoint's access keys; `templates` are its calls' raw templates, for `{jwt.X}`."""
    value = raw.get("auth")
    if value is not None and not isinstance(value, bool):
        fail(f"{p}.auth", "must be a boolean")
        value = None
    scopes = raw.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s
                                               for s in scopes):
        fail(f"{p}.scopes", "must be a list of scope names (no spaces)")
        scopes = []
    access = EndpointAccess(value, tuple(scopes), _rate(fail, raw, p))
    needs = access.needs_auth(auth)
    if value is True and not auth.enabled:
        fail(f"{p}.auth", "needs [auth] jwks_url, jwks_file, secret or api_keys")
    if scopes and not needs:
        fail(f"{p}.scopes", "need authentication: this endpoint has auth off")
    if scopes and needs and not auth.tokens:
        fail(f"{p}.scopes", "need tokens (jwks_url, jwks_file or secret): API keys carry none")
    for text in _strings(list(templates)):
        if (m := _JWT_REF.search(text)) and not needs:
            fail(p, f"'{m.group(0)}' needs authentication, but this endpoint has auth off")
            break
    return access


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
