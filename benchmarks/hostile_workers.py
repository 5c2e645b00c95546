"""Hostile load, workers: `kill -9` of one of two workers of `gateway serve --workers 2`.

Clients keep requests going on keep-alive connections the whole time. Each
connection is attributed to the worker process that accepted it (its socket
inode, from /proc/net/tcp, found among that worker's fds), so the figures say
which failures the dead worker took with it (its requests in flight) and which
hit the other worker (target: none). A prober opens a new connection every
50 ms to see when a replacement worker serves (target: within 10 s).

    python benchmarks/hostile.py --only workers
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
from flood import FloodResult, Watch, start_gateway
from harness import ALL_CPUS, GATEWAY_CONFIG, Procs

CLIENTS = 8  # keep-alive connections sending requests back to back
WARMUP = 3.0  # seconds of traffic before the kill, at least
BALANCE_WITHIN = 10.0  # seconds of warm-up at most, waiting for 2+ connections per worker
REPLACE_TARGET = 10.0
GIVE_UP = 15.0  # seconds after the kill without a serving replacement
AFTER = 3.0  # seconds of traffic once the replacement serves
AT_KILL = -1  # failures on connections opened before the kill, owner unknown
MAX_REQUESTS = 50_000  # a bound on the whole run, whatever the speed
TIMEOUT = 5.0


@dataclass
class Tally:
    """What the clients saw; `owner` of a connection is the worker pid that accepted it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: int = 0
    failures: dict[int | None, int] = field(default_factory=dict)  # owner -> count
    served_by: dict[int, float] = field(default_factory=dict)  # pid -> first answer (mono)
    killed_at: float | None = None  # monotonic time of the kill

    def record(self, owner: int | None, ok: bool) -> None:
        with self.lock:
            if ok:
                self.ok += 1
                if owner is not None:
                    self.served_by.setdefault(owner, time.monotonic())
            else:
                self.failures[owner] = self.failures.get(owner, 0) + 1

    def failed_owner(self, owner: int | None, opened: float) -> int | None:
        """Who a failure is charged to: a connection opened before the kill that never got
        an answer was most likely accepted by the killed worker, but cannot be told apart."""
        if owner is None and self.killed_at is not None and opened < self.killed_at:
            return AT_KILL
        return owner

    @property
    def total(self) -> int:
        return self.ok + sum(self.failures.values())


def workers_of(master: int) -> set[int]:
    """The master's worker processes: children of its fork server (supervisor.py), or of
    the master itself when spawned; not the fork server or the resource tracker."""
    found = set()
    for pid in harness.process_tree(master):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"spawn_main" in cmdline or (b"forkserver" in cmdline and ppid != master):
            found.add(pid)
    return found


def owner_of(conn: http.client.HTTPConnection, server_port: int,
             pids: set[int]) -> int | None:
    """The pid among `pids` holding the server side of `conn` (None if not accepted yet)."""
    if conn.sock is None:
        return None
    client_port = conn.sock.getsockname()[1]
    local, remote = f":{server_port:04X}", f":{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(local) and fields[2].endswith(remote):
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
        except OSError:
            continue
    return None


class Clients:
    """`CLIENTS` threads on keep-alive connections plus one prober on fresh connections."""

    def __init__(self, master: int, port: int) -> None:
        self.master = master
        self.port = port
        self.tally = Tally()
        self.stop = threading.Event()
        self.owners: dict[int, int | None] = {}  # keep-alive client -> its worker now
        # Until the kill, a client whose connection landed on a worker that already holds
        # half of them connects again, so that both workers hold keep-alive connections.
        self.balance = True
        self._threads = [threading.Thread(target=self._client, args=(i, False), daemon=True)
                         for i in range(CLIENTS)]
        self._threads.append(threading.Thread(target=self._client, args=(0, True), daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT + 1)

    def _client(self, index: int, prober: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        owner: int | None = None
        opened = 0.0
        n = 0
        while not self.stop.is_set() and self.tally.total < MAX_REQUESTS:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
                owner = None
                opened = time.monotonic()
            n += 1
            try:
                conn.request("GET", f"/fanout/{index * 1000 + n % 1000 + 1}")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
            if owner is None and ok:
                owner = owner_of(conn, self.port, workers_of(self.master))
            self.tally.record(owner if ok else self.tally.failed_owner(owner, opened), ok)
            rebalance = False
            if not prober:
                with self.tally.lock:
                    held = list(self.owners.values()).count(owner)
                    rebalance = ok and self.balance and held >= CLIENTS // 2 and \
                        self.owners.get(index) != owner
                    self.owners[index] = owner if ok and not rebalance else None
            if not ok or prober or rebalance:
                conn.close()
                conn = None
            if prober:
                self.stop.wait(0.05)
        if conn is not None:
            conn.close()


def run_workers_flood(procs: Procs, settle: float = 3.0) -> FloodResult:
    upstream = harness.start_upstream(procs, "workers-upstream")
    config = GATEWAY_CONFIG.read_text().replace("${UPSTREAM}", upstream)
    proc, base = start_gateway(procs, "workers-gateway", config, workers=2, cpus=ALL_CPUS)
    port = int(base.rsplit(":", 1)[1])
    give_up = time.monotonic() + 20
    while len(before := workers_of(proc.pid)) < 2:
        if time.monotonic() > give_up:
            raise harness.BenchError(f"2 workers did not start (found {sorted(before)})")
        time.sleep(0.1)
    clients = Clients(proc.pid, port)
    with Watch(proc.pid, base) as watch:
        clients.start()
        warm = time.monotonic()
        while time.monotonic() - warm < WARMUP or (
                time.monotonic() - warm < BALANCE_WITHIN
                and min(list(clients.owners.values()).count(p) for p in before) < 2):
            time.sleep(0.1)
        tally = clients.tally
        by_worker = {pid: tally.served_by.get(pid) is not None for pid in before}
        clients.balance = False
        held = list(clients.owners.values())
        victim = max(before, key=lambda p: (held.count(p), by_worker[p], p))
        survivor = next(p for p in before if p != victim)
        tally.killed_at = killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        with tally.lock:
            failures_before = dict(tally.failures)
        replacement = _await_replacement(proc, before, tally, killed)
        if replacement.served is not None:
            time.sleep(AFTER)
        clients.join()
    result = watch.result("workers: kill -9 of 1 of 2 workers under load", settle)
    failures = {k: v - failures_before.get(k, 0) for k, v in tally.failures.items()}
    on_victim = failures.get(victim, 0)
    at_kill = failures.get(AT_KILL, 0)
    elsewhere = sum(v for k, v in failures.items() if k not in (victim, AT_KILL))
    master_exit = proc.popen.poll()
    result.figures["keep-alive connections at the kill"] = (
        f"{held.count(victim)} on the killed worker {victim}, {held.count(survivor)} on "
        f"the other")
    result.figures["requests"] = (
        f"{tally.ok} answered 200; failures after the kill: {on_victim} on the killed "
        f"worker's connections, {at_kill} on connections opened before the kill that never "
        f"got an answer, {elsewhere} elsewhere (surviving worker: "
        f"{failures.get(survivor, 0)}, connections opened after the kill: "
        f"{failures.get(None, 0)})")
    result.figures["replacement"] = (replacement.describe() if master_exit is None else
                                     f"none: gateway serve exited with {master_exit}")
    served = replacement.served
    result.check(f"a replacement serves within {REPLACE_TARGET:.0f} s",
                 served is not None and served < REPLACE_TARGET)
    result.check("zero failures on the other worker", elsewhere == 0)
    return result


@dataclass
class Replacement:
    """The new worker and when (seconds after the kill) it existed, logged, answered."""

    pid: int | None = None
    spawned: float | None = None
    ready: float | None = None  # its "Running on" line in the log
    served: float | None = None  # first answer on a connection it accepted

    def describe(self) -> str:
        if self.pid is None:
            return f"none within {GIVE_UP:.0f} s"
        return (f"pid {self.pid} started after {_s(self.spawned)}, logged 'Running on' "
                f"after {_s(self.ready)}, first answer after {_s(self.served)}")


def _s(t: float | None) -> str:
    return "never" if t is None else f"{t:.2f} s"


def _await_replacement(proc: harness.Proc, before: set[int], tally: Tally,
                       killed: float) -> Replacement:
    found = Replacement()
    while time.monotonic() - killed < GIVE_UP and proc.popen.poll() is None:
        now = time.monotonic() - killed
        if found.pid is None and (new := workers_of(proc.pid) - before):
            found.pid, found.spawned = min(new), now
        if found.pid is not None and found.ready is None and \
                f"[{found.pid}] [INFO] Running on" in proc.log_tail(200):
            found.ready = now
        if found.pid is not None and (first := tally.served_by.get(found.pid)) is not None:
            found.served = first - killed
            return found
        time.sleep(0.05)
    return found
