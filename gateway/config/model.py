"""The config as frozen dataclasses: what the rest of the gateway reads.

Defaults live here, once; the checkers (sections.py, endpoints.py) read them from
an instance (`GatewaySettings().timeout`) rather than repeating the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .auth import AuthSettings, EndpointAccess, LimitsSettings

STRATEGIES = ("parallel", "sequential")
LOG_FORMATS = ("text", "json")
DASHBOARD_AUTH = ("off", "auth", "key")  # gateway.dashboard_auth (dashboard.py)
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
    max_wait_ms: float | None = None  # None: batch.WAIT_WINDOWS windows


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
    access: EndpointAccess = field(default_factory=EndpointAccess)  # auth.py


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
    dashboard_auth: str = "off"  # who may use /_gateway/api: anyone, [auth]'s callers, a key
    dashboard_key: str | None = field(default=None, repr=False)  # dashboard_auth = "key"


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
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
