"""What an operation answers: the envelope on 200, the error envelope on every refusal."""

from __future__ import annotations

from typing import Any


def responses(data: dict[str, Any], *, reads_body: bool, code: bool,
              breaker: bool) -> dict[str, Any]:
    ok_schema = {"allOf": [{"$ref": "#/components/schemas/Envelope"},
                           {"properties": {"data": data}}]} if data else {
        "$ref": "#/components/schemas/Envelope"}
    out: dict[str, Any] = {
        "200": {"description": "every required call succeeded (optional failures set "
                               "meta.complete to false)",
                "headers": _timing_headers(),
                "content": {"application/json": {"schema": ok_schema}}},
        "400": error("bad input: a missing or unusable parameter, header or body field"),
        "404": error("no such endpoint, or a required call's upstream answered 404"),
        "4XX": error("a required call's upstream answered this 4xx; passed through"),
        "502": error("a required call failed: connection error, 5xx, non-JSON or oversize "
                      "reply"),
        "504": error("a required call timed out, or the request's deadline passed"),
    }
    if reads_body:
        out["413"] = error("the request body is larger than max_request_bytes")
    if breaker:
        out["503"] = error("a required call's circuit breaker is open",
                            {"Retry-After": {"schema": {"type": "string"},
                                             "description": "seconds until a retry may pass"}})
    if code:
        out["500"] = error("the endpoint's Python code failed (logged; no detail is sent)")
    return out


def error(description: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "headers": {**_timing_headers(), **(extra or {})},
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def _timing_headers() -> dict[str, Any]:
    return {
        "Server-Timing": {"schema": {"type": "string"},
                          "description": "one entry per call, then total"},
        "X-Processing-Time-Ms": {"schema": {"type": "string"}},
        "X-Request-ID": {"schema": {"type": "string"}},
    }
