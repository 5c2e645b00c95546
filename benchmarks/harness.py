"""Shared plumbing for the benchmarks: pinned processes, the servers under test, wrk.

Every process is started in its own session (so its workers form one process
group) and registered with a `Procs` context manager that stops the whole
group on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SERVERS_DIR = BENCH_DIR / "servers"
LUA_DIR = BENCH_DIR / "lua"
GATEWAY_CONFIG = BENCH_DIR / "gateway.toml"
HYPERCORN_CONFIG = BENCH_DIR / "hypercorn.toml"
# The venv's bin directory: the interpreter that runs us, not its resolved symlink.
BIN = Path(sys.executable).parent

SERVER_CPUS = "0"  # the server under test
LOAD_CPUS = "1"  # wrk, the upstream(s) and this script
ALL_CPUS = "0,1"


class BenchError(RuntimeError):
    """A benchmark step could not run (a server did not start, wrk failed...).

    `summary` is one line for a results table; str() adds the detail (a log tail).
    """

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(f"{summary}\n{detail}" if detail else summary)
        self.summary = summary


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def last_log_line(self) -> str:
        return next((ln.strip() for ln in reversed(self.log_tail().splitlines()) if ln.strip()), "")


class Procs(contextlib.AbstractContextManager["Procs"]):
    """Owns every process a benchmark starts; stops them all at exit."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []
        self._logdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))

    def start(
        self, name: str, argv: list[str], cpus: str | None, env: dict[str, str] | None = None
    ) -> Proc:
        cmd = ["taskset", "-c", cpus, *argv] if cpus and _cpu_count() > 1 else argv
        log_path = self._logdir / f"{name}.log"
        log = log_path.open("wb")
        popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own process group: one killpg stops the server and all its workers,
            # and the terminal's Ctrl-C reaches only us (we then stop them).
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path, log)
        self._procs.append(proc)
        return proc

    def dir(self, name: str) -> Path:
        """A directory that lives as long as these processes."""
        path = self._logdir / name
        path.mkdir(exist_ok=True)
        return path

    def file(self, name: str, text: str) -> Path:
        """Write a file (e.g. a config) that lives as long as these processes."""
        path = self._logdir / name
        path.write_text(text)
        return path

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc not in self._procs:
            return
        self._procs.remove(proc)
        _stop_group(proc.popen, timeout)
        proc.log.close()

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)
        shutil.rmtree(self._logdir, ignore_errors=True)


def _stop_group(popen: subprocess.Popen[bytes], timeout: float) -> None:
    if popen.returncode is not None:
        return  # already reaped: its pid may belong to someone else now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not has_exited(popen) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Not reaped yet, so the pid (= the group id) cannot have been reused: this
    # only reaches our own leftovers, e.g. workers that outlived their parent.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()


def has_exited(popen: subprocess.Popen[bytes]) -> bool:
    """Whether the process has exited, without reaping it (see _stop_group)."""
    if popen.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def install_sigterm_handler() -> None:
    """Turn SIGTERM into KeyboardInterrupt so every `finally` stops its processes."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# Taken at import, before pin_self() narrows this process (and its children) to one core.
_CPUS_AT_START = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def _cpu_count() -> int:
    return _CPUS_AT_START


def pin_self(cpus: str) -> None:
    """Pin this orchestrating process (and the latency client in it) to `cpus`."""
    if hasattr(os, "sched_setaffinity") and _cpu_count() > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http_ok(
    proc: Proc, url: str, timeout: float = 30.0, headers: tuple[str, ...] = ()
) -> None:
    """Poll `url` until it answers 200; fail early if the process exits.

    `headers` ('Name: value') go on every poll: a route behind `auth` answers 401 without.
    """
    fields = dict(h.split(":", 1) for h in headers)
    request = urllib.request.Request(url, headers={k.strip(): v.strip() for k, v in fields.items()})
    deadline = time.monotonic() + timeout
    last = "no answer"
    first_5xx: float | None = None
    while time.monotonic() < deadline:
        if has_exited(proc.popen):
            raise BenchError(
                f"{proc.name} exited before it was ready: {proc.last_log_line()}", proc.log_tail()
            )
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
            # Serving but failing (e.g. a bad upstream URL): do not wait out the timeout.
            first_5xx = first_5xx or time.monotonic()
            if exc.code >= 500 and time.monotonic() - first_5xx > 5.0:
                break
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{proc.name} not ready ({last})", proc.log_tail())


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (hypercorn/gunicorn workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of `pid` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def core_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one core since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            return sum(values) - idle, sum(values)
    return 0, 0


def core_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Server:
    """One server under test: how to start it and whether it can start at all."""

    name: str
    title: str
    argv: Callable[[int, int], list[str]]  # (port, workers) -> argv
    env: dict[str, str] = field(default_factory=dict)
    multi_worker: bool = False
    is_gateway: bool = False

    def unavailable(self) -> str | None:
        """Why this server cannot run here, or None."""
        exe = BIN / "gateway" if self.is_gateway else Path(self.argv(0, 1)[0])
        if not exe.exists():
            return f"{exe} not found"
        if self.is_gateway and not _gateway_serve_help():
            probe = subprocess.run(
                [str(exe), "serve", "--help"], capture_output=True, cwd=ROOT, timeout=60
            )
            err = (probe.stderr or probe.stdout).decode(errors="replace").strip()
            return "`gateway serve --help` failed: " + (err.splitlines() or ["?"])[-1]
        return None


@functools.cache
def _gateway_serve_help() -> str:
    try:
        probe = subprocess.run(
            [str(BIN / "gateway"), "serve", "--help"], capture_output=True, cwd=ROOT, timeout=60
        )
    except OSError:
        return ""
    return probe.stdout.decode(errors="replace") if probe.returncode == 0 else ""


def gateway_server(name: str, config: Path, title: str = "") -> Server:
    """`gateway serve` with another config (an A/B variant, a generated route)."""
    return Server(
        name, title or f"gateway with {config.name}", _gateway_argv(config),
        multi_worker=True, is_gateway=True,
    )


def _gateway_argv(config: Path) -> Callable[[int, int], list[str]]:
    def argv(port: int, workers: int) -> list[str]:
        cmd = [
            str(BIN / "gateway"),
            "serve",
            "--config",
            str(config),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ]
        # The project's hypercorn.toml logs every request; the other servers log none.
        if "--hypercorn-config" in _gateway_serve_help():
            cmd += ["--hypercorn-config", str(HYPERCORN_CONFIG)]
        return cmd

    return argv


def _hypercorn_argv(port: int, workers: int) -> list[str]:
    return [
        str(BIN / "hypercorn"),
        "--worker-class",
        "uvloop",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "quart_httpx:app",
    ]


def _aiohttp_argv(port: int, workers: int) -> list[str]:
    return [str(BIN / "python"), str(SERVERS_DIR / "aiohttp_app.py"), "--port", str(port)]


def _gunicorn_argv(port: int, workers: int) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        "--workers",
        str(workers),
        "--threads",
        "8",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "flask_asyncio:app",
    ]


_PYPATH = {"PYTHONPATH": str(SERVERS_DIR)}

SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "gateway",
            "our gateway (gateway serve)",
            _gateway_argv(GATEWAY_CONFIG),
            multi_worker=True,
            is_gateway=True,
        ),
        Server(
            "quart-httpx",
            "Quart + shared httpx.AsyncClient, Hypercorn+uvloop (floor)",
            _hypercorn_argv,
            env=_PYPATH,
            multi_worker=True,
        ),
        Server(
            "quart-httpx-aiohttp",
            "same, httpx over httpx-aiohttp's AiohttpTransport",
            _hypercorn_argv,
            env={**_PYPATH, "HTTPX_TRANSPORT": "aiohttp"},
            multi_worker=True,
        ),
        Server("aiohttp", "aiohttp.web + aiohttp ClientSession, uvloop", _aiohttp_argv),
        Server(
            "flask-asyncio",
            "Flask + asyncio.run per request, gunicorn --threads 8 (seed)",
            _gunicorn_argv,
            env=_PYPATH,
            multi_worker=True,
        ),
    )
}


def select_servers(only: str | None, default: list[str] | None = None) -> list[Server]:
    names = [n.strip() for n in only.split(",") if n.strip()] if only else default or list(SERVERS)
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")
    return [SERVERS[n] for n in names]


def start_upstream(procs: Procs, name: str = "upstream", delays: str | None = None) -> str:
    """Start benchmarks/upstream.py on the load core; return its base URL."""
    port = free_port()
    argv = [str(BIN / "python"), str(BENCH_DIR / "upstream.py"), "--port", str(port)]
    if delays:
        argv += ["--delays", delays]
    proc = procs.start(name, argv, LOAD_CPUS)
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(proc, f"{base}/a/1", timeout=15)
    return base


NGINX_CONF = """worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def start_nginx_upstream(procs: Procs) -> str:
    """Debian's nginx on the load core, serving /a/<id>, /b/<id>, /c/<id> as static JSON: an
    upstream that costs a few µs a request, so the load core has room for a second worker.
    """
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        raise BenchError("nginx is not installed (apt-get install nginx)")
    port = free_port()
    root = procs.dir("nginx-root")
    for source in "abc":  # ids 1..1000: what benchmarks/lua/fanout.lua asks for
        (root / source).mkdir(parents=True, exist_ok=True)
        for i in range(1, 1001):
            (root / source / str(i)).write_text(
                json.dumps({"id": i, "name": f"{source}-{i}", "source": source}))
    (root / "logs").mkdir(exist_ok=True)
    conf = procs.file("nginx.conf", NGINX_CONF.format(port=port, root=root))
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    proc = procs.start("nginx-upstream", [nginx, "-p", str(root), "-c", str(conf), "-e",
                                          "stderr", "-g", directives], LOAD_CPUS)
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(proc, f"{base}/a/1", timeout=15)
    return base


def _resolved_gateway_config(upstream: str) -> Path:
    """gateway.toml with ${UPSTREAM} substituted, for a gateway that does not do it in `url`."""
    text = GATEWAY_CONFIG.read_text().replace("${UPSTREAM}", upstream)
    fd, path = tempfile.mkstemp(prefix="gateway-bench-", suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return Path(path)


@contextlib.contextmanager
def running(
    procs: Procs,
    server: Server,
    upstream: str,
    workers: int = 1,
    cpus: str | None = SERVER_CPUS,
    ready_headers: tuple[str, ...] = (),
) -> Iterator[tuple[Proc, str]]:
    """Start `server` against `upstream`, wait until /fanout/1 answers 200, yield (proc, url)."""
    port = free_port()
    env = {"UPSTREAM": upstream, **server.env}
    base = f"http://127.0.0.1:{port}"
    proc = procs.start(server.name, server.argv(port, workers), cpus, env)
    resolved: Path | None = None
    try:
        try:
            wait_http_ok(proc, f"{base}/fanout/1", headers=ready_headers)
        except BenchError as first:
            if not server.is_gateway:
                raise
            # Fall back to a pre-substituted config in case ${VAR} is not expanded in `url`.
            procs.stop(proc)
            resolved = _resolved_gateway_config(upstream)
            print(
                f"  ! gateway did not serve with ${{UPSTREAM}} in gateway.toml; "
                f"retrying with a resolved copy ({first.summary})",
                file=sys.stderr,
            )
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            argv = [
                str(resolved) if a == str(GATEWAY_CONFIG) else a for a in server.argv(port, workers)
            ]
            proc = procs.start(server.name, argv, cpus, env)
            wait_http_ok(proc, f"{base}/fanout/1", headers=ready_headers)
        yield proc, base
    finally:
        procs.stop(proc)
        if resolved is not None:
            resolved.unlink(missing_ok=True)


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"cannot parse wrk duration {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    percentiles = {
        m[1]: _duration_ms(m[2])
        for m in re.finditer(r"^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.M)
    }
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if not (total and rps and len(percentiles) == 4):
        raise BenchError("cannot parse wrk output:\n" + output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total[1]),
        seconds=_duration_ms(total[2] + total[3]) / 1000,
        rps=float(rps[1]),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        socket_errors=sum(int(x) for x in sock.groups()) if sock else 0,
        non_2xx=int(non2xx[1]) if non2xx else 0,
    )


def wrk(
    url: str,
    duration: float,
    connections: int = 32,
    stop_after: int | None = None,
    timeout_s: float = 10.0,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """Run wrk (1 thread, pinned to the load core) against `url` for `duration` seconds,
    or until `stop_after` responses if that comes first; `headers` ("Name: value")
    go on every request."""
    exe = shutil.which("wrk")
    if exe is None:
        raise BenchError("wrk not found (apt-get install wrk)")
    script = "fanout.lua" if stop_after is None else "fanout_count.lua"
    argv = [
        exe,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        *(arg for h in headers for arg in ("-H", h)),
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    if stop_after is not None:
        argv += ["--", str(stop_after)]
    if _cpu_count() > 1:
        argv = ["taskset", "-c", LOAD_CPUS, *argv]
    # wrk stops itself after -d; the timeouts below only guard against a hang.
    limit = duration + timeout_s + 30
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            if stop_after is not None:
                assert proc.stderr is not None
                for line in proc.stderr:  # ends at EOF when wrk exits after -d
                    if line.startswith("stop-after: reached"):
                        proc.send_signal(signal.SIGINT)  # wrk then prints its summary
                        break
            stdout, stderr = proc.communicate(timeout=limit)
        except BaseException:
            proc.kill()
            raise
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode})", stderr or stdout)
    return parse_wrk(stdout)


# --------------------------------------------------------------------------- output


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    if headers and not headers[-1] and all(not r[-1] for r in rows):
        headers, rows = headers[:-1], [r[:-1] for r in rows]  # an empty notes column
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    # Numbers right-aligned; the name column and untitled notes columns left-aligned.
    right = [i > 0 and bool(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else ("-" * (w + 2))
            for w, r in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def save_json(path: str, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
