"""The dashboard at a desktop (1400 px) and a phone (420 px) width, in a real headless Chromium.

One gateway (Hypercorn, one worker, real upstreams on loopback) and one browser serve
the whole module; each test opens its own page at its width. What is checked is what
a user saw go wrong: axis labels drawn over each other, call and upstream names cut
off, a failed run leaving another endpoint's result under the form, the row button
that did not run, what a grey chip means, and Compare's speedup (the cache warmed by
the first run made the second faster, shown as a green "0.41x").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio
from support import (
    CHROMIUM_ARGS,
    REPO,
    RecordingServer,
    call,
    chromium_or_skip,
    endpoint,
    free_port,
    make_config,
    reply,
    to_toml,
)
from webserver import Handler, Request, Response, json_response

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.asyncio(loop_scope="module")

WIDTHS = [pytest.param(1400, id="1400px"), pytest.param(420, id="420px")]
WAIT_MS = 10_000
DASH = "GET /dash/<int:uid>"
PROFILE = "GET /profile/<int:uid>"
WIDE = "GET /wide/<int:uid>"
CONTENDED = "GET /contended"


def contended(alone: float, crowded: float) -> Handler:
    """An upstream that does one thing at a time well: `alone` seconds when it is the
    only request in flight, `crowded` when another one is (a lock, a rate limit), so
    fanning out to it is slower than calling it one request after another."""
    in_flight = 0

    async def handle(request: Request) -> Response:
        nonlocal in_flight
        in_flight += 1
        try:
            await asyncio.sleep(alone if in_flight == 1 else crowded)
            return json_response({"ok": True})
        finally:
            in_flight -= 1

    return handle


@dataclass
class Site:
    url: str
    browser: Browser
    servers: dict[str, RecordingServer]
    runs: list[dict[str, Any]] = field(default_factory=list)  # api/run answers, as read
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright

    handlers: dict[str, Handler] = {
        "users": reply({"id": 7, "account_id": 70}, delay=0.03),
        "recommendations": reply({"items": ["lamp"]}, delay=0.05),
        "billing": reply({"balance": 1}, delay=0.02),
        # Wide margins, so that a busy machine cannot turn a verdict around: parallel
        # /wide takes ~0.25 s against ~0.75 s, parallel /contended ~1 s against ~0.15 s.
        "wide": reply({"part": True}, delay=0.25),
        "slowpoke": contended(0.05, 1.0),
    }
    servers = {name: RecordingServer(handler) for name, handler in handlers.items()}
    for server in servers.values():
        await server.start()
    config = make_config(
        {"users": {"url": servers["users"], "cache_ttl": 300},
         "recommendations": {"url": servers["recommendations"], "cache_ttl": 300},
         "billing": servers["billing"],
         "wide": {"url": servers["wide"], "cache_ttl": 300},
         "slowpoke": {"url": servers["slowpoke"], "max_connections": 4}},
        endpoint("/dash/<int:uid>",
                 call("user", "users", "/users/{uid}"),
                 call("recommendations", "recommendations", "/recs/{uid}", optional=True,
                      default={"items": []}),
                 call("account", "billing", "/accounts/{user.account_id}")),
        endpoint("/profile/<int:uid>", call("user", "users", "/users/{uid}")),
        endpoint("/team/<int:a>/<int:b>", call("first", "users", "/users/{a}"),
                 call("second", "users", "/users/{b}")),
        endpoint("/wide/<int:uid>", *(call(f"part_{n}", "wide", f"/part/{n}/{{uid}}")
                                      for n in range(3))),
        endpoint("/contended", *(call(f"part_{n}", "slowpoke", f"/part/{n}") for n in range(3))),
    )
    folder = tmp_path_factory.mktemp("ui")
    path = to_toml(config, folder / "gateway.toml")
    port = free_port()
    with (folder / "gateway.log").open("wb") as log:  # the child writes it, not the loop
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(path),
            "--bind", f"127.0.0.1:{port}", "--workers", "1",  # one process: one recent ring
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(url, process, folder / "gateway.log")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                yield Site(url, browser, servers)
            finally:
                await browser.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
        for server in servers.values():
            await server.close()


async def _wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    give_up = time.monotonic() + 30  # a busy machine starts a Python process slowly
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < give_up and process.returncode is None:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    output = await asyncio.to_thread(log.read_text, errors="replace")
    pytest.fail(f"the gateway on {url} never answered /healthz:\n{output}")


@contextlib.asynccontextmanager
async def dashboard(site: Site, width: int) -> AsyncIterator[Page]:
    """The page at `width`, loaded; fails the test on any console error or failed load."""
    page = await site.browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    async def keep(response: Any) -> None:
        if response.url.endswith("/api/run") and response.ok:
            answer = await response.json()
            async with site.arrived:
                site.runs.append(answer)
                site.arrived.notify_all()

    page.on("response", keep)
    try:
        await page.goto(site.url + "/_gateway/", wait_until="load")
        await page.wait_for_selector("#endpoints tbody tr", timeout=WAIT_MS)
        yield page
    finally:
        await page.close()
    # A failed /api/run (the bad user id test) is a 400 the page reports; nothing else.
    assert [p for p in problems if "status of 400" not in p] == []


async def compare(site: Site, page: Page, route: str, **params: str) -> dict[str, Any]:
    """Run Compare; its two api/run answers by strategy (once both have been read)."""
    before = len(site.runs)
    await page.select_option("#run-endpoint", label=route)
    for name, value in params.items():
        await page.fill(f'[data-param="{name}"]', value)
    await page.click("#compare-button")
    await page.locator("#run-waterfalls .entry").nth(1).wait_for(timeout=WAIT_MS)
    return {run["entry"]["strategy"]: run for run in await runs_since(site, before, 2)}


async def runs_since(site: Site, before: int, count: int) -> list[dict[str, Any]]:
    """The api/run answers after the first `before`, once `count` of them have been read
    (the response handler reads each body as it comes, maybe after the page drew it)."""
    async with site.arrived:
        await asyncio.wait_for(
            site.arrived.wait_for(lambda: len(site.runs) >= before + count), WAIT_MS / 1000)
    assert len(site.runs) == before + count
    return site.runs[before:]


async def filled_dashboard(site: Site, page: Page) -> None:
    """A compare shown and a few requests listed, so there are waterfalls to measure."""
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        for path in ("/profile/7", "/dash/7"):
            assert (await client.get(site.url + path)).status_code == 200
    await compare(site, page, DASH, uid="7")
    await page.locator("#recent .entry").nth(3).wait_for(timeout=WAIT_MS)


@pytest.mark.parametrize("width", WIDTHS)
async def test_waterfalls_fit_the_width_without_overlapping_or_cut_labels(
    site: Site, width: int
) -> None:
    async with dashboard(site, width) as page:
        await filled_dashboard(site, page)
        axes: list[dict[str, Any]] = await page.evaluate("""() =>
            [...document.querySelectorAll('.wf-axis')].map((axis) => ({
              box: axis.getBoundingClientRect().toJSON(),
              ticks: [...axis.querySelectorAll('.wf-tick')]
                .filter((t) => getComputedStyle(t).visibility !== 'hidden')
                .map((t) => ({text: t.textContent, ...t.getBoundingClientRect().toJSON()})),
            }))""")
        assert len(axes) >= 4
        for axis in axes:
            ticks, box = axis["ticks"], axis["box"]
            assert len(ticks) >= 2, f"an axis kept fewer than 2 labels at {width} px: {axis}"
            for left, right in itertools.pairwise(ticks):
                assert left["right"] <= right["left"], (
                    f"axis labels {left['text']!r} and {right['text']!r} overlap")
            assert ticks[0]["left"] >= box["left"] - 0.5
            assert ticks[-1]["right"] <= box["right"] + 0.5

        # Cut = the text is wider than its box, or the box sticks out of its card or the page.
        cut: list[str] = await page.evaluate("""() => {
            const names = '.wf-name, .wf-upstream, #upstreams .strong, #endpoints .chip';
            const out = [];
            for (const node of document.querySelectorAll(names)) {
              const box = node.getBoundingClientRect();
              const card = node.closest('.entry, .card').getBoundingClientRect();
              if (node.scrollWidth > node.clientWidth + 1 || box.width === 0
                  || box.left < card.left - 0.5 || box.right > card.right + 0.5
                  || box.right > document.documentElement.clientWidth) {
                out.push(node.className + ': ' + node.textContent);
              }
            }
            return out;
        }""")
        assert cut == []
        names = await page.locator("#run-waterfalls .wf-upstream").all_text_contents()
        assert "recommendations" in names
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow} px at {width} px"


@pytest.mark.parametrize("width", WIDTHS)
async def test_a_visible_legend_says_what_a_grey_chip_means(site: Site, width: int) -> None:
    async with dashboard(site, width) as page:
        legend = page.locator("#chip-legend")
        assert await legend.is_visible()
        box = await legend.bounding_box()
        assert box is not None
        assert box["x"] + box["width"] <= width
        sample = legend.locator(".chip-optional")
        assert await sample.is_visible()
        assert "optional" in str(await legend.text_content())
        # The sample looks like the chips it explains.
        style = "(n) => getComputedStyle(n).borderTopStyle"
        optional_chip = page.locator("#endpoints tbody .chip-optional", has_text="recommendations")
        assert await sample.evaluate(style) == await optional_chip.evaluate(style) == "dashed"


@pytest.mark.parametrize("width", WIDTHS)
async def test_row_run_button_runs_its_endpoint(site: Site, width: int) -> None:
    async with dashboard(site, width) as page:
        row = page.locator("#endpoints tbody tr", has_text="/profile/")
        before = len(site.runs)
        await row.get_by_role("button", name="Run").click()
        result = page.locator("#run-waterfalls .entry")
        await result.first.wait_for(timeout=WAIT_MS)
        assert await result.count() == 1
        assert await result.locator(".path").text_content() == "/profile/7"
        selected = await page.eval_on_selector(
            "#run-endpoint", "(s) => s.options[s.selectedIndex].text")
        assert selected == PROFILE
        [profile] = await runs_since(site, before, 1)
        assert profile["entry"]["path"] == "/profile/7"
        assert await page.locator("#error").is_hidden()
        # Numbers that are not ids get 1, 2, ...: the row's button needs no typing either.
        await page.locator("#endpoints tbody tr", has_text="/team/").get_by_role(
            "button", name="Run").click()
        await result.locator(".path", has_text="/team/1/2").wait_for(timeout=WAIT_MS)
        [team] = await runs_since(site, before + 1, 1)
        assert (team["entry"]["path"], team["status"]) == ("/team/1/2", 200)
        assert [c["name"] for c in team["entry"]["calls"]] == ["first", "second"]


@pytest.mark.parametrize("width", WIDTHS)
async def test_a_failed_run_clears_the_result_of_another_endpoint(
    site: Site, width: int
) -> None:
    async with dashboard(site, width) as page:
        await page.locator("#endpoints tbody tr", has_text="/profile/").get_by_role(
            "button", name="Run").click()
        await page.locator("#run-waterfalls .entry").first.wait_for(timeout=WAIT_MS)
        await page.select_option("#run-endpoint", label=DASH)
        await page.fill('[data-param="uid"]', "abc")
        await page.click("#run-button")
        banner = page.locator("#error")
        await banner.wait_for(state="visible", timeout=WAIT_MS)
        text = str(await banner.text_content())
        assert "no endpoint for GET /dash/abc" in text
        assert "/dash/<int:uid>" in text  # the hint: what the route accepts
        assert await page.locator("#run-output").is_hidden()
        assert await page.locator("#run-waterfalls .entry").count() == 0
        assert await page.locator("#compare-summary .stat").count() == 0


def _cached_flags(answer: dict[str, Any]) -> list[bool]:
    return [c["cached"] for c in answer["entry"]["calls"]]


@pytest.mark.parametrize("width", WIDTHS)
async def test_compare_bypasses_the_cache_and_colours_the_speedup_honestly(
    site: Site, width: int
) -> None:
    # Three independent calls, all cached: with the cache, both runs would take ~0 ms.
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        assert (await client.get(site.url + "/wide/8")).status_code == 200  # warms the cache
        again = (await client.get(site.url + "/wide/8")).json()
        assert {c["cached"] for c in again["meta"]["calls"].values()} == {True}
    wide = site.servers["wide"]
    async with dashboard(site, width) as page:
        seen = wide.requests
        runs = await compare(site, page, WIDE, uid="8")
        assert set(runs) == {"parallel", "sequential"}
        parallel, sequential = runs["parallel"], runs["sequential"]
        # Both runs past the cache: same flags, and each call reached its upstream.
        assert parallel["cache"] is sequential["cache"] is False
        assert _cached_flags(parallel) == _cached_flags(sequential) == [False, False, False]
        assert wide.requests == seen + 6
        assert await page.locator("#run-waterfalls .wf-bar.cached").count() == 0
        assert await page.locator("#compare-note").is_visible()
        assert "bypass the reply cache" in str(await page.locator("#compare-note").text_content())
        speedup = page.locator("#speedup")
        assert float(str(await speedup.locator(".stat-value").text_content()).rstrip("\u00d7")) > 1
        assert "speedup-faster" in str(await speedup.get_attribute("class"))
        faster_colour = await speedup.evaluate("(n) => getComputedStyle(n).backgroundColor")

        # An upstream that is slower when asked twice at once: parallel loses, and says so.
        runs = await compare(site, page, CONTENDED)
        parallel, sequential = runs["parallel"], runs["sequential"]
        assert parallel["entry"]["total_ms"] > sequential["entry"]["total_ms"]
        value = str(await speedup.locator(".stat-value").text_content())
        assert float(value.rstrip("\u00d7")) < 1
        kinds = str(await speedup.get_attribute("class"))
        assert "speedup-slower" in kinds
        assert "speedup-faster" not in kinds
        assert "slower" in str(await speedup.locator(".stat-label").text_content())
        assert await speedup.evaluate("(n) => getComputedStyle(n).backgroundColor") != (
            faster_colour)
        assert await page.locator("#compare-summary .stat-lost").is_visible()


async def test_screenshot_script_starts_the_demo_and_writes_a_png(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    out = tmp_path / "dashboard.png"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "dashboard_png.py"), "--out", str(out),
        "--width", "420", "--chromium", chromium,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 50)
    assert process.returncode == 0, output.decode(errors="replace")
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 420  # the IHDR width: the phone layout fits
