"""`gateway serve --workers N`: a worker that dies is logged and replaced; signals stop all.

The backoff is a pure value; the rest runs a real `gateway serve --workers 2` and kills a
real worker with SIGKILL while a client keeps sending requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import HypercornFactory, LiveServer, call, endpoint, make_config

from gateway.supervisor import Backoff, describe_exit

WORKERS_2 = [sys.executable, "-m", "gateway", "serve", "--config", "{config}",
             "--bind", "127.0.0.1:{port}", "--workers", "2"]
REPLACED_WITHIN = 10.0  # seconds (issue 11's target)
CONFIG = make_config({"up": "http://127.0.0.1:1"}, endpoint("/r", call("c", "up")))


def test_backoff_doubles_while_workers_die_young_and_resets_after_a_stable_one() -> None:
    backoff = Backoff(first=0.5, ceiling=4.0, stable=30.0)
    assert [backoff.delay(lived=1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.delay(lived=31.0) == 0.5
    assert backoff.delay(lived=0.1) == 1.0


def test_exit_is_described_by_code_or_signal_name() -> None:
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(0) == "exit code 0"


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def worker_pids(master: int) -> set[int]:
    """The master's workers: the children of its fork server (not the resource tracker)."""
    pids = set()
    for child in children(master):
        with contextlib.suppress(FileNotFoundError):
            if b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                pids.update(children(child))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def serving_pids(output: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"\[(\d+)\] \[INFO\] Running on http", output)}


async def eventually(condition: object, what: str, server: LiveServer,
                     within: float = 20.0) -> None:
    give_up = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > give_up:
            pytest.fail(f"{what} did not happen within {within} s:\n{server.output()}")
        await asyncio.sleep(0.05)


async def two_workers(hypercorn_server: HypercornFactory) -> tuple[LiveServer, set[int]]:
    server = await hypercorn_server(CONFIG, command=WORKERS_2)
    await eventually(lambda: len(serving_pids(server.output())) == 2, "two workers", server)
    pids = worker_pids(server.process.pid)
    assert pids == serving_pids(server.output())
    return server, pids


async def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(
    hypercorn_server: HypercornFactory,
) -> None:
    server, pids = await two_workers(hypercorn_server)
    victim, survivor = sorted(pids)
    results: list[tuple[float, bool]] = []  # (when sent, answered 200)
    done = asyncio.Event()

    async def client() -> None:
        # A fresh connection per request: the kernel hands each to whichever worker accepts.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(trust_env=False, timeout=5, limits=limits) as http:
            while not done.is_set():
                sent = time.monotonic()
                try:
                    ok = (await http.get(server.url + "/healthz")).status_code == 200
                except httpx.TransportError:
                    ok = False
                results.append((sent, ok))
                await asyncio.sleep(0.01)

    task = asyncio.create_task(client())
    try:
        await asyncio.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            output = server.output()
            new = serving_pids(output) - pids
            return bool(new) and any(f"[{pid}] [INFO] 127.0.0.1:" in output for pid in new)

        await eventually(replaced, "a replacement serving", server, within=REPLACED_WITHIN)
        replaced_after = time.monotonic() - killed_at
        await asyncio.sleep(0.5)
    finally:
        done.set()
        await task
    output = server.output()
    assert f"worker {victim} died (signal SIGKILL)" in output, output
    assert re.search(rf"worker {victim} died \(signal SIGKILL\) after [\d.]+ s; restarting "
                     r"it in 0\.5 s", output), output
    (replacement,) = serving_pids(output) - pids
    assert f"worker {replacement} started" in output
    assert worker_pids(server.process.pid) == {survivor, replacement}
    assert not alive(victim)
    # Only a request the victim had accepted when it died may fail (one at a time here).
    failed = [sent for sent, ok in results if not ok]
    assert len(failed) <= 1, (failed, killed_at)
    assert all(killed_at - 1.0 <= sent <= killed_at + 1.0 for sent in failed)
    after = [ok for sent, ok in results if sent > killed_at + 1.0]
    assert after
    assert all(after)
    assert f"[{survivor}] [INFO] 127.0.0.1:" in output.split("died (signal SIGKILL)")[1]
    assert server.process.returncode is None
    print(f"replacement serving {replaced_after:.1f} s after the kill; "
          f"{len(results)} requests, {len(failed)} failed")

    # Ctrl-C in a terminal: SIGINT to the whole group. The workers ignore it; the master
    # stops them all (the replacement too), gracefully.
    os.killpg(server.process.pid, signal.SIGINT)
    assert await asyncio.wait_for(server.process.wait(), 10) == 0
    await eventually(lambda: not alive(survivor) and not alive(replacement),
                     "the workers' exit", server, within=2.0)
    assert "SIGINT: stopping 2 workers gracefully" in server.output()


async def test_sigterm_stops_one_worker_alone_or_the_master_and_every_worker(
    hypercorn_server: HypercornFactory,
) -> None:
    server, pids = await two_workers(hypercorn_server)
    victim = min(pids)
    os.kill(victim, signal.SIGTERM)  # it stops gracefully, exit code 0: replaced, no backoff
    await eventually(lambda: len(serving_pids(server.output()) - pids) == 1,
                     "the replacement", server, within=REPLACED_WITHIN)
    assert re.search(rf"worker {victim} exited \(exit code 0\) after [\d.]+ s; starting a "
                     "replacement", server.output()), server.output()
    pids = worker_pids(server.process.pid)
    assert len(pids) == 2
    assert victim not in pids

    started = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)  # the master only, not its process group
    assert await asyncio.wait_for(server.process.wait(), 10) == 0
    took = time.monotonic() - started
    await eventually(lambda: not any(alive(pid) for pid in pids), "the workers' exit", server,
                     within=2.0)
    output = server.output()
    assert "SIGTERM: stopping 2 workers gracefully" in output
    assert "died" not in output
    assert "Traceback" not in output
    assert took < 10.0
    print(f"stopped in {took:.1f} s")


def group_members(pgid: int) -> set[int]:
    """Live processes of process group `pgid` (the server's own session: master and workers)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                    members.add(int(entry.name))
    return members


def fork_server_of(master: int) -> int | None:
    for child in children(master):
        with contextlib.suppress(FileNotFoundError):
            if b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


async def test_sigterm_while_the_first_workers_start_leaves_no_process_behind(
    hypercorn_server: HypercornFactory,
) -> None:
    server = await hypercorn_server(CONFIG, command=WORKERS_2, ready=False)
    master = server.process.pid
    # The master is up and starting workers: its fork server is importing the app.
    await eventually(lambda: fork_server_of(master) is not None, "the fork server", server)
    os.kill(master, signal.SIGTERM)  # the master only, as a service manager would
    try:
        code = await asyncio.wait_for(server.process.wait(), 20)
    except TimeoutError:
        pytest.fail(f"the master did not stop within 20 s of SIGTERM:\n{server.output()}")
    assert code == 0, server.output()
    # Nothing of its group outlives it: no worker, no fork server, serving with no master.
    await eventually(lambda: not group_members(master), "the group's exit", server,
                     within=5.0)
    assert "Traceback" not in server.output()


def signal_masks(pid: int) -> dict[str, int]:
    """SigBlk, SigIgn and SigCgt of /proc/PID/status, as bit masks (bit n-1 = signal n)."""
    fields = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    return {name: int(fields[name], 16) for name in ("SigBlk", "SigIgn", "SigCgt")}


def has(mask: int, signum: int) -> bool:
    return bool(mask & (1 << (signum - 1)))


async def test_sigint_while_the_first_workers_start_stops_everything(
    hypercorn_server: HypercornFactory,
) -> None:
    server = await hypercorn_server(CONFIG, command=WORKERS_2, ready=False)
    master = server.process.pid
    # The fork server is importing the app: the first spawn is under way for seconds.
    await eventually(lambda: fork_server_of(master) is not None, "the fork server", server)
    os.kill(master, signal.SIGINT)  # a Ctrl-C that reaches the master alone
    try:
        code = await asyncio.wait_for(server.process.wait(), 20)
    except TimeoutError:
        pytest.fail(f"the master did not stop within 20 s of SIGINT:\n{server.output()}")
    assert code == 0, server.output()
    await eventually(lambda: not group_members(master), "the group's exit", server,
                     within=5.0)
    assert "SIGINT: stopping" in server.output()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_during_a_respawn_stops_everything(
    hypercorn_server: HypercornFactory, signum: signal.Signals,
) -> None:
    server, pids = await two_workers(hypercorn_server)
    master = server.process.pid
    masks = signal_masks(master)
    for caught in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # never swapped out
        assert has(masks["SigCgt"], caught)
        assert not has(masks["SigBlk"] | masks["SigIgn"], caught)
    for pid in pids:  # serving workers: SIGINT ignored, SIGHUP the app's, neither blocked
        masks = signal_masks(pid)
        assert has(masks["SigIgn"], signal.SIGINT)
        assert has(masks["SigCgt"], signal.SIGHUP)
        assert not has(masks["SigBlk"], signal.SIGINT)
        assert not has(masks["SigBlk"], signal.SIGHUP)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    # The replacement's process exists and is loading the app, not serving yet.
    await eventually(lambda: len(worker_pids(master) - pids) == 1, "the replacement", server,
                     within=REPLACED_WITHIN)
    assert not serving_pids(server.output()) - pids
    os.kill(master, signum)
    try:
        code = await asyncio.wait_for(server.process.wait(), 20)
    except TimeoutError:
        pytest.fail(f"the master did not stop within 20 s of {signum.name}:\n"
                    f"{server.output()}")
    assert code == 0, server.output()
    await eventually(lambda: not group_members(master), "the group's exit", server,
                     within=5.0)
    assert f"{signum.name}: stopping 2 workers gracefully" in server.output()
    assert "Traceback" not in server.output()
