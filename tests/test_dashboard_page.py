"""The dashboard page in a real headless Chromium, against a gateway served by Hypercorn.

Needs Debian's `chromium` and the `playwright` package (its driver only: no browser is
downloaded). Skipped with a reason when either is missing, except under CI=true, where a
missing browser is a failure. The run leaves a screenshot in artifacts/dashboard.png.
Layout and controls at a desktop and a phone width: test_dashboard_ui.py.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest
from support import (
    CHROMIUM_ARGS,
    REPO,
    HypercornFactory,
    UpstreamFactory,
    call,
    chromium_or_skip,
    endpoint,
    make_config,
    reply,
)

ARTIFACT = REPO / "artifacts" / "dashboard.png"
WAIT_MS = 10_000


@pytest.fixture
def chromium_path() -> str:
    return chromium_or_skip()


async def test_dashboard_draws_waterfalls_and_compares_strategies(
    chromium_path: str, upstream: UpstreamFactory, hypercorn_server: HypercornFactory,
    http: httpx.AsyncClient,
) -> None:
    from playwright.async_api import async_playwright

    users = await upstream(reply({"id": 7, "name": "Ada", "account_id": 70}, delay=0.06))
    orders = await upstream(reply([{"id": 1, "total": 30.5}], delay=0.09))
    recs = await upstream(reply({"items": ["lamp"]}, delay=0.11))
    billing = await upstream(reply({"balance": 12.5}, delay=0.04))
    server = await hypercorn_server(make_config(
        {"users": users, "orders": orders, "recommendations": recs, "billing": billing},
        endpoint("/dashboard/<int:user_id>",
                 call("user", "users", "/users/{user_id}"),
                 call("orders", "orders", "/orders", query={"user": "{user_id}"},
                      optional=True, default=[]),
                 call("recommendations", "recommendations", "/recs/{user_id}", optional=True),
                 call("account", "billing", "/accounts/{user.account_id}")),
        endpoint("/profile/<int:user_id>", call("user", "users", "/users/{user_id}")),
    ), command=[sys.executable, "-m", "gateway", "serve", "--config", "{config}",  # one ring
                "--bind", "127.0.0.1:{port}", "--workers", "1"])

    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            await page.goto(server.url + "/_gateway/", wait_until="load")
            await page.wait_for_selector("#endpoints tbody tr", timeout=WAIT_MS)
            assert await page.locator("#endpoints tbody tr").count() == 2
            assert await page.locator("#upstreams tbody tr").count() == 4
            await page.wait_for_selector(".live-on", timeout=WAIT_MS)

            # A request made with an HTTP client shows up as a waterfall, one bar per call.
            response = await http.get(server.url + "/dashboard/7")
            assert response.status_code == 200
            path = page.locator(".path", has_text="/dashboard/7")
            entry = page.locator("#recent .entry", has=path)
            await entry.first.wait_for(timeout=WAIT_MS)
            assert await entry.count() == 1
            bars = entry.locator(".wf-bar")
            assert await bars.count() == 4
            names = await entry.locator(".wf-name").all_text_contents()
            assert names == ["user", "orders", "recommendations", "account"]
            assert await entry.locator(".wf-bar.critical").count() >= 1

            # Compare: two waterfalls side by side, the parallel one finishes first.
            await page.select_option("#run-endpoint", label="GET /dashboard/<int:user_id>")
            await page.fill('[data-param="user_id"]', "7")
            await page.click("#compare-button")
            runs = page.locator("#run-waterfalls .entry")
            await runs.nth(1).wait_for(timeout=WAIT_MS)
            assert await runs.count() == 2
            totals: dict[str, Any] = {}
            for i in range(2):
                run = runs.nth(i)
                totals[str(await run.get_attribute("data-strategy"))] = float(
                    str(await run.get_attribute("data-total-ms")))
                assert await run.locator(".wf-bar").count() == 4
            assert set(totals) == {"parallel", "sequential"}
            assert totals["parallel"] < totals["sequential"]
            speedup = await page.locator("#speedup .stat-value").text_content()
            assert speedup is not None
            assert float(speedup.rstrip("\u00d7")) > 1.0

            ARTIFACT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACT), full_page=True)
        finally:
            await browser.close()
    assert problems == []
