"""`gateway check PATH`: exit 0 and one summary line, or exit 2 and one line per problem."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").rglob("*.toml"))
SUMMARY = re.compile(r"^(?P<path>.+): ok: \d+ upstreams, \d+ endpoints, \d+ calls$")

BROKEN = """
[gateway]
strategy = "fast"

[upstreams.users]
url = "ftp://users.internal"

[upstreams.billing]
url = "http://127.0.0.1:9003"

[[endpoints]]
route = "/dashboard/<int:user_id>"

  [[endpoints.calls]]
  name = "user"
  upstream = "users"
  path = "/users/{account.owner}"

  [[endpoints.calls]]
  name = "account"
  upstream = "billing"
  path = "/accounts/{user.account_id}"

[[endpoints]]
route = "/healthz"

  [[endpoints.calls]]
  name = "bill"
  upstream = "bill"
  path = "/x"
"""

BROKEN_PROBLEMS = [
    "gateway.strategy: must be one of parallel, sequential, not 'fast'",
    "upstreams.users.url: 'ftp://users.internal' must start with http:// or https://",
    "endpoints[0].calls: dependency cycle: user -> account -> user",
    "endpoints[1].route: '/healthz' is reserved for the gateway (/healthz)",
    "endpoints[1].calls[0].upstream: unknown upstream 'bill'",
]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main` resolves `combine` hooks from the working directory and adds it to sys.path."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run([sys.executable, "-m", "gateway", "check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_there_are_example_configs() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_config_passes_as_a_command(config: Path) -> None:
    done = run_check(str(config.relative_to(ROOT)))
    assert (done.returncode, done.stderr) == (0, "")
    (line,) = done.stdout.splitlines()
    match = SUMMARY.match(line)
    assert match is not None, line
    assert match["path"] == str(config.relative_to(ROOT))


def test_broken_config_fails_as_a_command_with_one_line_per_problem(tmp_path: Path) -> None:
    done = run_check(write(tmp_path, BROKEN))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == BROKEN_PROBLEMS


@pytest.mark.usefixtures("in_repo")
def test_example_summary_counts_upstreams_endpoints_and_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "examples/gateway.toml"]) == 0
    out, err = capsys.readouterr()
    assert out == "examples/gateway.toml: ok: 3 upstreams, 1 endpoints, 3 calls\n"
    assert err == ""


@pytest.mark.usefixtures("in_repo")
def test_broken_config_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", write(tmp_path, BROKEN)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == BROKEN_PROBLEMS


@pytest.mark.usefixtures("in_repo")
def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.toml")
    assert main(["check", missing]) == 2
    assert capsys.readouterr().err == f"{missing}: file not found\n"


@pytest.mark.usefixtures("in_repo")
def test_toml_syntax_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[gateway\nstrategy = 1\n")
    assert main(["check", path]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: invalid TOML: ")


@pytest.mark.usefixtures("in_repo")
def test_combine_that_cannot_be_imported_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, """
[upstreams.u]
url = "http://127.0.0.1:9001"

[[endpoints]]
route = "/x"
combine = "examples.dashboard:no_such_function"

  [[endpoints.calls]]
  name = "a"
  upstream = "u"
  path = "/a"
""")
    assert main(["check", path]) == 2
    assert capsys.readouterr().err == (
        "endpoints[0].combine: module 'examples.dashboard' has no 'no_such_function'\n")


@pytest.mark.usefixtures("in_repo")
def test_missing_environment_variable_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GW_TEST_UNSET_KEY", raising=False)
    path = write(tmp_path, """
[upstreams.u]
url = "http://127.0.0.1:9001"
headers = { "x-api-key" = "${GW_TEST_UNSET_KEY}" }
""")
    assert main(["check", path]) == 2
    assert capsys.readouterr().err == (
        "upstreams.u.headers.x-api-key: environment variable GW_TEST_UNSET_KEY is not set\n")
    monkeypatch.setenv("GW_TEST_UNSET_KEY", "k")
    assert main(["check", path]) == 0


@pytest.mark.usefixtures("in_repo")
def test_check_without_a_path_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    assert "path" in capsys.readouterr().err
