"""Per-client limits: rates and concurrency, their response headers, and the client IP."""

from .clientip import MAX_FORWARDED_HOPS, client_ip, parse_networks
from .headers import Window, headers, policy_header, ratelimit_header, retry_after
from .ratelimit import MAX_CLIENTS, Concurrency, Decision, Rate, RateLimiter, parse_rate

__all__ = [
    "MAX_CLIENTS",
    "MAX_FORWARDED_HOPS",
    "Concurrency",
    "Decision",
    "Rate",
    "RateLimiter",
    "Window",
    "client_ip",
    "headers",
    "parse_networks",
    "parse_rate",
    "policy_header",
    "ratelimit_header",
    "retry_after",
]
