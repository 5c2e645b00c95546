"""`gateway serve`'s process model: one process, or a small master over N workers.

- `--workers 1`: the worker runs in this process, no master (serving.py). SIGHUP reaches
  the app, which reloads in place (reload.py); SIGTERM/SIGINT stop it gracefully. If it
  dies, the server is gone: that is for a process manager (systemd, a container) to see.
- `--workers N`: this master binds the sockets and starts N worker processes that share
  them, forked from a multiprocessing fork server that imported the app's libraries once
  (a replacement then starts in about a second, not after a full interpreter start-up).
  A worker that dies (exit code or signal, `kill -9` included) is logged and replaced;
  one that keeps dying young is replaced after a growing delay (`Backoff`), so a crash
  loop cannot spin the machine. The others serve on meanwhile. SIGHUP is forwarded to
  each worker (each reloads its config; Hypercorn's own master would restart them all
  instead, and stop for good if the new config is broken). SIGINT/SIGTERM set
  the shutdown event the workers watch: they stop gracefully and are not replaced.

Signals: the master's handlers are in place from its first instant and never swapped out,
so no signal to it is lost, whenever it comes. A worker ignores SIGINT (a Ctrl-C reaches
the whole process group; the master decides) and SIGHUP until its app's handler is up. A
worker forks from the fork server, not from the master, and gets that from it: the fork
server is started with SIGINT and SIGHUP blocked (`pthread_sigmask`; a blocked signal
stays pending, where swapping the master's handler for SIG_IGN would drop it), which it and
every worker inherit, and a worker unblocks them only once it ignores them (`_worker`),
as CPython's own resource tracker does.

The master also sets `PROMETHEUS_MULTIPROC_DIR` to a fresh directory (unless already set)
so that `/metrics`, in whichever worker answers, adds up every worker's values; it is
removed at exit, and a dead worker's live gauges are dropped from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import forkserver, get_context, resource_tracker
from multiprocessing.connection import wait
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

from . import logs
from .listen import close_sockets
from .serving import run_worker

log = logging.getLogger("gateway.supervisor")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_FIRST = 0.5  # seconds before replacing a worker that died young
RESTART_MAX = 30.0  # the delay doubles per young death up to this
STABLE_AFTER = 30.0  # a worker that lived this long resets the delay
PRELOAD = "gateway.app"  # imported once by the fork server, not by every new worker
_WORKER_IGNORES = frozenset({signal.SIGINT, signal.SIGHUP})


@dataclass(slots=True)
class Backoff:
    """How long to wait before replacing a dead worker: doubles while workers die young."""

    first: float = RESTART_FIRST
    ceiling: float = RESTART_MAX
    stable: float = STABLE_AFTER
    _next: float = field(default=RESTART_FIRST, init=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def delay(self, lived: float) -> float:
        """The wait before replacing a worker that died after `lived` seconds."""
        if lived >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(delay * 2, self.ceiling)
        return delay


def describe_exit(exitcode: int | None) -> str:
    """`exit code 3` or `signal SIGKILL`, from a `Process.exitcode`."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def serve(config: Any, announce: str = "") -> int:
    """Run the app named by `config.application_path` under Hypercorn; the exit code.

    `announce` is logged first, once this process logs in the served config's format.
    """
    from hypercorn.run import run

    logs.install(_log_format())
    if announce:
        log.info("%s", announce)
    if sys.platform == "win32" or config.worker_class == "trio":  # pragma: no cover
        return run(config)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's own handler is in place
    if config.workers <= 1:
        return _single(config)
    return _Master(config).run()


def _single(config: Any) -> int:
    from hypercorn.utils import write_pid_file

    if config.pid_path is not None:
        write_pid_file(config.pid_path)
    sockets = config.create_sockets()
    try:
        run_worker(config, sockets)
    finally:
        close_sockets(sockets)
    return 0


class _Master:
    """Starts, watches and replaces the workers; owns the sockets and the signal wake-up."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.ctx: ForkServerContext = get_context("forkserver")
        # Workers fork from a server process that has imported the app's libraries once, so
        # a replacement serves in about a second, not after a whole interpreter's start-up
        # (several seconds on a busy machine). It holds no app, loop or socket of its own.
        self.ctx.set_forkserver_preload([PRELOAD])
        self.stop: Event = self.ctx.Event()
        self.backoff = Backoff()
        self.workers: dict[BaseProcess, float] = {}  # process -> when it started (monotonic)
        self.due: list[float] = []  # when each pending replacement may start
        self.sockets: Any = None
        self.stopped_by = ""  # the signal that began the stop, until the loop logs it

    def run(self) -> int:
        from hypercorn.utils import write_pid_file

        own_dir = None
        if MULTIPROC_ENV not in os.environ:
            own_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
            os.environ[MULTIPROC_ENV] = own_dir  # set before any worker (or import) reads it
        if self.config.pid_path is not None:
            write_pid_file(self.config.pid_path)
        self.sockets = self.config.create_sockets()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)  # a signal also ends the wait() below
        # Handled from the start: a default-action death while the first workers start
        # (seconds: the fork server imports the app) would skip the `finally` below and
        # leave them serving with nobody to stop them; an ignored Ctrl-C would be lost.
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            for _ in range(self.config.workers):
                if self.stop.is_set():
                    break
                self._spawn()
            self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for process in self.workers:
                process.terminate()
                process.join()
            close_sockets(self.sockets)
            os.close(wake_r)
            os.close(wake_w)
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
        return 0

    def _loop(self, wake: int) -> None:
        while self.workers or (self.due and not self.stop.is_set()):
            timeout = None
            if self.due and not self.stop.is_set():
                timeout = max(0.0, min(self.due) - time.monotonic())
            wait([*(p.sentinel for p in self.workers), wake], timeout)
            with contextlib.suppress(BlockingIOError):
                while os.read(wake, 512):
                    pass
            if self.stopped_by:
                log.info("%s: stopping %d workers gracefully", self.stopped_by,
                         len(self.workers))
                self.stopped_by = ""
            for process in [p for p in self.workers if p.exitcode is not None]:
                self._reap(process)
            now = time.monotonic()
            while not self.stop.is_set() and self.due and min(self.due) <= now:
                self.due.remove(min(self.due))
                self._spawn()

    def _reap(self, process: BaseProcess) -> None:
        lived = time.monotonic() - self.workers.pop(process)
        process.join()
        _forget(process)
        how = describe_exit(process.exitcode)
        if self.stop.is_set():
            if process.exitcode:
                log.warning("worker %s stopped with %s", process.pid, how)
            return
        if process.exitcode == 0:  # a clean exit (max_requests, or SIGTERM to it alone)
            log.info("worker %s exited (%s) after %.1f s; starting a replacement",
                     process.pid, how, lived)
            self.due.append(time.monotonic())
            return
        delay = self.backoff.delay(lived)
        log.error("worker %s died (%s) after %.1f s; restarting it in %.1f s",
                  process.pid, how, lived, delay)
        self.due.append(time.monotonic() + delay)

    def _spawn(self) -> None:
        process = self.ctx.Process(target=_worker, kwargs={
            "config": self.config, "sockets": self.sockets, "shutdown_event": self.stop})
        process.daemon = self.config.daemon
        # The resource tracker first: (re)starting it unblocks SIGINT in this process,
        # which inside the block would let the fork server start without it blocked.
        resource_tracker.ensure_running()
        with _blocked(_WORKER_IGNORES):  # if the fork server (re)starts now: see the top
            forkserver.ensure_running()
            process.start()  # it calls ensure_running again: a restart then is covered too
        self.workers[process] = time.monotonic()
        log.info("worker %s started", process.pid)

    def _on_stop(self, signum: int, _frame: Any) -> None:
        if not self.stop.is_set():  # logged by the loop: a handler should not take log locks
            self.stopped_by = signal.Signals(signum).name
        self.stop.set()

    def _on_hup(self, *_: Any) -> None:
        for process in self.workers:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)


def _log_format() -> str:
    """The served config's `gateway.log_format`, so the master's lines match the workers'."""
    from .config import load_config
    from .errors import ConfigError

    path = os.environ.get("GATEWAY_CONFIG")
    if not path:
        return "text"
    try:
        return load_config(path).gateway.log_format
    except ConfigError:
        return "text"  # the workers will say what is wrong


@contextlib.contextmanager
def _blocked(signals: frozenset[signal.Signals]) -> Iterator[None]:
    """Hold `signals` pending in this thread (and in a process it starts) meanwhile."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _worker(config: Any, sockets: Any, shutdown_event: Event) -> None:
    """A worker process: ignore SIGINT and SIGHUP before taking them off the blocked set it
    was born with (so none of them can kill it first), then serve."""
    for signum in _WORKER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_IGNORES)
    run_worker(config, sockets, shutdown_event)


def _forget(process: BaseProcess) -> None:
    """A worker that is gone takes its live gauges (breaker state) out of `/metrics`."""
    if process.pid is None or MULTIPROC_ENV not in os.environ:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
