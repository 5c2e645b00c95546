"""The gateway's one error hierarchy; every class here is exported from `gateway`.

    GatewayError                 base of every error the gateway raises on purpose
     ├── ConfigError              the config is invalid; carries every problem found
     ├── BindError                a listening socket could not be created (address taken)
     ├── RequestError             the incoming request is bad (4xx, nothing was forwarded)
     ├── CallError                one upstream call failed
     │    ├── CallInputError       a {CALL.x} value the call needs is missing or unusable
     │    ├── UpstreamTimeout      the call's timeout passed (504)
     │    ├── UpstreamUnavailable  connect error, reset, protocol error (502)
     │    ├── UpstreamStatus       the upstream answered non-2xx (4xx passes through, else 502)
     │    ├── UpstreamBadReply     non-JSON, oversize or too deeply nested body (502)
     │    ├── CircuitOpen          the upstream's breaker is open (503 + Retry-After)
     │    └── MemoryBudgetExhausted  the process holds `max_buffered_bytes` of bodies (503)
     └── JobsError                a job could not be accepted or read (503 + Retry-After)
          ├── JobsBusy             max_running + max_queued jobs are already in the store
          ├── JobsClosed           this process is shutting down and accepts no new job
          └── JobsUnavailable      the store cannot be reached (Redis down); nothing was queued

A `CallError` says both what happened to the call (`status`, the upstream's
own status if it answered) and what a required failure makes of the whole
request (`gateway_status`). Messages are one line, safe to show a client:
they never hold a traceback or anything the client did not already know.

Exceptions that never leave the package are private (`_Name`): `guard._TooDeep`,
`body._BodyTooLarge`, `budget._BudgetExhausted`, `stream._ProtocolError`,
`auth.tokens._TokenError`, `auth.authenticator._AuthFailure`, `auth.jwks._JwksError`
and `_KeysUnavailable`, ...
Each is turned into one of the errors above, or a refusal (a 4xx, or 503 while
the identity provider's keys are unavailable), before a caller sees it.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The config is invalid; `problems` holds one `key.path: reason` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class BindError(GatewayError):
    """A listening socket could not be created; `str()` is one line naming the address."""

    def __init__(self, address: str, reason: str, what: str = "gateway") -> None:
        self.address = address
        self.reason = reason
        self.what = what  # "gateway", or e.g. "upstreams" for the demo's own services
        super().__init__(f"cannot listen on {address}: {reason}")


class RequestError(GatewayError):
    """The incoming request cannot be served as sent; answered with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class CallError(GatewayError):
    """An upstream call failed; `gateway_status` is what it costs a required call."""

    gateway_status = 502
    attempts = 1  # upstream attempts the call made; the retry loop sets it on its last error

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class CallInputError(CallError):
    """A value the call needs from another call's reply is missing or unusable."""


class UpstreamTimeout(CallError):
    """The call did not finish within its timeout (connect, wait and body included)."""

    gateway_status = 504


class UpstreamUnavailable(CallError):
    """The upstream could not be reached or broke the connection."""


class UpstreamStatus(CallError):
    """The upstream answered with a non-2xx status.

    A 4xx is the upstream's verdict on the request (a 404 user does not
    exist), so it passes through; anything else is the upstream's fault: 502.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, status)
        self.gateway_status = status if 400 <= status < 500 else 502


class UpstreamBadReply(CallError):
    """The upstream answered 2xx but with a body we cannot use."""


class CircuitOpen(CallError):
    """The upstream's circuit breaker is open; the call was not attempted."""

    gateway_status = 503
    attempts = 0  # the upstream was not touched

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, None)
        self.retry_after = retry_after


class MemoryBudgetExhausted(CallError):
    """The reply's body would put the process past `gateway.max_buffered_bytes`.

    Not the upstream's fault (its breaker does not count it) and not retried: the
    budget is full because of the calls in flight, which a retry would join.
    """

    gateway_status = 503

    def __init__(self, status: int | None = None) -> None:
        super().__init__("gateway memory budget exhausted", status)


class JobsError(GatewayError):
    """A job request cannot be served now; `retry_after` seconds is a fair wait."""

    retry_after = 5


class JobsBusy(JobsError):
    """The deployment already holds `max_running` running and `max_queued` waiting jobs."""

    retry_after = 2


class JobsClosed(JobsError):
    """This process is shutting down; another process (or this one, restarted) will serve."""


class JobsUnavailable(JobsError):
    """The store cannot be reached; plain aggregation is unaffected."""
