"""One log format for every line a gateway process writes, and nothing a client sends unescaped.

Clients control request paths, query strings and header values, and those reach log lines
(the access log, Quart's and the gateway's own messages). A CR or LF in one could forge a
line, a NUL corrupts the file. So every record goes through `Formatter`, which escapes
C0/C1 control characters, DEL, U+2028/U+2029 and the backslash (`\\r`, `\\n`, `\\t`,
`\\x00`, `\\\\`) in the whole message, whoever built it and however (the access log's
`%`-atoms, f-strings, `%s` arguments). A record is one line; a traceback follows it on
lines indented by two spaces, so a line that starts in column 0 always begins a record.

`install(log_format)` wires it: a handler on the root logger (gateway, Quart, asyncio,
httpx lines), the `gateway` loggers at INFO, and a filter on Hypercorn's `hypercorn.access`
and `hypercorn.error` loggers that puts our formatter on whatever handlers Hypercorn gave
them (it creates those after the app is imported, from `accesslog`/`errorlog`, so they
are adopted when the first record passes rather than replaced).

`gateway.log_format` picks the rendering: "text" is Hypercorn's own line shape
(`[time] [pid] [LEVEL] message`); "json" is one JSON object per line (`_json_fields`),
whose access lines carry the matched `route` when Hypercorn's `logger_class` is
`AccessLogger` (`gateway serve` sets it; a TOML file cannot name a class).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from hypercorn.logging import Logger as HypercornLogger

from .config import LOG_FORMATS

HYPERCORN_LOGGERS = ("hypercorn.access", "hypercorn.error")
ROUTE_SCOPE_KEY = "gateway.route"  # the app leaves the matched route template here
_TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
_TEXT_DATEFMT = "[%Y-%m-%d %H:%M:%S %z]"  # as Hypercorn's own lines
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}
# The house convention for a line about one request: "... (request id <id>)".
_REQUEST_ID = re.compile(r"\(request id ([A-Za-z0-9._:-]{1,128})\)")


def escape(text: str) -> str:
    """`text` with every control character written as an escape: never a line break or NUL."""
    return _UNSAFE.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Formatter(logging.Formatter):
    """Renders a record as one escaped text line or one JSON object."""

    def __init__(self, log_format: str = "text") -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
        super().__init__(_TEXT_FORMAT, _TEXT_DATEFMT)
        self.log_format = log_format

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a broken %-template: still log something
            message = f"{record.msg!s} {record.args!r}"
        details = _details(self, record)
        if self.log_format == "json":
            fields = _json_fields(record, message, self.converter(record.created))
            if details:
                fields["exc_info"] = details
            return json.dumps(fields, ensure_ascii=True, default=str)
        record.message = escape(message)
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if details:
            line += "".join(f"\n  {escape(part)}" for part in details.split("\n"))
        return line


def _details(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback and stack, rendered here (never a cached, unescaped copy)."""
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


def _json_fields(record: logging.LogRecord, message: str, stamp: time.struct_time
                 ) -> dict[str, Any]:
    """SPEC 12's keys: ts, level, msg, request_id; access lines add the request's own."""
    millis = int(record.msecs)
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", stamp) + f".{millis:03d}"
              + time.strftime("%z", stamp),
        "level": record.levelname.lower(),
        "msg": message,
        "logger": record.name,
        "pid": record.process,
        "request_id": getattr(record, "request_id", None) or _request_id_in(message),
    }
    trace_id = getattr(record, "trace_id", None)
    if trace_id is not None:
        fields["trace_id"] = trace_id
    atoms = record.args
    if record.name == "hypercorn.access" and isinstance(atoms, Mapping):
        fields.update(_access_fields(atoms))
    return fields


def _access_fields(atoms: Mapping[str, Any]) -> dict[str, Any]:
    """Hypercorn's access-log atoms (hypercorn/logging.py) as named fields."""
    def atom(key: str) -> Any:
        value = atoms[key]  # AccessLogAtoms answers "-" for what it does not know
        return None if value == "-" else value

    status = atom("s")
    duration = atoms["D"]  # microseconds
    return {
        "request_id": atom("{x-request-id}o"),
        "method": atom("m"),
        "path": atom("U"),
        "query": atom("q") or None,
        "route": atom("route"),
        "status": int(status) if isinstance(status, str) and status.isdigit() else None,
        "duration_ms": round(duration / 1000, 3) if isinstance(duration, int) else None,
        "client": atom("h"),
        "user_agent": atom("a"),
        "bytes": atom("b"),
    }


class AccessLogger(HypercornLogger):
    """Hypercorn's `logger_class` under `gateway serve`: the access atoms add `route`."""

    def atoms(self, request: Any, response: Any, request_time: float) -> Mapping[str, str]:
        atoms = super().atoms(request, response, request_time)
        route = request.get(ROUTE_SCOPE_KEY)
        if route is not None and isinstance(atoms, dict):
            atoms["route"] = route
        return atoms


def _request_id_in(message: str) -> str | None:
    found = _REQUEST_ID.search(message)
    return found.group(1) if found else None


class _Adopt(logging.Filter):
    """On a Hypercorn logger: its handlers format with ours, and it does not also propagate."""

    def __init__(self, logger: logging.Logger, formatter: Formatter) -> None:
        super().__init__()
        self.logger = logger
        self.formatter = formatter

    def filter(self, record: logging.LogRecord) -> bool:
        handlers = self.logger.handlers
        for handler in handlers:
            if handler.formatter is not self.formatter:
                handler.setFormatter(self.formatter)
        if handlers:
            self.logger.propagate = False  # its own handlers wrote it; the root's must not
        return True


class _RootHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `install` owns on the root logger: to whatever `sys.stderr` is now."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def install(log_format: str = "text") -> None:
    """Send every log line of this process through one escaping formatter (idempotent).

    A root logger that already has handlers of someone else's (an embedding application's
    logging set-up, pytest's) keeps them and gets none of ours.
    """
    formatter = Formatter(log_format)
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _RootHandler)]
    if len(ours) == len(root.handlers):
        for handler in ours:
            root.removeHandler(handler)
        handler = _RootHandler()
        handler.setFormatter(formatter)
        root.addHandler(handler)
    gateway = logging.getLogger("gateway")
    if gateway.level == logging.NOTSET:
        gateway.setLevel(logging.INFO)  # reloads, breakers and restarts are INFO lines
    for name in HYPERCORN_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _Adopt)]:
            logger.removeFilter(old)
        logger.addFilter(_Adopt(logger, formatter))
        for existing in logger.handlers:
            existing.setFormatter(formatter)
