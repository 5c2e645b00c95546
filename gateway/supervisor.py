"""`gateway serve`'s process model: SIGHUP reloads the config, it never restarts workers.

Hypercorn's own master answers SIGHUP by restarting every worker; with a broken config
the new workers cannot start and the whole server stops. So here:

- one worker runs in this process, no master: SIGHUP reaches the app, which reloads in
  place (reload.py) and keeps its config if the new one is invalid;
- several workers run under this small master, which forwards SIGHUP to each of them,
  stops them all on SIGINT/SIGTERM (gracefully, as Hypercorn's does), replaces a worker
  that exits cleanly (`max_requests`) and stops everything if one crashes. It also sets
  `PROMETHEUS_MULTIPROC_DIR` to a fresh directory (unless already set) so that `/metrics`,
  in whichever worker answers, adds up every worker's values; it is removed at exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve(config: Any) -> int:
    """Run the app named by `config.application_path` under Hypercorn; the exit code."""
    from hypercorn.run import run

    if sys.platform == "win32" or config.worker_class == "trio":  # pragma: no cover
        return run(config)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's own handler is in place
    if config.workers <= 1:
        config.workers = 0  # Hypercorn then runs the worker in this process
        return run(config)
    return _supervise(config)


def _supervise(config: Any) -> int:
    from hypercorn.asyncio.run import asyncio_worker, uvloop_worker
    from hypercorn.utils import write_pid_file

    worker = uvloop_worker if config.worker_class == "uvloop" else asyncio_worker
    own_dir = None
    if MULTIPROC_ENV not in os.environ:
        own_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir  # set before any worker (or import) reads it
    if config.pid_path is not None:
        write_pid_file(config.pid_path)
    sockets = config.create_sockets()
    ctx = get_context("spawn")
    stop = ctx.Event()
    processes: list[BaseProcess] = []

    def spawn() -> None:
        process = ctx.Process(target=worker, kwargs={"config": config, "sockets": sockets,
                                                     "shutdown_event": stop})
        process.daemon = config.daemon
        process.start()
        processes.append(process)

    def on_stop(*_: Any) -> None:
        stop.set()

    def on_hup(*_: Any) -> None:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)

    # Workers inherit "ignore SIGINT": a Ctrl-C in the terminal reaches the whole process
    # group, and only the master decides how the workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exitcode = 0
    try:
        for _ in range(config.workers):
            spawn()
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        while processes:
            wait([p.sentinel for p in processes])
            for process in [p for p in processes if p.exitcode is not None]:
                processes.remove(process)
                process.join()
                _forget(process)
                if process.exitcode and not exitcode:
                    exitcode = process.exitcode
            if exitcode or stop.is_set():
                stop.set()
            else:  # a clean exit (max_requests): keep the worker count
                while len(processes) < config.workers:
                    spawn()
    finally:
        for process in processes:
            process.terminate()
            process.join()
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return exitcode


def _forget(process: BaseProcess) -> None:
    """A worker that is gone takes its live gauges (breaker state) out of `/metrics`."""
    if process.pid is None or MULTIPROC_ENV not in os.environ:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
