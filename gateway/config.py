"""TOML config -> frozen dataclasses, validated once and completely at load.

Every problem is collected (not just the first) as one `key.path: reason`
line, so `gateway check` can show them all at once. Pure but for two outside
inputs: the environment, read for `${VAR}` values, and the `combine` hooks,
imported here (hooks.py) so that a hook that cannot be imported is reported
with every other problem, not after they are fixed.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError
from .hooks import hook_folder, hook_problem
from .template import BodyTemplate, Ref, TemplateSyntaxError, parse_refs, usage_problem

STRATEGIES = ("parallel", "sequential")
LOG_FORMATS = ("text", "json")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
RESERVED_PREFIXES = ("/healthz", "/readyz", "/metrics", "/jobs", "/ws", "/_gateway")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
    }
)
# Headers the gateway sets itself; forwarding or overriding them would break framing or routing.
MANAGED_HEADERS = frozenset({"host", "content-length", "content-type", "x-request-id"})

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
COMBINE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


@dataclass(frozen=True, slots=True)
class Breaker:
    failures: int = 5
    reset: float = 30.0  # seconds open before one trial call


@dataclass(frozen=True, slots=True)
class Batch:
    path: str
    param: str
    key: str
    max_size: int = 50
    window_ms: float = 5.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str  # scheme://host[:port][/base], no trailing slash
    timeout: float  # seconds, bounds the whole call including retries
    retries: int = 0
    max_connections: int = 100
    forward_headers: tuple[str, ...] = ()  # lower-case
    headers: tuple[tuple[str, str], ...] = ()
    cache_ttl: float = 0.0  # seconds; 0 = off
    breaker: Breaker | None = None
    batch: Batch | None = None


@dataclass(frozen=True, slots=True)
class CallConfig:
    name: str
    upstream: str
    path: str | None = None
    batch_key: str | None = None
    method: str = "GET"
    query: tuple[tuple[str, str], ...] = ()
    body: Any = None
    has_body: bool = False
    optional: bool = False
    default: Any = None
    select: tuple[str, ...] | None = None
    rename: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    route: str
    method: str = "GET"
    calls: tuple[CallConfig, ...] = ()
    combine: str | None = None
    strategy: str | None = None  # None = the gateway's
    deadline: float | None = None  # None = the gateway's


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    strategy: str = "parallel"
    timeout: float = 5.0
    deadline: float = 10.0
    max_request_bytes: int = 1024 * 1024
    max_upstream_bytes: int = 10 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    dashboard: bool = True
    max_buffered_bytes: int = 256 * 1024 * 1024  # all calls in flight together (budget.py)
    log_format: str = "text"  # "json": one object per line (logs.py)


@dataclass(frozen=True, slots=True)
class JobsSettings:
    store: str = "memory"
    max_running: int = 4
    max_queued: int = 4
    ttl: float = 300.0
    heartbeat: float = 2.0  # seconds between a running job's heartbeats; 3 missed = lost
    grace: float = 10.0  # seconds running jobs may still finish when a process shuts down
    max_result_bytes: int = 8 * 1024 * 1024  # a job whose serialized result is bigger fails
    max_finished_bytes: int = 64 * 1024 * 1024  # memory store: finished results kept, in all


@dataclass(frozen=True, slots=True)
class WebsocketSettings:
    """Bounds of one `/ws` connection (stream.py); a reload applies them to new sockets."""

    max_in_flight: int = 16  # unanswered requests per socket; more get an `error` message
    max_message_bytes: int = 1024 * 1024  # a larger message closes the socket with 1009
    # Seconds with no message and nothing in flight: closed with 1001. Below hypercorn.toml's
    # read_timeout (30 s), which drops a connection silent that long with no close frame.
    idle_timeout: float = 25.0


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    endpoints: tuple[EndpointConfig, ...] = ()
    source: str | None = None  # the file it came from, for messages
    websocket: WebsocketSettings = field(default_factory=WebsocketSettings)


T = TypeVar("T")


class _Checker:
    """Reads raw TOML data with key paths, collecting problems instead of raising."""

    def __init__(self, hook_folder: str | None = None) -> None:
        self.problems: list[str] = []
        self.hook_folder = hook_folder  # where `combine` modules are looked up first

    def fail(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def table(self, raw: Any, path: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(path, f"must be a table, not {_type_name(raw)}")
            return {}
        return raw

    def unknown(self, raw: dict[str, Any], path: str, known: set[str]) -> None:
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.fail(_join(path, key), "unknown key" + hint)

    def get(
        self,
        raw: dict[str, Any],
        path: str,
        key: str,
        kind: Callable[[Any], bool],
        kind_name: str,
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        if key not in raw:
            return default
        value = raw[key]
        where = _join(path, key)
        if not kind(value):
            self.fail(where, f"must be {kind_name}, not {_type_name(value)}")
            return default
        if check is not None and (reason := check(value)) is not None:
            self.fail(where, reason)
            return default
        return value  # type: ignore[no-any-return]

    def number(self, raw: dict[str, Any], path: str, key: str, default: float,
               minimum: float = 0.0, allow_zero: bool = False) -> float:
        def check(v: Any) -> str | None:
            if not -(2.0**1023) < v < 2.0**1023:  # also refuses TOML's nan and inf
                return "must be a finite number"
            if v < minimum or (v == minimum and not allow_zero):
                return f"must be {'>=' if allow_zero else '>'} {minimum:g}"
            return None

        return float(self.get(raw, path, key, _is_number, "a number", default, check))

    def integer(self, raw: dict[str, Any], path: str, key: str, default: int,
                minimum: int = 1) -> int:
        def check(v: Any) -> str | None:
            return f"must be >= {minimum}" if v < minimum else None

        return int(self.get(raw, path, key, _is_int, "an integer", default, check))

    def string(self, raw: dict[str, Any], path: str, key: str, default: T,
               check: Callable[[Any], str | None] | None = None) -> str | T:
        return self.get(raw, path, key, _is_str, "a string", default, check)

    def boolean(self, raw: dict[str, Any], path: str, key: str, default: bool) -> bool:
        return bool(self.get(raw, path, key, _is_bool, "a boolean", default))

    def strings(self, raw: dict[str, Any], path: str, key: str) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(_join(path, key), "must be a list of strings")
            return None
        return tuple(value)

    def string_table(self, raw: dict[str, Any], path: str, key: str,
                     scalars: bool = False) -> tuple[tuple[str, str], ...]:
        if key not in raw:
            return ()
        where = _join(path, key)
        table = self.table(raw[key], where)
        out = []
        for k, v in table.items():
            if scalars and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            elif scalars and isinstance(v, bool):
                v = "true" if v else "false"
            if not isinstance(v, str):
                self.fail(_join(where, k), f"must be a string, not {_type_name(v)}")
                continue
            out.append((k, v))
        return tuple(out)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | Config,
                env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config from a path, a dict of the TOML shape, or a Config.

    Raises `ConfigError` with every problem found.
    """
    if isinstance(source, Config):
        return source
    origin: str | None = None
    if isinstance(source, Mapping):
        raw: Any = source
    else:
        origin = os.fspath(source)
        try:
            raw = tomllib.loads(Path(origin).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{origin}: file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{origin}: cannot read: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{origin}: invalid TOML: {exc}"]) from None
    return parse_config(raw, env=os.environ if env is None else env, source=origin)


def parse_config(raw: Any, env: Mapping[str, str], source: str | None = None) -> Config:
    """Validate already-parsed TOML data; raises `ConfigError` listing every problem."""
    c = _Checker(hook_folder(source))
    top = c.table(raw, "config")
    c.unknown(top, "", {"gateway", "jobs", "websocket", "upstreams", "endpoints"})
    settings = _gateway(c, c.table(top.get("gateway", {}), "gateway"))
    jobs = _jobs(c, c.table(top.get("jobs", {}), "jobs"))
    websocket = _websocket(c, c.table(top.get("websocket", {}), "websocket"))
    upstreams: dict[str, UpstreamConfig] = {}
    upstreams_raw = c.table(top.get("upstreams", {}), "upstreams")
    for name, up_raw in upstreams_raw.items():
        up = _upstream(c, name, up_raw, settings, env)
        if up is not None:
            upstreams[name] = up
    endpoints_raw = top.get("endpoints", [])
    endpoints: list[EndpointConfig] = []
    if not isinstance(endpoints_raw, list):
        c.fail("endpoints", "must be an array of tables ([[endpoints]])")
        endpoints_raw = []
    seen_routes: dict[tuple[str, str], int] = {}
    declared = set(upstreams_raw)
    for i, ep_raw in enumerate(endpoints_raw):
        ep = _endpoint(c, f"endpoints[{i}]", ep_raw, upstreams, declared)
        if ep is None:
            continue
        key = (ep.route, ep.method)
        if ep.route and key in seen_routes:
            c.fail(f"endpoints[{i}].route",
                   f"{ep.method} {ep.route} is already defined by endpoints[{seen_routes[key]}]")
        seen_routes[key] = i
        endpoints.append(ep)
    if c.problems:
        raise ConfigError(c.problems)
    return Config(settings, jobs, upstreams, tuple(endpoints), source, websocket=websocket)


def _gateway(c: _Checker, raw: dict[str, Any]) -> GatewaySettings:
    p = "gateway"
    d = GatewaySettings()
    c.unknown(raw, p, {"strategy", "timeout", "deadline", "max_request_bytes",
                       "max_upstream_bytes", "max_buffered_bytes", "cors_origins",
                       "dashboard", "log_format"})
    origins = c.strings(raw, p, "cors_origins") or ()
    for i, origin in enumerate(origins):
        if origin != "*" and not _is_origin(origin):
            c.fail(f"{p}.cors_origins[{i}]", f"'{origin}' is not an origin like http://host:port")
    return GatewaySettings(
        strategy=c.string(raw, p, "strategy", d.strategy, _one_of(STRATEGIES)),
        timeout=c.number(raw, p, "timeout", d.timeout),
        deadline=c.number(raw, p, "deadline", d.deadline),
        max_request_bytes=c.integer(raw, p, "max_request_bytes", d.max_request_bytes),
        max_upstream_bytes=c.integer(raw, p, "max_upstream_bytes", d.max_upstream_bytes),
        max_buffered_bytes=c.integer(raw, p, "max_buffered_bytes", d.max_buffered_bytes),
        cors_origins=origins,
        dashboard=c.boolean(raw, p, "dashboard", d.dashboard),
        log_format=c.string(raw, p, "log_format", d.log_format, _one_of(LOG_FORMATS)),
    )


def _jobs(c: _Checker, raw: dict[str, Any]) -> JobsSettings:
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


def _websocket(c: _Checker, raw: dict[str, Any]) -> WebsocketSettings:
    p = "websocket"
    d = WebsocketSettings()
    c.unknown(raw, p, {"max_in_flight", "max_message_bytes", "idle_timeout"})
    return WebsocketSettings(
        max_in_flight=c.integer(raw, p, "max_in_flight", d.max_in_flight),
        max_message_bytes=c.integer(raw, p, "max_message_bytes", d.max_message_bytes),
        idle_timeout=c.number(raw, p, "idle_timeout", d.idle_timeout),
    )


def _upstream(c: _Checker, name: str, raw: Any, settings: GatewaySettings,
              env: Mapping[str, str]) -> UpstreamConfig | None:
    p = f"upstreams.{name}"
    if not NAME_RE.match(name):
        c.fail(p, "upstream names are letters, digits, '_' and '-'")
    raw = c.table(raw, p)
    c.unknown(raw, p, {"url", "timeout", "retries", "max_connections", "forward_headers",
                       "headers", "cache_ttl", "breaker", "batch"})
    if "url" not in raw:
        c.fail(f"{p}.url", "is required")
    url = c.string(raw, p, "url", "")
    url = _expand_env(c, f"{p}.url", url, env)
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
        value = _expand_env(c, where, v, env)
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


def _batch(c: _Checker, p: str, raw: dict[str, Any]) -> Batch | None:
    c.unknown(raw, p, {"path", "param", "key", "max_size", "window_ms"})
    for key in ("path", "param", "key"):
        if key not in raw:
            c.fail(f"{p}.{key}", "is required")
    path = c.string(raw, p, "path", "/", _path_problem)
    if "{" in path:
        c.fail(f"{p}.path", "takes no placeholders")
    batch = Batch(
        path=path,
        param=c.string(raw, p, "param", "ids"),
        key=c.string(raw, p, "key", "id"),
        max_size=c.integer(raw, p, "max_size", 50),
        window_ms=c.number(raw, p, "window_ms", 5.0, allow_zero=True),
    )
    return batch


def _endpoint(c: _Checker, p: str, raw: Any, upstreams: Mapping[str, UpstreamConfig],
              declared: set[str]) -> EndpointConfig | None:
    raw = c.table(raw, p)
    c.unknown(raw, p, {"route", "method", "calls", "combine", "strategy", "deadline"})
    if "route" not in raw:
        c.fail(f"{p}.route", "is required")
    route = c.string(raw, p, "route", "", _route_problem)
    method = c.string(raw, p, "method", "GET", _one_of(METHODS, upper=True)).upper()
    combine = c.string(raw, p, "combine", None,
                       lambda v: hook_problem(v, c.hook_folder) if COMBINE_RE.match(v)
                       else f"must be 'module:function', not '{v}'")
    strategy = c.string(raw, p, "strategy", None, _one_of(STRATEGIES))
    deadline = c.number(raw, p, "deadline", -1.0)
    calls_raw = raw.get("calls", [])
    if not isinstance(calls_raw, list):
        c.fail(f"{p}.calls", "must be an array of tables ([[endpoints.calls]])")
        calls_raw = []
    if not calls_raw:
        c.fail(f"{p}.calls", "an endpoint needs at least one call")
    calls: list[CallConfig] = []
    names: set[str] = set()
    for j, call_raw in enumerate(calls_raw):
        call = _call(c, f"{p}.calls[{j}]", call_raw, upstreams, declared)
        if call is None:
            continue
        if call.name and call.name in names:
            c.fail(f"{p}.calls[{j}].name", f"'{call.name}' is used by another call")
        names.add(call.name)
        calls.append(call)
    # Checked under an invalid route too (its parameters read leniently): one broken line
    # must not hide the problems of every call below it.
    raw_route = raw.get("route")
    if isinstance(raw_route, str) and raw_route:
        _check_placeholders(c, p, raw_route, calls, lenient=route != raw_route)
    return EndpointConfig(route=route, method=method, calls=tuple(calls), combine=combine,
                          strategy=strategy, deadline=None if deadline < 0 else deadline)


def _call(c: _Checker, p: str, raw: Any, upstreams: Mapping[str, UpstreamConfig],
          declared: set[str]) -> CallConfig | None:
    raw = c.table(raw, p)
    c.unknown(raw, p, {"name", "upstream", "path", "batch_key", "method", "query", "body",
                       "optional", "default", "select", "rename"})
    for key in ("name", "upstream"):
        if key not in raw:
            c.fail(f"{p}.{key}", "is required")
    name = c.string(raw, p, "name", "",
                    lambda v: None if NAME_RE.match(v) and v not in ("query", "header", "body")
                    else f"'{v}' is not usable as a call name (letters, digits, '_', '-'; "
                         "not query/header/body)")
    upstream = c.string(raw, p, "upstream", "")
    if upstream and upstream not in declared:
        c.fail(f"{p}.upstream", f"unknown upstream '{upstream}'")
    path = c.string(raw, p, "path", None, _path_problem)
    batch_key = c.string(raw, p, "batch_key", None)
    if "path" not in raw and "batch_key" not in raw:  # not when one is there but invalid
        c.fail(p, "needs 'path' (or 'batch_key' for a batching upstream)")
    if "path" in raw and "batch_key" in raw:
        c.fail(p, "has both 'path' and 'batch_key'; a call uses one")
    method = c.string(raw, p, "method", "GET", _one_of(METHODS, upper=True)).upper()
    up = upstreams.get(upstream)
    if batch_key is not None:
        if up is not None and up.batch is None:
            c.fail(f"{p}.batch_key", f"upstream '{upstream}' has no [upstreams.{upstream}.batch]")
        if method != "GET":
            c.fail(f"{p}.method", "batched calls are GET")
    optional = c.boolean(raw, p, "optional", False)
    if "default" in raw and not optional:
        c.fail(f"{p}.default", "only optional calls have a default")
    rename = c.string_table(raw, p, "rename")
    select = c.strings(raw, p, "select")
    for old, _ in rename:
        if select is not None and old not in select:
            c.fail(f"{p}.rename.{old}", f"'{old}' is not in select, so there is nothing to "
                                        "rename; add it to select")
    return CallConfig(
        name=name,
        upstream=upstream,
        path=path,
        batch_key=batch_key,
        method=method,
        query=c.string_table(raw, p, "query", scalars=True),
        body=raw.get("body"),
        has_body="body" in raw,
        optional=optional,
        default=raw.get("default"),
        select=select,
        rename=rename,
    )


def call_templates(call: CallConfig) -> list[tuple[str, Any]]:
    """Each template of a call with its key: path, batch_key, query.NAME, body."""
    found: list[tuple[str, Any]] = []
    if call.path is not None:
        found.append(("path", call.path))
    if call.batch_key is not None:
        found.append(("batch_key", call.batch_key))
    found += [(f"query.{k}", v) for k, v in call.query]
    if call.has_body:
        found.append(("body", call.body))
    return found


def template_refs(key: str, raw: Any, params: tuple[str, ...],
                  names: tuple[str, ...]) -> list[Ref]:
    """The placeholders of one template; raises `TemplateSyntaxError`, also for a
    placeholder form that does not work where it stands (`usage_problem`)."""
    where = key.partition(".")[0]
    if where == "body":
        refs = list(BodyTemplate.parse(raw, params, names).refs)
        whole = False
    else:
        parts = parse_refs(raw, params, names)
        refs = [r for r in parts if isinstance(r, Ref)]
        whole = len(parts) == 1
    for ref in refs:
        problem = usage_problem(ref, where, whole)
        if problem is not None:
            raise TemplateSyntaxError(problem)
    return refs


def _check_placeholders(c: _Checker, p: str, route: str, calls: list[CallConfig],
                        lenient: bool = False) -> None:
    """Unknown placeholders and dependency cycles, found at load.

    `lenient`: the route is invalid, so its parameters are read from whatever `<...name`
    it holds, closed or not (no false "names neither a route parameter" for them).
    """
    params = _lenient_params(route) if lenient else route_params(route)
    names = tuple(call.name for call in calls)
    for name in params:
        if name in ("query", "header", "body"):
            c.fail(f"{p}.route", f"route parameter '{name}' clashes with the {{{name}.NAME}} "
                                 "placeholders; rename it")
    deps: dict[str, set[str]] = {}
    for j, call in enumerate(calls):
        if call.name in params:
            c.fail(f"{p}.calls[{j}].name", f"'{call.name}' is also a route parameter; "
                                           "placeholders could not tell them apart")
        deps[call.name] = set()
        for key, raw in call_templates(call):
            try:
                refs = template_refs(key, raw, params, names)
            except TemplateSyntaxError as exc:
                c.fail(f"{p}.calls[{j}].{key}", str(exc))
                continue
            for ref in refs:
                if ref.source != "call":
                    continue
                if ref.name == call.name:
                    c.fail(f"{p}.calls[{j}].{key}", f"'{ref.text}' refers to the call itself")
                else:
                    deps[call.name].add(ref.name)
    cycle = find_cycle(names, deps)
    if cycle:
        c.fail(f"{p}.calls", "dependency cycle: " + " -> ".join(cycle))


def find_cycle(order: tuple[str, ...], deps: Mapping[str, set[str]]) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(deps.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in order:
        if n not in state and (found := visit(n)):
            return found
    return None


def _expand_env(c: _Checker, path: str, value: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        var, fallback = m.group(1), m.group(2)
        if var not in env and fallback is not None:
            return fallback
        if var not in env:
            c.fail(path, f"environment variable {var} is not set")
            return ""
        return env[var]

    return ENV_RE.sub(sub, value)


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


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return f"'{path}' must start with '/'"
    path = _PLACEHOLDER_TEXT.sub("_", path)  # a default may hold any text; checked apart
    if "?" in path or "#" in path:
        return "put query parameters in 'query', not in the path"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "'.' and '..' segments are not allowed"
    return None


_PLACEHOLDER_TEXT = re.compile(r"\{[^{}]*\}")


def _route_problem(route: str) -> str | None:
    if not route.startswith("/"):
        return f"'{route}' must start with '/'"
    for prefix in RESERVED_PREFIXES:
        if route == prefix or route.startswith(prefix + "/"):
            return f"'{route}' is reserved for the gateway ({prefix})"
    from werkzeug.routing import Map, Rule  # werkzeug comes with quart

    try:
        Map([Rule(route, endpoint="x")])
    except (ValueError, LookupError) as exc:
        return f"'{route}' is not a valid route: {exc}"
    return None


def route_params(route: str) -> tuple[str, ...]:
    """Names of the `<converter:name>` parameters of a Flask-style route."""
    return tuple(m.group(1) for m in re.finditer(r"<(?:[^:<>]+:)?([A-Za-z_]\w*)>", route))


def _lenient_params(route: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.group(1) for m in
                               re.finditer(r"<(?:[^:<>]+:)?([A-Za-z_]\w*)", route)))


def _one_of(choices: tuple[str, ...], upper: bool = False) -> Callable[[Any], str | None]:
    def check(v: str) -> str | None:
        value = v.upper() if upper else v
        if value in choices:
            return None
        return f"must be one of {', '.join(choices)}, not '{v}'"

    return check


def _is_origin(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.path in ("", "/")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(v: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)
