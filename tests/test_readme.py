"""Every ```sh and ```python example in README.md, run as written against a live `gateway demo`.

The README can then no longer drift from what the code does. Conventions for README authors:

- A block runs from the repository's root as if in the shell the README sets up: `.venv/bin`
  first on PATH (`source .venv/bin/activate`), `make run`'s demo answering on
  `localhost:8000`. Here the demo listens on a free port instead, and `localhost:8000` /
  `127.0.0.1:8000` are rewritten to it; `:8001` (examples/code_view.py's default) is rewritten
  to another free port, passed as CODE_VIEW_BIND; `:8002` and `:9100` (the "Securing the
  gateway" example's gateway and examples/idp.py) to two more, the latter passed as IDP_URL
  (examples/secure.toml's JWKS). USERS_URL, ORDERS_URL and BILLING_URL name
  the demo's upstreams, so `examples/gateway.toml` reaches them.
- sh blocks run with `bash -e -o pipefail`: every command must succeed. Whatever a block
  leaves running in the background is stopped when it ends (its own process group).
- A transcript block (lines starting with `$ `) runs its commands in order; the lines after a
  command are its shown output: an `HTTP/1.1 NNN` line there must match, and a shown
  `"id": "..."` stands for the real one in the commands after it.
- A ```json block right after a block is that block's output: every key it shows must be in
  the real output (values differ from run to run).
- A block that cannot run here (it serves until stopped, needs a pid, a deployment...) gets
  `<!-- no-test: why -->` on the line before its fence. The reason is required.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import REPO

README = REPO / "README.md"
_REPO_VENV = REPO / ".venv" / "bin"
VENV_BIN = _REPO_VENV if _REPO_VENV.is_dir() else Path(sys.executable).parent
RUN_LANGS = ("sh", "python")
BLOCK_TIMEOUT = 120.0  # seconds; the bench examples are the slow ones (~10 s each)
DEMO_READY = 30.0
NO_TEST = re.compile(r"<!--\s*no-test:\s*(?P<reason>.*?)\s*-->")
FENCE = re.compile(r"^```(?P<info>[^`\n]*)$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None  # the no-test reason
    expected_json: str | None  # a ```json block right after it

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.lang}"


def blocks(markdown: str) -> list[Block]:
    """The fenced blocks with their language, skip marker and shown JSON output."""
    lines = markdown.splitlines()
    raw: list[tuple[int, str, str, str | None, int]] = []  # line, lang, text, skip, end line
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match["info"].strip().split(" ")[0]
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        before = lines[start - 1] if start else ""
        marker = NO_TEST.search(before)
        raw.append((start + 1, lang, "\n".join(body) + "\n",
                    marker["reason"] if marker else None, i + 1))
        i += 1
    out = []
    for n, (line, lang, text, skip, end) in enumerate(raw):
        expected = None
        if n + 1 < len(raw) and raw[n + 1][1] == "json":
            between = lines[end:raw[n + 1][0] - 1]
            if all(not gap.strip() for gap in between):
                expected = raw[n + 1][2]
        out.append(Block(line, lang, text, skip, expected))
    return out


ALL = blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in ALL if b.lang in RUN_LANGS]


# -- the live demo --------------------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    port: int
    upstreams: dict[str, str]
    code_view_port: int
    # "Securing the gateway": its own gateway (:8002) and examples/idp.py's JWKS (:9100)
    secure_port: int = field(default_factory=lambda: _free_port())
    idp_port: int = field(default_factory=lambda: _free_port())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    port = _free_port()
    process = subprocess.Popen(
        [str(VENV_BIN / "gateway"), "demo", "--bind", f"127.0.0.1:{port}", "--upstream-port", "0"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env=_env_without_config())
    try:
        banner = _read_banner(process)
        upstreams = dict(re.findall(r"^  (\w+)\s+(http://127\.0\.0\.1:\d+)$", banner, re.M))
        assert set(upstreams) == {"users", "orders", "recommendations", "billing"}, banner
        yield Demo(port, upstreams, _free_port())
    finally:
        _stop_group(process)


def _read_banner(process: subprocess.Popen[str]) -> str:
    """The demo prints its banner once it listens; read up to "Ctrl-C stops it."."""
    assert process.stdout is not None
    seen: list[str] = []
    give_up = time.monotonic() + DEMO_READY
    while time.monotonic() < give_up:
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"gateway demo exited ({process.poll()}):\n{''.join(seen)}")
        seen.append(line)
        if line.startswith("Ctrl-C stops it."):
            os.set_blocking(process.stdout.fileno(), False)  # the access log is not read
            return "".join(seen)
    pytest.fail(f"no banner from gateway demo within {DEMO_READY:g}s:\n{''.join(seen)}")


def _stop_group(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    else:  # the leader is gone; stop whatever it left in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _env_without_config() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "PYTHONPATH")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _env(demo: Demo) -> dict[str, str]:
    env = _env_without_config()
    env.update({"USERS_URL": demo.upstreams["users"], "ORDERS_URL": demo.upstreams["orders"],
                "BILLING_URL": demo.upstreams["billing"],
                "CODE_VIEW_BIND": f"127.0.0.1:{demo.code_view_port}",
                "IDP_URL": f"http://127.0.0.1:{demo.idp_port}"})
    return env


def localise(text: str, demo: Demo) -> str:
    """Point the README's fixed ports at this test's servers."""
    ports = {8000: demo.port, 8001: demo.code_view_port, 8002: demo.secure_port,
             9100: demo.idp_port}
    for fixed, real in ports.items():
        text = re.sub(rf"(?<![\w.])(localhost|127\.0\.0\.1):{fixed}\b", rf"\g<1>:{real}",
                      text)
    return text


# -- running one block ------------------------------------------------------------------------


def _run(argv: list[str], demo: Demo, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run in its own process group, stopped afterwards with whatever it left behind.

    Output goes to files, not pipes: a server a block started in the background keeps
    its copy of them open, and must not keep the block from ending.
    """
    with tempfile.TemporaryFile("w+") as feed, tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryFile("w+") as err:
        feed.write(stdin)
        feed.seek(0)
        process = subprocess.Popen(argv, cwd=REPO, env=_env(demo), text=True, stdin=feed,
                                   stdout=out, stderr=err, start_new_session=True)
        try:
            process.wait(BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{argv!r} still running after {BLOCK_TIMEOUT:g}s")
        finally:
            returncode = process.returncode
            _stop_group(process)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, returncode, out.read(), err.read())


def _bash(script: str, demo: Demo) -> subprocess.CompletedProcess[str]:
    return _run(["bash", "-e", "-o", "pipefail", "-s"], demo, stdin=script)


def _transcript(text: str) -> list[tuple[str, list[str]]]:
    """`$ command` lines, each with the output lines shown after it."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def _run_transcript(block: Block, demo: Demo) -> None:
    substitutions: dict[str, str] = {}
    for command, shown in _transcript(localise(block.text, demo)):
        for fake, real in substitutions.items():
            command = command.replace(fake, real)
        done = _bash(command, demo)
        assert done.returncode == 0, f"{block.id}: $ {command}\n{done.stdout}{done.stderr}"
        status = next((s for s in shown if s.startswith("HTTP/")), None)
        if status is not None:
            real_status = done.stdout.splitlines()[0] if done.stdout else ""
            assert real_status.split()[:2] == status.split()[:2], (block.id, command, done.stdout)
        fake_ids = re.findall(r'"id": "([^"…]+)"', "\n".join(shown))
        real_ids = re.findall(r'"id":\s*"([^"]+)"', done.stdout)
        if fake_ids and real_ids:
            substitutions[fake_ids[0]] = real_ids[0]


def _keys_shown_are_present(shown: Any, real: Any, where: str = "") -> list[str]:
    """Key paths of `shown` (dicts, and the first item of lists) missing from `real`."""
    missing: list[str] = []
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [where or "."]
        for key, value in shown.items():
            if key not in real:
                missing.append(f"{where}.{key}")
            else:
                missing += _keys_shown_are_present(value, real[key], f"{where}.{key}")
    elif (isinstance(shown, list) and shown and isinstance(shown[0], dict)
          and isinstance(real, list) and real):
        missing += _keys_shown_are_present(shown[0], real[0], f"{where}[0]")
    return missing


@pytest.mark.timeout(BLOCK_TIMEOUT + 30)
@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.skip is None], ids=lambda b: b.id)
def test_readme_example_runs(block: Block, demo: Demo) -> None:
    if block.lang == "sh" and any(line.startswith("$ ") for line in block.text.splitlines()):
        _run_transcript(block, demo)
        return
    script = localise(block.text, demo)
    if block.lang == "python":
        done = _run([str(VENV_BIN / "python"), "-c", script], demo)
    else:
        done = _bash(script, demo)
    assert done.returncode == 0, f"{block.id} failed:\n{script}\n{done.stdout}\n{done.stderr}"
    if block.expected_json is not None:
        shown = json.loads(block.expected_json)
        missing = _keys_shown_are_present(shown, json.loads(done.stdout))
        assert not missing, f"{block.id}: the README shows keys the output lacks: {missing}"


def test_blocks_that_do_not_run_say_why() -> None:
    skipped = [b for b in RUNNABLE if b.skip is not None]
    for block in skipped:
        assert len(block.skip or "") >= 10, f"{block.id}: a no-test marker needs its reason"
    # A marker before any other kind of block means nothing: probably a misplaced one.
    stray = [b.id for b in ALL if b.skip is not None and b.lang not in RUN_LANGS]
    assert not stray, f"no-test markers before blocks that never run: {stray}"
    # The extraction itself: most examples run, and the first block is `make run` / `make test`.
    assert len(RUNNABLE) - len(skipped) >= 6, [b.id for b in RUNNABLE]
    assert len(skipped) <= len(RUNNABLE) // 2, [b.id for b in skipped]
    first = ALL[0]
    assert (first.lang, first.text.split()[:2], first.text.splitlines()[1].split()[:2]) == (
        "sh", ["make", "run"], ["make", "test"])


def test_the_extractor_reads_markers_transcripts_and_shown_output() -> None:
    markdown = "\n".join([
        "<!-- no-test: serves until stopped -->", "```sh", "gateway serve", "```", "",
        "```sh", "$ curl -si localhost:8000/x", "HTTP/1.1 202", '{"id": "abc"}', "```", "",
        "```python", "print(1)", "```", "", "```json", '{"a": {"b": 1}}', "```",
    ])
    found = blocks(markdown)
    assert [(b.lang, b.skip) for b in found] == [
        ("sh", "serves until stopped"), ("sh", None), ("python", None), ("json", None)]
    assert found[2].expected_json == '{"a": {"b": 1}}\n'
    assert found[1].expected_json is None
    assert _transcript(found[1].text) == [
        ("curl -si localhost:8000/x", ["HTTP/1.1 202", '{"id": "abc"}'])]
    assert _keys_shown_are_present({"a": {"b": 1}, "l": [{"c": 1}]},
                                   {"a": {"b": 2, "x": 0}, "l": [{"d": 1}]}) == [".l[0].c"]
    demo = Demo(1234, {}, 4321)
    assert localise("curl localhost:8000/a http://127.0.0.1:8001/b x.localhost:8000 :80001",
                    demo) == "curl localhost:1234/a http://127.0.0.1:4321/b x.localhost:8000 :80001"
