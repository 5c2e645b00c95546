"""A pytest plugin: a time limit on every test's teardown, also after the test failed.

pytest-timeout and `faulthandler_timeout` both disarm as soon as a test fails (each has a
`pytest_exception_interact` hook, meant for pdb), so a teardown that hung after a failure --
or after pytest-timeout's own failure -- had no limit at all: a full `pytest -n auto` run
hung for good with a redis-server test's worker (issue 13). Here the teardown arms
faulthandler's watchdog (a C thread: it fires even if the main thread never returns to
Python): past `teardown_timeout` seconds it writes every thread's stack to stderr and ends
the process; xdist reports the worker as crashed and starts another.
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Generator

import pytest

DEFAULT_TEARDOWN_TIMEOUT = 60.0
_STDERR = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("teardown_timeout", "seconds a test's teardown may take before the "
                  "process dumps its stacks and exits (0: no limit)",
                  default=str(DEFAULT_TEARDOWN_TIMEOUT))


def pytest_configure(config: pytest.Config) -> None:
    # The real stderr, kept now: while a test runs, pytest's capture has fd 2 in a temporary
    # file that an exiting process never shows. (xdist replaces sys.stderr; fd 2 is still its.)
    config.stash[_STDERR] = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _STDERR in config.stash:
        os.close(config.stash[_STDERR])
        del config.stash[_STDERR]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    limit = float(item.config.getini("teardown_timeout"))
    if limit <= 0:
        return (yield)
    # The one watchdog is shared with pytest's faulthandler_timeout: its per-test timer is
    # replaced here, and both end with the teardown.
    faulthandler.dump_traceback_later(limit, exit=True, file=item.config.stash[_STDERR])
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()
