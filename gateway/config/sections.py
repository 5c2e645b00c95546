"""The settings tables: `[gateway]`, `[jobs]`, `[websocket]` and each `[upstreams.NAME]` (with its
`breaker` and `batch` tables). One function per table, each taking the raw table and
returning its frozen dataclass with the defaults of model.py for what is missing or
refused (the problem is recorded on the checker)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from .checker import HEADER_NAME_RE, NAME_RE, Checker, is_origin, one_of
from .checks import path_problem
from .model import (
    DASHBOARD_AUTH,
    HOP_BY_HOP,
    LOG_FORMATS,
    MANAGED_HEADERS,
    STRATEGIES,
    Batch,
    Breaker,
    GatewaySettings,
    JobsSettings,
    UpstreamConfig,
    WebsocketSettings,
)


def parse_gateway(c: Checker, raw: dict[str, Any]) -> GatewaySettings:
    p = "gateway"
    d = GatewaySettings()
    c.unknown(raw, p, {"strategy", "timeout", "deadline", "max_request_bytes",
                       "max_upstream_bytes", "max_buffered_bytes", "cors_origins",
                       "dashboard", "log_format", "dashboard_auth", "dashboard_key"})
    origins = c.strings(raw, p, "cors_origins") or ()
    for i, origin in enumerate(origins):
        if origin != "*" and not is_origin(origin):
            c.fail(f"{p}.cors_origins[{i}]", f"'{origin}' is not an origin like http://host:port")
    return GatewaySettings(
        strategy=c.string(raw, p, "strategy", d.strategy, one_of(STRATEGIES)),
        timeout=c.number(raw, p, "timeout", d.timeout),
        deadline=c.number(raw, p, "deadline", d.deadline),
        max_request_bytes=c.integer(raw, p, "max_request_bytes", d.max_request_bytes),
        max_upstream_bytes=c.integer(raw, p, "max_upstream_bytes", d.max_upstream_bytes),
        max_buffered_bytes=c.integer(raw, p, "max_buffered_bytes", d.max_buffered_bytes),
        cors_origins=origins,
        dashboard=c.boolean(raw, p, "dashboard", d.dashboard),
        log_format=c.string(raw, p, "log_format", d.log_format, one_of(LOG_FORMATS)),
        dashboard_auth=c.string(raw, p, "dashboard_auth", d.dashboard_auth,
                                one_of(DASHBOARD_AUTH)),
        dashboard_key=_dashboard_key(c, raw, p),
    )


MIN_DASHBOARD_KEY = 16  # characters, like an API key


def _dashboard_key(c: Checker, raw: dict[str, Any], p: str) -> str | None:
    key = c.string(raw, p, "dashboard_key", None)
    mode = raw.get("dashboard_auth", "off")
    if key is None:
        if mode == "key":
            c.fail(f"{p}.dashboard_key", 'needed by dashboard_auth = "key"')
        return None
    key = c.expand(f"{p}.dashboard_key", key)
    if mode != "key":
        c.fail(f"{p}.dashboard_key", 'only used with dashboard_auth = "key"')
    elif len(key) < MIN_DASHBOARD_KEY:
        c.fail(f"{p}.dashboard_key", f"must be at least {MIN_DASHBOARD_KEY} characters")
    return key


def parse_jobs(c: Checker, raw: dict[str, Any]) -> JobsSettings:
    p = "jobs"
    d = JobsSettings()
    c.unknown(raw, p, {"store", "max_running", "max_queued", "ttl", "heartbeat", "grace",
                       "max_result_bytes", "max_finished_bytes"})

    def store_ok(v: str) -> str | None:
        if v == "memory":
            return None
        if v.startswith(("redis://", "rediss://", "unix://")):
            if not all(importlib.util.find_spec(m) for m in ("redis", "saq")):
                return ("a redis store needs the redis extra: "
                        "pip install 'quart-aggregation-gateway[redis]'")
            return None
        return f"must be \"memory\" or a redis URL (redis://host:port/db), not '{v}'"

    grace = c.number(raw, p, "grace", d.grace, allow_zero=True)
    if grace >= 60:
        c.fail(f"{p}.grace", "must be below 60 (Hypercorn gives a worker 60 s to shut down)")
    store = c.string(raw, p, "store", d.store, store_ok)
    max_result = c.integer(raw, p, "max_result_bytes", d.max_result_bytes)
    max_finished = c.integer(raw, p, "max_finished_bytes", d.max_finished_bytes)
    if store == "memory" and max_finished < max_result:
        c.fail(f"{p}.max_finished_bytes", f"must be >= jobs.max_result_bytes ({max_result}), "
               "or a result of allowed size could never be kept")
    return JobsSettings(
        store=store,
        max_running=c.integer(raw, p, "max_running", d.max_running),
        max_queued=c.integer(raw, p, "max_queued", d.max_queued, minimum=0),
        ttl=c.number(raw, p, "ttl", d.ttl),
        heartbeat=c.number(raw, p, "heartbeat", d.heartbeat),
        grace=grace,
        max_result_bytes=max_result,
        max_finished_bytes=max_finished,
    )


def parse_websocket(c: Checker, raw: dict[str, Any]) -> WebsocketSettings:
    p = "websocket"
    d = WebsocketSettings()
    c.unknown(raw, p, {"max_in_flight", "max_message_bytes", "idle_timeout"})
    return WebsocketSettings(
        max_in_flight=c.integer(raw, p, "max_in_flight", d.max_in_flight),
        max_message_bytes=c.integer(raw, p, "max_message_bytes", d.max_message_bytes),
        idle_timeout=c.number(raw, p, "idle_timeout", d.idle_timeout),
    )


def parse_upstream(c: Checker, name: str, raw: Any,
                   settings: GatewaySettings) -> UpstreamConfig | None:
    p = f"upstreams.{name}"
    if not NAME_RE.match(name):
        c.fail(p, "upstream names are letters, digits, '_' and '-'")
    raw = c.table(raw, p)
    c.unknown(raw, p, {"url", "timeout", "retries", "max_connections", "forward_headers",
                       "headers", "cache_ttl", "breaker", "batch"})
    if "url" not in raw:
        c.fail(f"{p}.url", "is required")
    url = c.string(raw, p, "url", "")
    url = c.expand(f"{p}.url", url)
    if url and (reason := _url_problem(url)) is not None:
        c.fail(f"{p}.url", reason)
    forward = []
    for i, h in enumerate(c.strings(raw, p, "forward_headers") or ()):
        where = f"{p}.forward_headers[{i}]"
        low = h.lower()
        if not HEADER_NAME_RE.match(h):
            c.fail(where, f"'{h}' is not a header name")
        elif low in HOP_BY_HOP:
            c.fail(where, f"'{h}' is a hop-by-hop header and is never forwarded")
        elif low in MANAGED_HEADERS:
            c.fail(where, f"'{h}' is set by the gateway itself")
        else:
            forward.append(low)
    headers = []
    for h, v in c.string_table(raw, p, "headers"):
        where = f"{p}.headers.{h}"
        if not HEADER_NAME_RE.match(h):
            c.fail(where, f"'{h}' is not a header name")
            continue
        if h.lower() in HOP_BY_HOP or h.lower() in MANAGED_HEADERS:
            c.fail(where, f"'{h}' cannot be set as a static header")
            continue
        value = c.expand(where, v)
        if any(ch in value for ch in "\r\n\0"):
            c.fail(where, "header values cannot hold CR, LF or NUL")
            continue
        headers.append((h.lower(), value))
    breaker = None
    if "breaker" in raw:
        b = c.table(raw["breaker"], f"{p}.breaker")
        c.unknown(b, f"{p}.breaker", {"failures", "reset"})
        breaker = Breaker(failures=c.integer(b, f"{p}.breaker", "failures", 5),
                          reset=c.number(b, f"{p}.breaker", "reset", 30.0))
    batch = None
    if "batch" in raw:
        batch = _batch(c, f"{p}.batch", c.table(raw["batch"], f"{p}.batch"))
    return UpstreamConfig(
        name=name,
        url=url.rstrip("/"),
        timeout=c.number(raw, p, "timeout", settings.timeout),
        retries=c.integer(raw, p, "retries", 0, minimum=0),
        max_connections=c.integer(raw, p, "max_connections", 100),
        forward_headers=tuple(forward),
        headers=tuple(headers),
        cache_ttl=c.number(raw, p, "cache_ttl", 0.0, allow_zero=True),
        breaker=breaker,
        batch=batch,
    )


def _batch(c: Checker, p: str, raw: dict[str, Any]) -> Batch | None:
    c.unknown(raw, p, {"path", "param", "key", "max_size", "window_ms", "max_wait_ms"})
    for key in ("path", "param", "key"):
        if key not in raw:
            c.fail(f"{p}.{key}", "is required")
    path = c.string(raw, p, "path", "/", path_problem)
    if "{" in path:
        c.fail(f"{p}.path", "takes no placeholders")
    batch = Batch(
        path=path,
        param=c.string(raw, p, "param", "ids"),
        key=c.string(raw, p, "key", "id"),
        max_size=c.integer(raw, p, "max_size", 50),
        window_ms=c.number(raw, p, "window_ms", 5.0, allow_zero=True),
    )
    if "max_wait_ms" in raw:
        max_wait = c.number(raw, p, "max_wait_ms", batch.window_ms, allow_zero=True)
        if max_wait < batch.window_ms:
            c.fail(f"{p}.max_wait_ms", f"must be >= window_ms ({batch.window_ms:g})")
        batch = replace(batch, max_wait_ms=max_wait)
    return batch


def _url_problem(url: str) -> str | None:
    if not url.isprintable() or any(ch.isspace() for ch in url):
        return f"{url!r} holds whitespace or control characters"
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"'{url}' is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"'{url}' must start with http:// or https://"
    if not parts.hostname:
        return f"'{url}' has no host"
    if parts.username or parts.password or "@" in parts.netloc:
        return "credentials in the URL are not allowed; use headers"
    if parts.query or parts.fragment:
        return "a base URL takes no query or fragment"
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        return f"'{url}' has an invalid port"
    return None
