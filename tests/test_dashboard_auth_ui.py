"""The dashboard page behind `dashboard_auth = "key"`, in a real headless Chromium: it asks
for the key once, then every API call of the page carries it."""

from __future__ import annotations

from typing import Any

import pytest
from support import (
    CHROMIUM_ARGS,
    HypercornFactory,
    UpstreamFactory,
    call,
    chromium_or_skip,
    endpoint,
    make_config,
    reply,
)

KEY = "dashboard-key-0123456789"


@pytest.mark.parametrize("answer", [KEY, None])
async def test_the_page_asks_for_the_dashboard_key_once_and_then_loads(
        upstream: UpstreamFactory, hypercorn_server: HypercornFactory,
        answer: str | None) -> None:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright

    users = await upstream(reply({"id": 7}))
    server = await hypercorn_server(make_config(
        {"users": users}, endpoint("/u/<int:uid>", call("user", "users", "/users/{uid}")),
        dashboard_auth="key", dashboard_key=KEY))
    asked: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        asked.append(dialog.message)
        if answer is None:
            await dialog.dismiss()
        else:
            await dialog.accept(answer)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("dialog", on_dialog)
            await page.goto(server.url + "/_gateway/", wait_until="load")
            if answer is None:
                banner = page.locator("#error")
                await banner.wait_for(state="visible", timeout=10_000)
                assert "X-Dashboard-Key" in (await banner.text_content() or "")
                assert await page.locator("#endpoints tbody tr").count() == 0
            else:
                await page.wait_for_selector("#endpoints tbody tr", timeout=10_000)
                assert "/u/<int:uid>" in (await page.text_content("#endpoints") or "")
                await page.reload(wait_until="load")  # kept for the tab: not asked again
                await page.wait_for_selector("#endpoints tbody tr", timeout=10_000)
        finally:
            await browser.close()
    assert len(asked) == 1
    assert "X-Dashboard-Key" in asked[0]
