"""The document's shared components: the envelope's schemas, the gateway's own headers.

The security schemes join them when `[auth]` is on (`access.py`).
"""

from __future__ import annotations

from typing import Any

from ..config import STRATEGIES
from ..result import REQUEST_ID_PATTERN


def document_components() -> dict[str, Any]:
    """`components`: what every operation refers to by `$ref`."""
    ran = {
        "type": "object",
        "required": ["status", "ok", "elapsed_ms", "attempts", "cached"],
        "properties": {
            "status": {"type": ["integer", "null"]},
            "ok": {"type": "boolean"},
            "elapsed_ms": {"type": "number"},
            "attempts": {"type": "integer", "minimum": 0},
            "cached": {"type": "boolean"},
            "start_ms": {"type": "number"},
            "error": {"type": "string"},
            "batch": {"type": "integer"},
            "queued_ms": {"type": "number"},
        },
    }
    skipped = {  # an optional call without a request value it needs, or a view's unrun call
        "type": "object",
        "required": ["skipped", "ok"],
        "properties": {"skipped": {"const": True}, "ok": {"const": True}},
        "additionalProperties": False,
    }
    call_meta = {"anyOf": [ran, skipped]}
    meta = {
        "type": "object",
        "required": ["processing_time_ms", "strategy", "complete", "calls"],
        "properties": {
            "processing_time_ms": {"type": "number"},
            "strategy": {"enum": list(STRATEGIES)},
            "complete": {"type": "boolean"},
            "calls": {"type": "object",
                      "additionalProperties": {"$ref": "#/components/schemas/CallMeta"}},
        },
    }
    return {
        "schemas": {
            "CallMeta": call_meta,
            "Meta": meta,
            "Envelope": {
                "type": "object",
                "required": ["data", "meta"],
                "properties": {"data": {}, "meta": {"$ref": "#/components/schemas/Meta"}},
            },
            "ErrorEnvelope": {
                "type": "object",
                "required": ["data", "meta", "error"],
                "properties": {"data": {"type": "null"},
                               "meta": {"$ref": "#/components/schemas/Meta"},
                               "error": {"type": "string", "pattern": "^[^\\n]*$"}},
            },
        },
        "parameters": {
            "Strategy": {"name": "X-Gateway-Strategy", "in": "header", "required": False,
                         "schema": {"enum": list(STRATEGIES)},
                         "description": "run the calls in parallel or one after another"},
            "RequestId": {"name": "X-Request-ID", "in": "header", "required": False,
                          "schema": {"type": "string"},
                          "description": (
                              f"echoed back and forwarded to every upstream call if it "
                              f"matches {REQUEST_ID_PATTERN}; any other value is not refused "
                              f"but replaced by a fresh id (32 hex digits)")},
        },
    }
