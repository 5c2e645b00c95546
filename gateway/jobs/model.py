"""What a job is, independent of where it is kept (pure).

A job holds the *request* it will replay, never Python objects: any process
that shares the store can run it by routing the request again. Its public
face is `JobView`, the JSON that `GET /jobs/{id}` answers.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "canceled")
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

# 24 URL-safe characters = 144 random bits: ids cannot be guessed, so holding one is the
# permission to read a result that may carry private data.
_ID_BYTES = 18
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}\Z")

# What a job that produced no aggregate response says in its `error`.
CANCELED = "canceled by request"
LOST = "the gateway process running this job stopped (no heartbeat); it did not finish"
SHUTDOWN = "the gateway process running this job shut down before it finished"
SHUTDOWN_QUEUED = "the gateway shut down before this job started"
CRASHED = "the job failed inside the gateway; the server log has details"
TIMED_OUT = "the job did not finish within its deadline"
RESULT_GONE = ("the job's result is no longer in the store (its key was evicted or deleted;"
               " run Redis with maxmemory-policy noeviction)")
TOO_LARGE = "result too large"  # over jobs.max_result_bytes (SPEC section 13)
# A Redis job's result: RAW_BODY carries its body bytes to the queue, which keeps them under
# a key of their own and marks the record's result {"body": OWN_KEY} (`_saq.py`).
RAW_BODY = "body_bytes"
OWN_KEY = "own key"
JOB_SLACK = 10.0  # seconds a job may run past its aggregate's deadline before it is stopped


def new_job_id() -> str:
    return secrets.token_urlsafe(_ID_BYTES)


def valid_job_id(job_id: str) -> bool:
    """Cheap shape check, so a malformed id is a 404 without touching the store."""
    return _ID_RE.match(job_id) is not None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """An aggregate request as it arrived, enough to run it again in any process."""

    method: str
    path: str
    query: str  # the raw query string, without '?'
    headers: tuple[tuple[str, str], ...]  # lower-case names, allowlisted
    body: bytes
    request_id: str
    deadline: float  # the aggregate's own budget, seconds; jobs are stopped a little after
    # Who submitted it (SPEC 9: a job keeps that identity): `Identity` as JSON, the client key.
    identity: dict[str, Any] | None = None  # {"kind", "client", "claims"}; None = anonymous
    client: str | None = None  # `{client}` when it was submitted

    @property
    def owner(self) -> str | None:
        """Who may poll or cancel it: `owner_of(identity)`; None = whoever holds the id."""
        return owner_of(self.identity)

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [list(h) for h in self.headers],
            "body": base64.b64encode(self.body).decode("ascii"),
            "request_id": self.request_id,
            "deadline": self.deadline,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobRequest:
        return cls(
            method=raw["method"],
            path=raw["path"],
            query=raw["query"],
            headers=tuple((str(k), str(v)) for k, v in raw["headers"]),
            body=base64.b64decode(raw["body"]),
            request_id=raw["request_id"],
            deadline=float(raw["deadline"]),
            identity=raw.get("identity"),  # absent in the records of earlier versions
            client=raw.get("client"),
        )


def owner_of(identity: dict[str, Any] | None) -> str | None:
    """The caller a job belongs to: a token's issuer and subject, or an API key's client.

    Anonymous callers (and tokens without `sub`) own nothing: their job id, 144 random
    bits, stays the only key to it, as without `[auth]`.
    """
    if not identity:
        return None
    kind, client = identity.get("kind"), identity.get("client")
    if not isinstance(client, str):
        return None
    if kind == "jwt":
        claims = identity.get("claims") or {}
        return f"jwt {claims.get('iss', '')} {client}"
    return f"api_key {client}" if kind == "api_key" else None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What running a job produced: an aggregate response, or an error without one.

    `raw` is `body` serialized, when whoever ran the job already has it (the runner
    measures it against `jobs.max_result_bytes`), so a store need not serialize again.
    """

    http_status: int | None
    body: dict[str, Any] | None
    error: str | None = None
    raw: bytes | None = None

    def serialized(self) -> bytes | None:
        """The body as JSON bytes: what a finished job keeps instead of the object tree."""
        if self.raw is not None or self.body is None:
            return self.raw
        return dump(self.body)

    @property
    def state(self) -> JobState:
        """`succeeded` when the aggregate answered below 400; anything else `failed`."""
        ok = self.http_status is not None and self.http_status < 400 and self.error is None
        return "succeeded" if ok else "failed"

    def to_json(self) -> dict[str, Any]:
        return {"http_status": self.http_status, "body": self.body, "error": self.error}

    @classmethod
    def from_json(cls, raw: Any) -> Outcome:
        if not isinstance(raw, dict):
            return cls(None, None, CRASHED)
        return cls(raw.get("http_status"), raw.get("body"), raw.get("error"))

    def to_redis(self) -> dict[str, Any]:
        """What the Redis store's job function returns: the body as the bytes already made,
        under RAW_BODY, which the queue stores under a key of its own (`_saq.py`)."""
        return {"http_status": self.http_status, "error": self.error,
                RAW_BODY: self.serialized()}

    def to_record(self) -> dict[str, Any]:
        """As a Redis job record keeps it: the body as JSON text, so that reading the job
        parses one string, not a tree ~10 times the body's size."""
        raw = self.serialized()
        return {"http_status": self.http_status, "error": self.error,
                "body_json": None if raw is None else raw.decode()}

    @classmethod
    def from_record(cls, record: Any, body: bytes | None = None) -> Outcome:
        """A Redis job's result: `to_redis`'s record with the `body` read from its own key;
        also `to_record`'s and `to_json`'s forms (records of earlier versions)."""
        if isinstance(record, dict) and record.get("body") == OWN_KEY:
            if body is None:  # the body's key is gone (evicted, deleted): no null success
                return cls(None, None, RESULT_GONE)
            raw: bytes | None = body
        elif not isinstance(record, dict) or "body_json" not in record:
            return cls.from_json(record)
        else:
            text = record["body_json"]
            raw = None if text is None else text.encode()
        outcome = cls(record.get("http_status"), None, record.get("error"), raw=raw)
        if raw is not None and outcome.state == "failed":  # a small error envelope: its
            return cls(outcome.http_status, orjson.loads(raw), outcome.error, raw=raw)  # error
        return outcome


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as a client sees it; times are epoch seconds.

    The result is kept serialized (`result_json`): a parsed JSON tree takes ~10 times
    the memory of its text, and `GET /jobs/{id}` splices the bytes in without parsing.
    """

    id: str
    state: JobState
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    http_status: int | None = None
    result_json: bytes | None = None
    error: str | None = None
    owner: str | None = None  # `JobRequest.owner`; never shown

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def result(self) -> dict[str, Any] | None:
        """The aggregate response body, parsed (for code; the API never parses it)."""
        if self.result_json is None:
            return None
        parsed: dict[str, Any] = orjson.loads(self.result_json)
        return parsed

    def to_bytes(self, **extra: Any) -> bytes:
        """`to_json()` (updated with `extra`) serialized, with the stored result spliced in
        as it is: a 2 MB result parsed into a tree and written out again held ~20 MB."""
        raw = self.result_json
        out = self._out(None if raw is None else orjson.Fragment(raw))
        return dump(out | extra if extra else out)

    def to_json(self) -> dict[str, Any]:
        return self._out(self.result)

    def _out(self, result: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.state,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
        }
        if self.finished:
            out["finished_at"] = _iso(self.finished_at)
            out["http_status"] = self.http_status
            out["result"] = result
            if self.error is not None:
                out["error"] = self.error
        return out


def finished_view(job_id: str, created_at: float, started_at: float | None,
                  finished_at: float | None, outcome: Outcome) -> JobView:
    error = outcome.error
    if error is None and outcome.state == "failed" and outcome.body is not None:
        error = outcome.body.get("error")  # the aggregate's own one-line reason
    return JobView(job_id, outcome.state, created_at, started_at, finished_at,
                   outcome.http_status, outcome.serialized(), error)


def dump(obj: Any) -> bytes:
    """JSON as the wire gets it (envelope.dumps's options: hooks' odd values become text)."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
