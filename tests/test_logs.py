"""Logs: one format for every line, and nothing a client sends reaches a line unescaped.

The pure parts (escaping, the formatter) as functions; then a real `gateway serve` that
gets CR, LF, NUL and other controls in the path, the query and headers over a raw socket,
and must print only well-formed lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import (
    GatewayClientFactory,
    HypercornFactory,
    LiveServer,
    UpstreamFactory,
    call,
    endpoint,
    free_port,
    make_config,
    reply,
    to_toml,
)
from webserver import Request, Response, json_response

from gateway.logs import Formatter, escape

# A text line: Hypercorn's shape, `[time] [pid] [LEVEL] message`; a traceback's lines follow
# it indented by two spaces.
LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] "
                  r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] \S")
FORGED = "[2026-01-01 00:00:00 +0000] [1] [INFO] forged"


def record(msg: str, *args: object, name: str = "gateway", exc: bool = False
           ) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nvalue\r\x00")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain /path?q=1", "plain /path?q=1"),
    ("a\r\nb", "a\\r\\nb"),
    ("nul\x00", "nul\\x00"),
    ("tab\tbell\x07del\x7f", "tab\\tbell\\x07del\\x7f"),
    ("nel\x85ls\u2028ps\u2029", "nel\\x85ls\\u2028ps\\u2029"),
    ("back\\slash", "back\\\\slash"),
    ("ünïcode ✓", "ünïcode ✓"),
])
def test_escape_writes_every_control_character_as_an_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped
    assert len(escape(raw).splitlines()) <= 1


def test_text_record_is_one_line_whatever_its_arguments_and_message() -> None:
    line = Formatter("text").format(record("GET %s " + "f-string\n" + FORGED, "/x\r\n" + FORGED))
    assert len(line.splitlines()) == 1
    assert LINE.match(line), line
    assert "/x\\r\\n[2026-01-01" in line
    assert "f-string\\n[2026" in line


def test_a_traceback_follows_its_record_indented_and_escaped() -> None:
    lines = Formatter("text").format(record("view failed", exc=True)).split("\n")
    assert LINE.match(lines[0])
    assert lines[1] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in lines[1:])
    assert "\x00" not in "".join(lines)
    assert "\r" not in "".join(lines)
    assert lines[-2:] == ["  ValueError: bad", "  value\\r\\x00"]


def test_json_record_is_one_object_with_the_spec_keys() -> None:
    rec = record("reload of %s", "a\nb", exc=True)
    rec.request_id = "r-1"
    line = Formatter("json").format(rec)
    assert "\n" not in line
    assert "\x00" not in line
    fields = json.loads(line)
    assert fields["msg"] == "reload of a\nb"
    assert fields["level"] == "error"
    assert fields["request_id"] == "r-1"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}$", fields["ts"])
    assert "ValueError: bad\nvalue\r\x00" in fields["exc_info"]


def test_json_request_id_comes_from_the_record_or_the_message_convention() -> None:
    line = Formatter("json").format(record("combine hook failed (request id %s)", "r-9"))
    assert json.loads(line)["request_id"] == "r-9"
    assert json.loads(Formatter("json").format(record("no request")))["request_id"] is None


def test_json_access_line_names_the_request() -> None:
    atoms = {"h": "127.0.0.1:5000", "m": "GET", "U": "/a\nb", "q": "x=1", "s": "200",
             "D": 1500, "{x-request-id}o": "abc", "a": "curl", "b": "12", "route": "-"}

    class Atoms(dict[str, object]):  # as Hypercorn's AccessLogAtoms: "-" for unknown keys
        def __getitem__(self, key: str) -> object:
            return super().get(key, "-")

    rec = logging.LogRecord("hypercorn.access", logging.INFO, __file__, 1,
                            '%(h)s "%(m)s %(U)s" %(s)s', (Atoms(atoms),), None)
    fields = json.loads(Formatter("json").format(rec))
    assert fields["msg"] == '127.0.0.1:5000 "GET /a\nb" 200'
    assert {k: fields[k] for k in ("method", "path", "status", "duration_ms", "client",
                                   "request_id", "route")} == {
        "method": "GET", "path": "/a\nb", "status": 200, "duration_ms": 1.5,
        "client": "127.0.0.1:5000", "request_id": "abc", "route": None}


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        Formatter("yaml")


# -- a real gateway serve, hostile bytes over a raw socket ------------------------------------

HOSTILE = [
    b"GET /x%0d%0a" + FORGED.replace(" ", "%20").encode() + b" HTTP/1.1\r\nHost: a\r\n",
    b"GET /nul%00byte%c2%85nel%e2%80%a8ls HTTP/1.1\r\nHost: a\r\n",
    b"GET /r?q=%0d%0a" + FORGED.replace(" ", "%20").encode() + b"%00 HTTP/1.1\r\nHost: a\r\n",
    # h11 refuses raw C0 controls and DEL in a header value (400, no access line); bytes
    # 0x80-0xff pass and decode (latin-1) to C1 controls: NEL (0x85) breaks lines too.
    b"GET /r HTTP/1.1\r\nHost: a\r\nUser-Agent: ua\x85" + FORGED.encode() + b"\x9b\r\n"
    b"Referer: ref\ttab\r\nX-Request-ID: id\x85" + FORGED.encode() + b"\r\n",
    b"GET /r?q=%0A%0D%00 HTTP/1.1\r\nHost: a\r\nX-Request-ID: %0d%0a\r\n",
]


async def send_raw(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Connection: close\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_client_bytes_forge_or_break_a_log_line(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, log_format: str
) -> None:
    up = await upstream(reply({"ok": 1}))
    config = make_config({"up": up}, endpoint("/r", call("c", "up", "/x/{query.q}")),
                         log_format=log_format)
    server = await hypercorn_server(config)
    for head in HOSTILE:
        assert (await send_raw(server.port, head)).startswith(b"HTTP/1.1 ")
    await asyncio.sleep(0.3)  # the access lines of the last requests
    output = server.output()
    assert "\x00" not in output
    assert "\r" not in output
    lines = output.split("\n")[:-1]
    assert not any(len(line.splitlines()) > 1 for line in lines)  # no NEL, U+2028, VT, FF
    access = []
    for line in lines:
        if log_format == "json":
            fields = json.loads(line)
            assert {"ts", "level", "msg", "request_id"} <= fields.keys(), line
            if fields["logger"] == "hypercorn.access" and fields["path"] != "/healthz":
                access.append(fields)
        else:
            assert LINE.match(line) or line.startswith("  "), line
            assert not line.startswith(FORGED)
            if '"GET /' in line and "/healthz" not in line:
                access.append(line)
    assert len(access) == len(HOSTILE), output
    if log_format == "text":
        assert any("/x\\r\\n[2026-01-01 00:00:00 +0000] [1] [INFO] forged" in line
                   for line in access), output
        assert any("/nul\\x00byte\\x85nel\\u2028ls" in line for line in access), output
        assert any('"ref\\ttab" "ua\\x85[2026' in line and '\\x9b"' in line
                   for line in access), output
    else:
        assert {a["status"] for a in access} <= {200, 400, 404, 502}, access
        assert "/x\r\n" + FORGED in [a["path"] for a in access]
        assert all(isinstance(a["duration_ms"], float) and a["method"] == "GET"
                   for a in access)
        assert "ua\x85" + FORGED + "\x9b" in [a["user_agent"] for a in access]
        routes = {a["route"] for a in access}  # None: refused before routing (guard.py)
        assert "/r" in routes, access
        assert routes <= {"/r", "unmatched", None}, access


# -- what the gateway itself logs, in the same shape as Hypercorn's lines ----------------------


BROKEN = make_config({"up": "http://127.0.0.1:1"}, endpoint("/r", call("c", "nowhere", "/x")))


def lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.split("\n") if text in line]


async def until(condition: Callable[[], bool], server: LiveServer) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.025)
    pytest.fail(f"not logged:\n{server.output()}")


async def test_reloads_refusals_hook_failures_and_breakers_are_logged_with_time_and_level(
    tmp_path: Path, upstream: UpstreamFactory, hypercorn_server: HypercornFactory,
    http: httpx.AsyncClient
) -> None:
    (tmp_path / "log_hooks.py").write_text(
        "def explode(results, ctx):\n    raise RuntimeError('hook\\nbroke')\n")
    up = await upstream(reply({"ok": 1}, delay=0.05))
    down = {"url": f"http://127.0.0.1:{free_port()}", "breaker": {"failures": 1, "reset": 0.3}}
    config = make_config({"up": up, "down": down},
                         endpoint("/boom", call("c", "up"), combine="log_hooks:explode"),
                         endpoint("/down", call("d", "down")))
    path = to_toml(config, tmp_path / "gateway.toml")
    server = await hypercorn_server(path, cwd=tmp_path)  # log_hooks is importable there

    assert (await http.get(server.url + "/boom")).status_code == 500
    assert (await http.get(server.url + "/down")).status_code == 502
    await asyncio.sleep(0.4)  # the breaker half-opens: the next call is its trial
    assert (await http.get(server.url + "/down")).status_code == 502

    to_toml(BROKEN, path)
    os.kill(server.process.pid, signal.SIGHUP)
    await until(lambda: bool(lines_with(server.output(), "config reload refused")), server)
    to_toml(config, path)
    os.kill(server.process.pid, signal.SIGHUP)
    await until(lambda: bool(lines_with(server.output(), "config reloaded from")), server)

    output = server.output()
    expected = [
        "[ERROR] combine hook failed (request id ",
        "[WARNING] circuit breaker of upstream 'down' opened (1 failures in a row: call 'd' "
        "of GET /down); calls fail fast for 0.3 s",
        "[INFO] circuit breaker of upstream 'down' is half-open",
        "[WARNING] circuit breaker of upstream 'down' opened (its trial call failed: call 'd' "
        "of GET /down)",
        f"[ERROR] config reload refused: {path} is invalid; still serving the previous "
        "config: endpoints[0].calls[0].upstream: unknown upstream 'nowhere'",
        f"[INFO] config reloaded from {path}: 2 endpoints, 2 upstreams",
    ]
    for text in expected:
        found = lines_with(output, text)
        assert len(found) == 1, (text, output)
        assert LINE.match(found[0]), found[0]
    # The traceback follows its line, every line of it indented (the message's LF too).
    assert "  RuntimeError: hook\n  broke\n" in output
    for line in output.split("\n")[:-1]:
        assert LINE.match(line) or line.startswith("  "), line


async def test_a_closing_breaker_is_logged(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    flaky = {"fail": True}

    async def handler(request: Request) -> Response:
        return json_response({}, 503 if flaky["fail"] else 200)

    up = await upstream(handler)
    client = await gateway_client(make_config(
        {"up": {"url": up, "breaker": {"failures": 1, "reset": 0.1}}},
        endpoint("/r", call("c", "up"))))
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert (await client.get("/r")).status_code != 200
        flaky["fail"] = False
        await asyncio.sleep(0.15)
        assert (await client.get("/r")).status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.breaker"]
    assert messages == [
        "circuit breaker of upstream 'up' opened (1 failures in a row: call 'c' of GET /r); "
        "calls fail fast for 0.1 s",
        "circuit breaker of upstream 'up' is half-open",
        "circuit breaker of upstream 'up' is closed",
    ]
