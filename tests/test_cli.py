"""The CLI a new user meets (issue 12): help, missing files, busy ports, Hypercorn settings."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import (
    REPO,
    HypercornFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
    to_toml,
)

from gateway.cli import PACKAGED_HYPERCORN, hypercorn_config, hypercorn_settings, main
from gateway.listen import DEFAULT_BIND

ONE_ENDPOINT = """
[upstreams.u]
url = "http://127.0.0.1:9"

[[endpoints]]
route = "/x"

  [[endpoints.calls]]
  name = "a"
  upstream = "u"
  path = "/a"
"""


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run(*argv: str, cwd: Path = REPO, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


# -- help -------------------------------------------------------------------------------------


def test_help_describes_the_tool_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "An API aggregation gateway" in out
    assert "argument parsing" not in out  # was the module's docstring
    assert "examples:\n  gateway demo" in out
    assert "$GATEWAY_CONFIG" in out


def test_serve_help_says_the_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--config PATH the config file (default: $GATEWAY_CONFIG, else ./gateway.toml)" in out
    assert "127.0.0.1:8000 in the shipped one" in out
    assert ":8000)" not in out.replace("127.0.0.1:8000", "")


# -- missing and empty config files -----------------------------------------------------------


def test_serve_with_a_missing_config_is_one_line_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert main(["serve", "--config", "nonexist.toml"]) == 2
    assert capsys.readouterr().err == (
        "gateway: config file nonexist.toml not found; pass --config PATH or set GATEWAY_CONFIG\n")
    monkeypatch.chdir(tmp_path)  # no ./gateway.toml: the default says so the same way
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "gateway: config file gateway.toml not found; pass --config PATH or set GATEWAY_CONFIG\n")


def test_an_empty_config_file_is_refused(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing yet\n")
    assert main(["check", str(empty)]) == 2
    assert capsys.readouterr().err == (
        "endpoints: the file defines no [[endpoints]] and no [upstreams], so the gateway would "
        "serve nothing\n")
    assert main(["serve", "--config", str(empty)]) == 2
    assert "so the gateway would serve nothing" in capsys.readouterr().err


def test_upstreams_alone_pass_check_but_not_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file of upstreams serves code-defined endpoints (`Gateway(path)`), not `gateway serve`."""
    path = tmp_path / "upstreams.toml"
    path.write_text('[upstreams.u]\nurl = "http://127.0.0.1:9"\n')
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.endswith(": ok: 1 upstreams, 0 endpoints, 0 calls\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert ("endpoints: the file defines no [[endpoints]], so the gateway would serve nothing"
            in capsys.readouterr().err)


# -- busy ports: one line and a hint, nothing claimed before it binds ------------------------


def test_demo_on_a_busy_port_is_one_line_and_no_banner(busy_port: int) -> None:
    done = run("-m", "gateway", "demo", "--bind", f"127.0.0.1:{busy_port}", "--upstream-port", "0")
    assert done.returncode == 2
    assert done.stdout == ""  # no banner claiming to serve
    assert done.stderr == (f"gateway: cannot listen on 127.0.0.1:{busy_port}: address already in "
                           "use; pass --bind HOST:PORT (make run BIND=HOST:PORT)\n")


def test_demo_upstream_port_taken_is_one_line(busy_port: int) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        gateway_port = free.getsockname()[1]
    done = run("-m", "gateway", "demo", "--bind", f"127.0.0.1:{gateway_port}",
               "--upstream-port", str(busy_port))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"gateway: cannot listen on 127.0.0.1:{busy_port}-")
    assert done.stderr.endswith("address already in use; pass --upstream-port PORT, "
                                "0 for random ports\n")


def test_serve_on_a_busy_port_is_one_line(busy_port: int, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(ONE_ENDPOINT)
    done = run("-m", "gateway", "serve", "--config", str(config), "--bind",
               f"127.0.0.1:{busy_port}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gateway: cannot listen on 127.0.0.1:{busy_port}: address already in use; pass --bind "
        f"HOST:PORT (or change bind in {PACKAGED_HYPERCORN} (the package's default))"]


def test_code_view_example_on_a_busy_port_is_one_line(busy_port: int) -> None:
    done = run("-m", "examples.code_view", "--bind", f"127.0.0.1:{busy_port}")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"code_view: cannot listen on 127.0.0.1:{busy_port}: address already "
                           "in use; pass --bind HOST:PORT\n")


def test_a_malformed_bind_is_one_line(tmp_path: Path) -> None:
    done = run("-m", "gateway", "demo", "--bind", "localhost", "--upstream-port", "0")
    assert done.returncode == 2
    assert done.stderr.startswith("gateway: cannot listen on localhost: expected HOST:PORT")


# -- which hypercorn.toml -----------------------------------------------------------------------


def test_hypercorn_settings_next_to_the_config_then_cwd_then_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy, cwd = tmp_path / "deploy", tmp_path / "cwd"
    deploy.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = str(deploy / "gateway.toml")
    assert hypercorn_settings(None, config) == PACKAGED_HYPERCORN
    (cwd / "hypercorn.toml").write_text("")
    assert hypercorn_settings(None, config) == cwd / "hypercorn.toml"
    (deploy / "hypercorn.toml").write_text("")
    assert hypercorn_settings(None, config) == deploy / "hypercorn.toml"
    assert hypercorn_settings(str(cwd / "hypercorn.toml"), config) == cwd / "hypercorn.toml"
    assert hypercorn_settings("nope.toml", config) is None


def test_the_packaged_hypercorn_toml_is_the_top_level_one() -> None:
    """`hypercorn --config hypercorn.toml` and `gateway serve` anywhere must use one setting."""
    top = (REPO / "hypercorn.toml").read_text()
    assert PACKAGED_HYPERCORN.read_text() == top, "copy hypercorn.toml to gateway/hypercorn.toml"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "hypercorn.toml" in pyproject["tool"]["setuptools"]["package-data"]["gateway"]


def test_without_a_settings_file_serve_binds_the_one_default_address(tmp_path: Path) -> None:
    """The address `gateway serve` falls back to is `listen.DEFAULT_BIND`, the one the help
    texts and `gateway demo` name, not a copy of it."""
    assert hypercorn_config(None).bind == [DEFAULT_BIND]
    assert hypercorn_config(str(tmp_path / "missing.toml")).bind == [DEFAULT_BIND]
    assert hypercorn_config(None, bind="127.0.0.1:9").bind == ["127.0.0.1:9"]


async def test_serve_outside_the_repo_uses_the_packaged_settings_and_says_so(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory, tmp_path: Path,
    http: httpx.AsyncClient,
) -> None:
    up = await upstream(reply({"ok": 1}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    to_toml(make_config({"up": up}, endpoint("/x", call("a", "up"))), elsewhere / "gw.toml")
    server = await hypercorn_server("gw.toml", cwd=elsewhere)
    assert (await http.get(f"{server.url}/x")).status_code == 200
    # The access log line is read from the pipe as it arrives: on a busy machine that took
    # over the 2 s this loop once allowed (10 s now); it ends as soon as the line is there.
    for _ in range(500):
        if "GET /x" in server.output():
            break
        await asyncio.sleep(0.02)
    output = server.output()
    assert (f"gateway serve: {elsewhere / 'gw.toml'}, Hypercorn settings from "
            f"{PACKAGED_HYPERCORN} (the package's default): bind 127.0.0.1:{server.port}, "
            "workers 1") in output
    assert "GET /x" in output  # the shipped settings' access log, not Hypercorn's bare default


def test_bench_config_with_upstreams_down_says_why(tmp_path: Path) -> None:
    """Issue 12: `HTTP 503 x200` alone never said that the upstream was unreachable."""
    config = tmp_path / "down.toml"
    config.write_text(ONE_ENDPOINT.replace("127.0.0.1:9", f"127.0.0.1:{_closed_port()}"))
    done = run("-m", "gateway", "bench", "--config", str(config), "/x", "--requests", "3",
               "--warmup", "0", "--concurrency", "1", timeout=60)
    assert done.returncode == 1, done.stderr
    assert ("failures parallel: HTTP 502 x3\n  HTTP 502 x3: upstream 'u' is unreachable"
            in done.stdout)
    assert done.stderr.splitlines()[-1].startswith(
        "gateway bench: every request failed; the config's upstreams must be running")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_bound_sockets_already_accept_connections_before_serving() -> None:
    """The banner follows bind_sockets: a client that trusts it waits, it is never refused."""
    from hypercorn.config import Config

    from gateway.listen import bind_sockets, close_sockets

    port = _closed_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    sockets = bind_sockets(config)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # queued in the backlog: nothing serves yet, but the connect succeeded
    finally:
        close_sockets(sockets)
