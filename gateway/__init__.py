"""API aggregation gateway: one request in, concurrent upstream calls out, one timed reply."""

from .app import Gateway, create_app
from .config import Config, load_config
from .context import RequestContext
from .errors import (
    BindError,
    CallError,
    CallInputError,
    CircuitOpen,
    ConfigError,
    GatewayError,
    JobsBusy,
    JobsClosed,
    JobsError,
    JobsUnavailable,
    MemoryBudgetExhausted,
    RequestError,
    UpstreamBadReply,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .fan import Fan, FanCall
from .result import Result

__all__ = [
    "BindError",
    "CallError",
    "CallInputError",
    "CircuitOpen",
    "Config",
    "ConfigError",
    "Fan",
    "FanCall",
    "Gateway",
    "GatewayError",
    "JobsBusy",
    "JobsClosed",
    "JobsError",
    "JobsUnavailable",
    "MemoryBudgetExhausted",
    "RequestContext",
    "RequestError",
    "Result",
    "UpstreamBadReply",
    "UpstreamStatus",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "create_app",
    "load_config",
]
