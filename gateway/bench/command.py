"""`gateway bench` on the command line: its arguments, the progress line on a terminal,
and the exit codes (0 measured, 1 nothing could be measured, 2 bad usage)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import urlsplit

from .load import Progress, bench_url
from .spawn import _GatewayStartError, free_port, serve_argv, spawned
from .stats import BenchReport, format_report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `gateway bench` arguments to `parser` (the CLI owns the subcommand itself)."""
    parser.add_argument(
        "route", metavar="ROUTE", type=_route, help="path to run, e.g. /dashboard/7"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--config", metavar="PATH", help="start a gateway with this config for the run"
    )
    target.add_argument(
        "--url", type=_base_url, help="a running gateway, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument(
        "--requests", type=_count(1), default=200, metavar="N",
        help="measured requests per strategy (default 200)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_count(1), default=10, metavar="C",
        help="requests in flight at once (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=_count(0), default=10, metavar="N",
        help="uncounted requests per strategy before measuring (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="SECONDS",
        help="per-request timeout (default 30)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Exit code: 0 measured, 1 every request failed or the gateway would not start, 2 bad usage."""
    if args.config is not None and not os.path.isfile(args.config):
        print(f"gateway bench: config file not found: {args.config}", file=sys.stderr)
        return 2
    progress = _TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        report = asyncio.run(_bench(args, progress))
    except _GatewayStartError as exc:
        print(f"gateway bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.clear()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    if report.all_failed:
        hint = ""
        if args.config is not None:
            hint = ("; the config's upstreams must be running (examples/gateway.toml's are the "
                    "demo's: `make run` in another shell)")
        print(f"gateway bench: every request failed{hint}", file=sys.stderr)
        return 1
    return 0


async def _bench(args: argparse.Namespace, progress: Progress | None) -> BenchReport:
    options: dict[str, Any] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "request_timeout": args.timeout,
        "progress": progress,
    }
    if args.url is not None:
        return await bench_url(args.url, args.route, **options)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with spawned(serve_argv(args.config, port), url):
        return await bench_url(url, args.route, **options)


class _TerminalProgress:
    """Redraws one status line in place; used only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = False

    def __call__(self, line: str) -> None:
        self._stream.write(f"\r{line}\x1b[K")
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _route(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(f"route must start with '/': {value!r}")
    return value


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {value!r}")
    return value.rstrip("/")


def _count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number
