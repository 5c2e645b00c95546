"""Screenshot the dashboard of a live `gateway demo`: `make screenshot` writes docs/dashboard.png.

Starts `python -m gateway demo` on a free loopback port, sends a few requests so that
the recent-request waterfalls have something to show, runs Compare on /dashboard/7 in
Debian's chromium (driven by Playwright; no browser is ever downloaded) and saves the
whole page. The demo is stopped however the capture ends.

    python scripts/dashboard_png.py [--out docs/dashboard.png] [--width 1400]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--hide-scrollbars"]
# What the recent-request list shows, newest on top: every demo endpoint, one failure.
REQUESTS = ("/dashboard/0", "/team/1/2/3", "/summary/7", "/profile/7")
COMPARE_ROUTE = "GET /dashboard/<int:user_id>"
READY_SECONDS = 20.0
WAIT_MS = 15_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("dashboard_png: chromium is missing (apt-get install chromium)")


@contextlib.contextmanager
def demo() -> Iterator[str]:
    """A `gateway demo` subprocess; yields its base URL once /healthz answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise SystemExit(f"dashboard_png: the demo exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/healthz", timeout=1.0, trust_env=False).is_success:
                    break
            if time.monotonic() > give_up:
                raise SystemExit(f"dashboard_png: the demo did not answer on {base}")
            time.sleep(0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def capture(base: str, out: Path, width: int, chromium: str) -> None:
    """Fill the recent list, run Compare, save the full page as `out`."""
    from playwright.sync_api import sync_playwright

    with httpx.Client(base_url=base, trust_env=False, timeout=10.0) as client:
        for path in REQUESTS:
            client.get(path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900},
                                    device_scale_factor=1)
            page.goto(base + "/_gateway/", wait_until="load")
            page.wait_for_selector("#recent .entry", timeout=WAIT_MS)
            page.select_option("#run-endpoint", label=COMPARE_ROUTE)
            page.fill('[data-param="user_id"]', "7")
            page.click("#compare-button")
            page.locator("#run-waterfalls .entry").nth(1).wait_for(timeout=WAIT_MS)
            # The page polls every second: wait until the compare runs are listed too.
            page.locator("#recent .entry").nth(len(REQUESTS) + 1).wait_for(timeout=WAIT_MS)
            page.mouse.move(0, 0)  # no hover styles in the picture
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png",
                        help="where to write the PNG (default: docs/dashboard.png)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in px")
    parser.add_argument("--chromium", help="the browser binary (default: Debian's chromium)")
    args = parser.parse_args(argv)
    chromium = args.chromium or find_chromium()
    with demo() as base:
        capture(base, args.out, args.width, chromium)
    print(f"dashboard_png: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
