"""`gateway serve | worker | demo | check | bench`: argument parsing and hand-off, nothing else."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from . import bench
from .errors import ConfigError

DEFAULT_CONFIG = "gateway.toml"
DEFAULT_HYPERCORN = "hypercorn.toml"


def main(argv: list[str] | None = None) -> int:
    _import_from_cwd()
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a config under Hypercorn")
    serve.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))
    serve.add_argument("--bind", help="HOST:PORT (default from hypercorn.toml, else :8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default from hypercorn.toml)")
    serve.add_argument("--watch", action="store_true",
                       help="also reload the config when its file changes (SIGHUP always does)")
    serve.add_argument("--hypercorn-config", default=DEFAULT_HYPERCORN,
                       help="Hypercorn settings file (used if it exists)")

    worker = sub.add_parser("worker", help="run background jobs from a Redis store, no HTTP")
    worker.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))
    worker.add_argument("--app", help="MODULE:ATTR of a Gateway with code-defined endpoints")

    demo = sub.add_parser("demo", help="built-in demo upstreams and a gateway in front")
    demo.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT for the gateway")

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("path")

    bench.configure_parser(sub.add_parser("bench", help="parallel vs sequential benchmark"))

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "worker":
        if _check_quietly(args.config) != 0:
            return 2
        from .jobs import worker as job_worker

        return job_worker.run(args.config, args.app)
    if args.command == "demo":
        return _demo(args)
    if args.command == "check":
        return _check(args.path)
    return bench.run(args)


def _import_from_cwd() -> None:
    """`combine = "pkg.mod:fn"` resolves from the working directory, as with `python -m`."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _check(path: str) -> int:
    from .config import load_config
    from .plan import compile_plans

    try:
        config = load_config(path)
        plans = compile_plans(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    calls = sum(len(p.calls) for p in plans)
    print(f"{path}: ok: {len(config.upstreams)} upstreams, {len(plans)} endpoints, "
          f"{calls} calls")
    return 0


def hypercorn_config(path: str | None, bind: str | None = None,
                     workers: int | None = None) -> Any:
    """Hypercorn settings from `hypercorn.toml` (if present) with our defaults; flags win."""
    from hypercorn.config import Config as HypercornConfig

    if path and Path(path).is_file():
        config = HypercornConfig.from_toml(path)
    else:
        from .guard import MAX_HEAD_BYTES

        config = HypercornConfig()
        config.bind = ["127.0.0.1:8000"]
        config.h11_max_incomplete_size = MAX_HEAD_BYTES  # as hypercorn.toml: 414/431 enveloped
    if sys.platform != "win32":
        config.worker_class = "uvloop"
    if bind:
        config.bind = [bind]
    if workers is not None:
        config.workers = workers
    return config


def _serve(args: argparse.Namespace) -> int:
    if _check_quietly(args.config) != 0:
        return 2
    from .reload import WATCH_ENV
    from .supervisor import serve

    os.environ["GATEWAY_CONFIG"] = str(Path(args.config).resolve())
    if args.watch:
        os.environ[WATCH_ENV] = "1"
    config = hypercorn_config(args.hypercorn_config, args.bind, args.workers)
    config.application_path = "gateway.asgi:app"
    return serve(config)  # SIGHUP reloads the config (supervisor.py)


def _check_quietly(path: str) -> int:
    from .config import load_config
    from .plan import compile_plans

    try:
        compile_plans(load_config(path))
    except ConfigError as exc:
        print(f"gateway: refusing to start, {path} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - platforms without uvloop
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_run_demo(args.bind))
    return 0


async def _run_demo(bind: str) -> None:
    from hypercorn.asyncio import serve

    from .app import Gateway
    from .demo import demo_config, register_demo_views, start_demo_upstreams

    upstreams = await start_demo_upstreams()
    try:
        gw = Gateway(demo_config(upstreams.urls))
        register_demo_views(gw)
        config = hypercorn_config(None, bind)
        base = f"http://{bind}"
        print(_demo_banner(base, upstreams.urls), flush=True)
        await serve(gw.app, config)
    finally:
        await upstreams.close()


def _demo_banner(base: str, urls: dict[str, str]) -> str:
    lines = ["gateway demo: upstreams on loopback (no network needed)"]
    lines += [f"  {name:<16} {url}" for name, url in urls.items()]
    lines += [
        "",
        f"dashboard (waterfalls, parallel vs sequential): {base}/_gateway/",
        f"WebSocket progress per call: {base.replace('http', 'ws', 1)}/ws",
        "",
        f"gateway on {base}; try:",
        f"  curl -s {base}/dashboard/7 | python3 -m json.tool",
        f"  curl -s -H 'X-Gateway-Strategy: sequential' {base}/dashboard/7 | python3 -m json.tool",
        f"  curl -s {base}/profile/7        # a Python combine hook",
        f"  curl -s {base}/summary/7        # a code-defined endpoint (@gw.aggregate)",
        f"  curl -si {base}/dashboard/0     # an upstream 404 passed through",
        f"  curl -s {base}/team/1/2/3       # three keyed calls batched into one upstream call",
        f"  gateway bench --url {base} /dashboard/7",
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines)
