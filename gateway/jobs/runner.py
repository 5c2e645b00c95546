"""A job's request in and out of the gateway: captured when accepted, replayed where it runs.

Only what the aggregation can use is captured: method, path, query string,
body, request id, the headers some upstream forwards or some placeholder
reads (plus `X-Gateway-Strategy`), and who submitted it (the identity the
checks found, and the client key): the replay is not checked again, it runs
as that identity, so `{jwt.CLAIM}` and `{client}` are what they were at
submission. Cookies and other headers are never stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  (registers the "werkzeug.url_quote" codec error handler)
from werkzeug.datastructures import Headers, ImmutableMultiDict

from ..auth.identity import ANONYMOUS, Identity
from ..config import HOP_BY_HOP
from ..context import CLIENT, IDENTITY, HeaderMap, RequestContext
from ..errors import RequestError
from ..ingress import JOB, Door
from ..plan import Plan
from .model import CRASHED, TOO_LARGE, JobRequest, Outcome, dump

if TYPE_CHECKING:
    from ..app import Gateway
    from ..routing import Target

log = logging.getLogger("gateway.jobs")

_ALWAYS = ("x-gateway-strategy", "content-type")


def captured_headers(gw: Gateway) -> frozenset[str]:
    """Incoming header names a job keeps: those the gateway could ever use."""
    names = set(_ALWAYS)
    for upstream in gw.config.upstreams.values():
        names.update(upstream.forward_headers)
    for target in gw.router.targets:
        if isinstance(target, Plan):
            names.update(c.ref.name for c in target.checks if c.ref.source == "header")
    return frozenset(names - HOP_BY_HOP)


def capture(gw: Gateway, target: Target, ctx: RequestContext, query_string: bytes,
            body: bytes) -> JobRequest:
    """The request behind `ctx`, as a job (called once the request has been validated)."""
    keep = captured_headers(gw)
    headers = tuple((name.lower(), value) for name, value in _items(ctx.headers)
                    if name.lower() in keep)
    identity = ctx.identity
    kept = None if identity.kind == "anonymous" else {
        "kind": identity.kind, "client": identity.client, "claims": dict(identity.claims)}
    return JobRequest(ctx.method, ctx.path, query_string.decode("latin-1"), headers, body,
                      ctx.request_id, target.deadline or gw.config.gateway.deadline,
                      identity=kept, client=ctx.client)


def identity_of(job: JobRequest) -> Identity:
    """The identity a job was submitted with, as its replay runs (claims, scopes, client)."""
    kept = job.identity or {}
    client = kept.get("client")
    if kept.get("kind") == "jwt" and isinstance(kept.get("claims"), dict):
        return Identity.from_claims(kept["claims"])
    if kept.get("kind") == "api_key" and isinstance(client, str):
        return Identity.from_api_key(client)
    return ANONYMOUS


class Runner:
    """Runs one job's request through a gateway, in whichever process picked the job up."""

    def __init__(self, gw: Gateway, max_result_bytes: int) -> None:
        self._gw = gw
        self._max_result_bytes = max_result_bytes

    async def __call__(self, job: JobRequest) -> Outcome:
        gw = self._gw
        started = time.perf_counter()
        headers = Headers([*job.headers, ("x-request-id", job.request_id)])
        query = ImmutableMultiDict(parse_qsl(
            job.query.encode("latin-1").decode(errors="replace"), keep_blank_values=True,
            errors="werkzeug.url_quote"))
        # Checked when it was submitted; replayed here under the identity it had then.
        door = Door(JOB, job.method, job.path, query, headers, body=job.body, started=started,
                    extras={IDENTITY: identity_of(job), CLIENT: job.client})
        try:
            target, ctx, _ = await gw.ingress.admit(door)
        except RequestError as error:  # e.g. the route went away in a config reload
            refused = gw.ingress.refusal(door, error)
            return self._counted(Outcome(refused.status, refused.body))
        self._count("running")
        try:
            result = await gw.run(target, ctx)
        except Exception:
            log.exception("job for %s %s failed (request id %s)", job.method, job.path,
                          job.request_id)
            return self._counted(Outcome(None, None, CRASHED))
        raw = dump(result.body)
        if len(raw) > self._max_result_bytes:
            log.warning("job for %s %s (request id %s): result of %d bytes is over "
                        "jobs.max_result_bytes (%d); failed", job.method, job.path,
                        job.request_id, len(raw), self._max_result_bytes)
            return self._counted(Outcome(None, None, TOO_LARGE))
        return self._counted(Outcome(result.status, result.body, raw=raw))

    def _counted(self, outcome: Outcome) -> Outcome:
        self._count(outcome.state)
        return outcome

    def _count(self, state: str) -> None:
        runtime = self._gw.runtime
        if runtime is not None:
            runtime.metrics.job(state)


def _items(headers: HeaderMap) -> list[tuple[str, str]]:
    if isinstance(headers, Headers):
        return list(headers.items())
    assert isinstance(headers, Mapping)
    return list(headers.items())
