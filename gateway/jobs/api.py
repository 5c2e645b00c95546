"""The job API: `Prefer: respond-async` on any aggregate request, `GET`/`DELETE /jobs/{id}`.

A job submitted with a token or an API key belongs to that caller (`JobRequest.owner`):
polling or cancelling it needs the same caller, and anyone else gets the 404 of an
unknown id, so a job's existence does not leak.

`register(gw)` adds the routes; the store (`new_store`) is opened by the runtime
when the app starts, after the upstream clients, and closed before them, so
running jobs can finish during the grace period; it lives on `gw.runtime.jobs`.
Job responses carry `Cache-Control: no-store`: a result may hold private data,
and its id is the only key to it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quart import Response, request

from .. import envelope
from ..auth.authenticator import _AuthFailure
from ..auth.check import KEYS_RETRY_AFTER, challenge
from ..auth.jwks import _KeysUnavailable
from ..context import RequestContext
from ..errors import ConfigError, JobsError
from ..result import refusal
from .model import owner_of, valid_job_id
from .runner import Runner, capture
from .store import REDIS_MISSING, JobStore, Timing, open_store, redis_available

if TYPE_CHECKING:
    from ..app import Gateway
    from ..routing import Target
    from ..runtime import Runtime

POLL_AFTER = 1  # seconds: Retry-After while a job is unfinished


def register(gw: Gateway) -> None:
    """Wire jobs into a gateway's app; called once from `Gateway._wire`."""
    app = gw.app
    if gw.config.jobs.store != "memory":
        if not redis_available():  # a Config built in code skipped load_config's check
            raise ConfigError([f"jobs.store: {REDIS_MISSING}"])
        # Import redis-py and SAQ now, not on the event loop when the app starts.
        importlib.import_module(".redis_store", __package__)

    async def job(job_id: str) -> Response:
        return await (cancel(gw, job_id) if request.method == "DELETE" else show(gw, job_id))

    app.add_url_rule("/jobs/<job_id>", "job", job, methods=["GET", "DELETE"])


def new_store(gw: Gateway) -> tuple[JobStore, Runner]:
    """The store `[jobs]` names, not started, and the runner that replays its jobs here."""
    return open_store(gw.config.jobs, timing(gw)), Runner(gw, gw.config.jobs.max_result_bytes)


def timing(gw: Gateway) -> Timing:
    jobs = gw.config.jobs
    return Timing(heartbeat=jobs.heartbeat, grace=jobs.grace)


def wants_async(headers: Mapping[str, str] | Any) -> bool:
    """`Prefer: respond-async` among the preferences (RFC 7240: comma-separated tokens)."""
    prefer = headers.get("prefer") or ""
    return any(p.split(";", 1)[0].strip().lower() == "respond-async" for p in prefer.split(","))


async def respond_async(gw: Gateway, target: Target, ctx: RequestContext,
                        body: bytes) -> Response | None:
    """202 and a job for a validated request that prefers it; None to answer it in line."""
    if not wants_async(ctx.headers):
        return None
    store = _store(gw)
    if store is None:
        return _aggregate_error(gw, ctx, 503, "background jobs are not available: the "
                                "gateway is not serving", 5)
    try:
        view = await store.submit(capture(gw, target, ctx, request.query_string, body))
    except JobsError as error:
        return _aggregate_error(gw, ctx, 503, str(error), error.retry_after)
    _count(gw, "queued")
    url = f"/jobs/{view.id}"
    out = {"id": view.id, "status": view.state, "status_url": url,
           "created_at": view.to_json()["created_at"]}
    return _json(out, 202, {"Location": url, "Preference-Applied": "respond-async",
                            "X-Request-ID": ctx.request_id})


async def show(gw: Gateway, job_id: str) -> Response:
    store = _store(gw)
    if store is None:
        return _unavailable()
    caller = await _caller(gw)
    if isinstance(caller, Response):
        return caller
    try:
        view = await store.get(job_id) if valid_job_id(job_id) else None
    except JobsError as error:
        return _json({"error": str(error)}, 503, {"Retry-After": str(error.retry_after)})
    if view is None or (view.owner is not None and view.owner != caller):
        return _unknown()  # another caller's job: as unknown as a made-up id
    if not view.finished:
        return _json(view.to_bytes(), 202, {"Retry-After": str(POLL_AFTER)})
    return _json(view.to_bytes(), 200)


async def cancel(gw: Gateway, job_id: str) -> Response:
    store = _store(gw)
    if store is None:
        return _unavailable()
    caller = await _caller(gw)
    if isinstance(caller, Response):
        return caller
    try:
        view = await store.get(job_id) if valid_job_id(job_id) else None
        if view is not None and view.owner is not None and view.owner != caller:
            return _unknown()
        if view is not None and not view.finished:  # a finished job's verdict is final
            view = await store.cancel(job_id)
    except JobsError as error:
        return _json({"error": str(error)}, 503, {"Retry-After": str(error.retry_after)})
    if view is None:
        return _unknown()
    if view.state != "canceled":  # it had finished: nothing to cancel
        reason = f"the job already finished ({view.state}); nothing to cancel"
        return _json(view.to_bytes(error=reason), 409)
    _count(gw, "canceled")
    return _json(view.to_bytes(), 202)


async def publish_counts(runtime: Runtime) -> None:
    """Set `gateway_jobs_in_store{state}` from the store; left as it was while unreachable."""
    if runtime.jobs is None:
        return
    try:
        counts = await runtime.jobs.counts_by_state()
    except JobsError:
        return
    runtime.metrics.job_counts(counts)


async def _caller(gw: Gateway) -> str | Response | None:
    """The owner the polling request names (`owner_of`), or the refusal of its credentials.

    Refused credentials are a 401 as on any endpoint (that says nothing about the job);
    none, or another caller's, make someone else's job a 404.
    """
    runtime = gw.runtime
    authenticator = None if runtime is None else runtime.authenticator
    if authenticator is None:
        return None
    try:
        identity = await authenticator.identify(request.headers)
    except _AuthFailure as failure:
        value = challenge("invalid_token", failure.reason) if failure.token else challenge()
        return _json({"error": failure.reason}, 401, {"WWW-Authenticate": value})
    except _KeysUnavailable as error:
        return _json({"error": str(error)}, 503, {"Retry-After": str(KEYS_RETRY_AFTER)})
    return owner_of({"kind": identity.kind, "client": identity.client,
                     "claims": identity.claims})


def _count(gw: Gateway, state: str) -> None:
    if gw.runtime is not None:
        gw.runtime.metrics.job(state)


def _store(gw: Gateway) -> JobStore | None:
    runtime = gw.runtime
    return None if runtime is None else runtime.jobs


def _unknown() -> Response:
    return _json({"error": "no such job (unknown, or expired: past its ttl, or dropped to "
                           "keep finished jobs within jobs.max_finished_bytes)"}, 404)


def _unavailable() -> Response:
    return _json({"error": "background jobs are not available: the gateway is not serving"},
                 503, {"Retry-After": "5"})


def _aggregate_error(gw: Gateway, ctx: RequestContext, status: int, message: str,
                     retry_after: int) -> Response:
    refused = refusal(status, message, request_id=ctx.request_id, strategy=ctx.strategy,
                      started=ctx.started, extra={"Retry-After": str(retry_after)})
    return Response(envelope.dumps(refused.body), status=status, headers=refused.headers,
                    content_type="application/json")


def _json(obj: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    """A job response from an object or from JSON bytes already made (`JobView.to_bytes`)."""
    body = obj if isinstance(obj, bytes) else envelope.dumps(obj)
    response = Response(body, status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response

