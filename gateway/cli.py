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
from .listen import DEFAULT_BIND, BindError

DEFAULT_CONFIG = "gateway.toml"
DEFAULT_HYPERCORN = "hypercorn.toml"
PACKAGED_HYPERCORN = Path(__file__).with_name(DEFAULT_HYPERCORN)
CONFIG_ENV = "GATEWAY_CONFIG"

DESCRIPTION = """\
An API aggregation gateway: one request in, concurrent upstream calls out,
one response back that says how long the whole request and each call took."""

EPILOG = f"""\
examples:
  gateway demo                                 demo upstreams and a gateway on {DEFAULT_BIND}
  gateway check gateway.toml                   validate a config: one line per problem
  gateway serve --config gateway.toml --bind 0.0.0.0:8000 --workers 4
  gateway bench --url http://{DEFAULT_BIND} /dashboard/7

The config file is --config PATH, else ${CONFIG_ENV}, else ./{DEFAULT_CONFIG}.
`gateway COMMAND --help` shows a command's options."""

CONFIG_HELP = f"the config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})"


def main(argv: list[str] | None = None) -> int:
    _import_from_cwd()
    parser = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve a config under Hypercorn",
                           description="Serve a config under Hypercorn (SIGHUP reloads it).")
    serve.add_argument("--config", metavar="PATH", default=_default_config(), help=CONFIG_HELP)
    serve.add_argument("--bind", metavar="HOST:PORT",
                       help=f"address to listen on (default: the hypercorn.toml's bind, "
                            f"{DEFAULT_BIND} in the shipped one)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes (default: the hypercorn.toml's workers, 1 in the "
                            "shipped one)")
    serve.add_argument("--watch", action="store_true",
                       help="also reload the config when its file changes (SIGHUP always does)")
    serve.add_argument("--hypercorn-config", metavar="PATH",
                       help="Hypercorn settings (default: hypercorn.toml next to the config, "
                            "else in the working directory, else the one shipped in the package)")

    worker = sub.add_parser("worker", help="run background jobs from a Redis store, no HTTP")
    worker.add_argument("--config", metavar="PATH", default=_default_config(), help=CONFIG_HELP)
    worker.add_argument("--app", help="MODULE:ATTR of a Gateway with code-defined endpoints")

    demo = sub.add_parser("demo", help="built-in demo upstreams and a gateway in front",
                          description="Start four demo upstreams on loopback and a gateway in "
                                      "front of them; Ctrl-C stops it.")
    demo.add_argument("--bind", metavar="HOST:PORT", default=DEFAULT_BIND,
                      help=f"address of the gateway (default: {DEFAULT_BIND})")
    demo.add_argument("--upstream-port", metavar="PORT", type=int,
                      help="first port of the four upstreams (users, orders, billing, "
                           "recommendations); default: 9001-9004 when free, else random; "
                           "0: random")

    check = sub.add_parser("check", help="validate a config file",
                           description="Validate a config: exit 0 and a summary, or exit 2 "
                                       "and one line per problem.")
    check.add_argument("path", help="the config file")

    bench.configure_parser(sub.add_parser("bench", help="parallel vs sequential benchmark"))

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "worker":
        if _check_quietly(args.config, need_endpoints=args.app is None) != 0:
            return 2
        from .jobs import worker as job_worker

        return job_worker.run(args.config, args.app)
    if args.command == "demo":
        return _demo(args)
    if args.command == "check":
        return _check(args.path)
    return bench.run(args)


def _default_config() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


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
        _require_content(config, served=False)
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
        config.bind = [DEFAULT_BIND]
        config.h11_max_incomplete_size = MAX_HEAD_BYTES  # as hypercorn.toml: 414/431 enveloped
    if sys.platform != "win32":
        config.worker_class = "uvloop"
    if bind:
        config.bind = [bind]
    if workers is not None:
        config.workers = workers
    return config


def hypercorn_settings(explicit: str | None, config_path: str) -> Path | None:
    """The Hypercorn settings file `gateway serve` uses, None if `explicit` does not exist.

    `--hypercorn-config` if given; else `hypercorn.toml` next to the config file, then in
    the working directory, then the copy shipped in the package (never Hypercorn's bare
    defaults, which would serve without an access log and with other timeouts).
    """
    if explicit is not None:
        return Path(explicit) if Path(explicit).is_file() else None
    for candidate in (Path(config_path).resolve().parent / DEFAULT_HYPERCORN,
                      Path.cwd() / DEFAULT_HYPERCORN):
        if candidate.is_file():
            return candidate
    return PACKAGED_HYPERCORN


def _serve(args: argparse.Namespace) -> int:
    if _check_quietly(args.config) != 0:
        return 2
    from .listen import probe
    from .reload import WATCH_ENV
    from .supervisor import serve

    settings = hypercorn_settings(args.hypercorn_config, args.config)
    if settings is None:
        print(f"gateway: Hypercorn settings file {args.hypercorn_config} not found",
              file=sys.stderr)
        return 2
    config = hypercorn_config(str(settings), args.bind, args.workers)
    config.application_path = "gateway.asgi:app"
    try:
        probe(config)
    except BindError as exc:
        print(f"gateway: {exc}; pass --bind HOST:PORT (or change bind in {_shown(settings)})",
              file=sys.stderr)
        return 2
    os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    if args.watch:
        os.environ[WATCH_ENV] = "1"
    return serve(config, f"gateway serve: {args.config}, Hypercorn settings from "  # logged
                 f"{_shown(settings)}: bind {', '.join(config.bind)}, "
                 f"workers {max(config.workers, 1)}")  # SIGHUP reloads the config


def _shown(path: Path) -> str:
    """A path as short as it can be told: relative to the working directory, or absolute."""
    if path == PACKAGED_HYPERCORN:
        return f"{path} (the package's default)"
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def _check_quietly(path: str, need_endpoints: bool = True) -> int:
    from .config import load_config
    from .plan import compile_plans

    if not Path(path).exists():
        print(f"gateway: config file {path} not found; pass --config PATH or set {CONFIG_ENV}",
              file=sys.stderr)
        return 2
    try:
        config = load_config(path)
        compile_plans(config)
        _require_content(config, served=need_endpoints)
    except ConfigError as exc:
        print(f"gateway: refusing to start, {path} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    return 0


def _require_content(config: Any, served: bool) -> None:
    """Refuse a file that would serve nothing but 404s: almost always the wrong (or an empty) file.

    `served`: the file alone is served (`gateway serve`), so it needs endpoints; otherwise
    upstreams alone are fine (code-defined endpoints on a `Gateway` use them).
    """
    if config.endpoints or (config.upstreams and not served):
        return
    what = "no [[endpoints]]" if config.upstreams else "no [[endpoints]] and no [upstreams]"
    raise ConfigError([f"endpoints: the file defines {what}, so the gateway would serve "
                       "nothing"])


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - platforms without uvloop
        runner = asyncio.run
    config = hypercorn_config(None, args.bind)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            runner(run_demo(config, args.upstream_port))
    except BindError as exc:
        hint = ("pass --upstream-port PORT, 0 for random ports" if exc.what == "upstreams"
                else "pass --bind HOST:PORT (make run BIND=HOST:PORT)")
        print(f"gateway: {exc}; {hint}", file=sys.stderr)
        return 2
    return 0

