"""tests/teardown_guard.py: a teardown that hangs after its test failed still ends the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HANGING = '''
import time

import pytest


@pytest.fixture
def hangs_in_teardown():
    yield
    time.sleep(120)


def test_fails(hangs_in_teardown):
    pytest.fail("a failed test disarms pytest-timeout")
'''


def test_a_teardown_that_hangs_after_a_failure_dumps_stacks_and_exits(tmp_path: Path) -> None:
    (tmp_path / "test_hanging.py").write_text(HANGING)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 60\nteardown_timeout = 1\n")
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": str(Path(__file__).parent)}
    started = time.monotonic()
    done = subprocess.run(  # pytest-timeout on, as in the suite; only the guard can stop it
        [sys.executable, "-m", "pytest", "-p", "pytest_timeout", "-p", "teardown_guard",
         "-p", "no:cacheprovider", "-q", "test_hanging.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30  # not the fixture's 120 s, nor pytest-timeout's 60
    assert done.returncode != 0
    assert "Timeout (0:00:01)!" in done.stderr
    assert "in hangs_in_teardown" in done.stderr  # the stack says where it hung
