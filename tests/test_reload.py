"""Config reload: SIGHUP (or the file watch) swaps a valid config in, refuses a broken one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    GatewayClientFactory,
    HypercornFactory,
    LiveServer,
    RecordingServer,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
    to_toml,
)

from gateway import Gateway
from gateway import reload as reload_module
from gateway.reload import Reloader

BROKEN = make_config({"up": "http://127.0.0.1:1"}, endpoint("/r", call("c", "nowhere", "/x")))


def reloader_of(gw: Gateway) -> Reloader:
    found = gw.reloader
    assert isinstance(found, Reloader)
    return found


async def served(client: Any, path: str) -> tuple[int, Any]:
    response = await client.get(path)
    return response.status_code, (await response.get_json())["data"]


# -- in process: the reload function ----------------------------------------------------------


async def test_a_valid_config_takes_over_and_keeps_unchanged_upstreams(
    tmp_path: Path, upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream(reply({"from": "a"}))
    b = await upstream(reply({"from": "b"}))
    path = to_toml(make_config({"a": a, "b": b}, endpoint("/old", call("c", "a", "/x"))),
                   tmp_path / "gateway.toml")
    gw = Gateway(path)
    client = await gateway_client(gw)
    assert gw.runtime is not None
    kept, replaced = gw.runtime.upstreams["a"], gw.runtime.upstreams["b"]
    assert await served(client, "/old") == (200, {"c": {"from": "a"}})

    to_toml(make_config({"a": a, "b": {"url": b, "timeout": 2.5}},
                        endpoint("/new", call("c", "b", "/x"))), path)
    assert await reloader_of(gw).reload() is True
    assert await served(client, "/new") == (200, {"c": {"from": "b"}})
    assert (await client.get("/old")).status_code == 404
    assert gw.runtime.upstreams["a"] is kept  # same client, breaker and cache
    assert gw.runtime.upstreams["b"] is not replaced
    assert gw.runtime.upstreams["b"].timeout == 2.5
    await asyncio.sleep(0.05)
    assert replaced._client is None  # idle, so closed at once


async def test_a_broken_config_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    a = await upstream(reply({"from": "a"}))
    path = to_toml(make_config({"a": a}, endpoint("/r", call("c", "a", "/x"))),
                   tmp_path / "gateway.toml")
    gw = Gateway(path)
    client = await gateway_client(gw)
    to_toml(BROKEN, path)
    with caplog.at_level(logging.ERROR, logger="gateway"):
        assert await reloader_of(gw).reload() is False
    assert "endpoints[0].calls[0].upstream: unknown upstream 'nowhere'" in caplog.text
    assert "still serving the previous config" in caplog.text
    assert await served(client, "/r") == (200, {"c": {"from": "a"}})
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'gateway_config_reloads_total{result="refused"} 1.0' in metrics

    path.write_text("this is [not toml")
    assert await reloader_of(gw).reload() is False
    assert (await client.get("/r")).status_code == 200


async def test_a_request_in_flight_finishes_on_the_plan_it_started_with(
    tmp_path: Path, upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply({"from": "old"}, delay=0.3))
    fresh = await upstream(reply({"from": "new"}))
    path = to_toml(make_config({"old": slow}, endpoint("/r", call("c", "old", "/x"))),
                   tmp_path / "gateway.toml")
    gw = Gateway(path)
    client = await gateway_client(gw)
    assert gw.runtime is not None
    retired = gw.runtime.upstreams["old"]
    in_flight = asyncio.create_task(served(client, "/r"))
    await asyncio.sleep(0.1)
    to_toml(make_config({"new": fresh}, endpoint("/r", call("c", "new", "/x"))), path)
    assert await reloader_of(gw).reload() is True
    assert await served(client, "/r") == (200, {"c": {"from": "new"}})
    assert retired._client is not None  # still busy with the old request
    assert await in_flight == (200, {"c": {"from": "old"}})
    await asyncio.sleep(0.05)
    assert retired._client is None  # closed once idle


async def test_settings_that_need_a_restart_keep_their_running_values(
    tmp_path: Path, upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    a = await upstream(reply({}))
    config = make_config({"a": a}, endpoint("/r", call("c", "a", "/x")), deadline=3.0)
    path = to_toml(config, tmp_path / "gateway.toml")
    gw = Gateway(path)
    await gateway_client(gw)
    to_toml({**config, "jobs": {"max_running": 9},
             "gateway": {"deadline": 4.0, "dashboard": False}}, path)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        assert await reloader_of(gw).reload() is True
    assert "[jobs], gateway.dashboard need a restart" in caplog.text
    assert gw.config.gateway.deadline == 4.0
    assert (gw.config.jobs.max_running, gw.config.gateway.dashboard) == (4, True)


async def test_the_log_format_needs_a_restart(
    tmp_path: Path, upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    a = await upstream(reply({}))
    config = make_config({"a": a}, endpoint("/r", call("c", "a", "/x")))
    path = to_toml(config, tmp_path / "gateway.toml")
    gw = Gateway(path)
    await gateway_client(gw)
    to_toml({**config, "gateway": {"log_format": "json", "deadline": 4.0}}, path)
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert await reloader_of(gw).reload() is True
    assert "gateway.log_format need a restart" in caplog.text
    assert f"config reloaded from {path}: 1 endpoints, 1 upstreams" in caplog.text
    assert (gw.config.gateway.log_format, gw.config.gateway.deadline) == ("text", 4.0)


async def test_the_watch_reloads_when_the_file_changes(
    tmp_path: Path, upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(reload_module.WATCH_ENV, "1")
    monkeypatch.setattr(reload_module, "WATCH_INTERVAL", 0.05)
    a = await upstream(reply({"from": "a"}))
    path = to_toml(make_config({"a": a}, endpoint("/one", call("c", "a", "/x"))),
                   tmp_path / "gateway.toml")
    client = await gateway_client(Gateway(path))
    to_toml(make_config({"a": a}, endpoint("/two", call("c", "a", "/x"), method="GET")), path)
    give_up = time.monotonic() + 5
    while (await client.get("/two")).status_code != 200:
        assert time.monotonic() < give_up, "the watch did not reload"
        await asyncio.sleep(0.05)


async def test_a_dict_config_cannot_be_reloaded(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    a = await upstream(reply({}))
    gw = Gateway(make_config({"a": a}, endpoint("/r", call("c", "a", "/x"))))
    await gateway_client(gw)
    assert await reloader_of(gw).reload() is False


# -- a real SIGHUP to a real `gateway serve` --------------------------------------------------


async def wait_for(condition: Any, what: str, server: LiveServer) -> None:
    give_up = time.monotonic() + 10
    while not await condition():
        if time.monotonic() > give_up:
            pytest.fail(f"{what} did not happen:\n{server.output()}")
        await asyncio.sleep(0.05)


async def status_of(url: str) -> int:
    # A new connection each time, so that several workers all get asked.
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        with contextlib.suppress(httpx.TransportError):
            return (await client.get(url)).status_code
    return 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_a_running_server_and_refuses_a_broken_config(
    tmp_path: Path, upstream: UpstreamFactory, hypercorn_server: HypercornFactory,
    workers: int
) -> None:
    a: RecordingServer = await upstream(reply({"from": "a"}))
    path = to_toml(make_config({"a": a}, endpoint("/r", call("c", "a", "/x"))),
                   tmp_path / "gateway.toml")
    command = [sys.executable, "-m", "gateway", "serve", "--config", "{config}",
               "--bind", "127.0.0.1:{port}", "--workers", str(workers)]
    server = await hypercorn_server(path, command=command)

    async def all_up() -> bool:  # every worker has loaded the config before it changes
        return server.output().count("Running on") >= workers

    await wait_for(all_up, "the start of every worker", server)
    assert await status_of(server.url + "/r") == 200

    to_toml(BROKEN, path)
    os.kill(server.process.pid, signal.SIGHUP)

    async def refused() -> bool:
        return server.output().count("unknown upstream 'nowhere'") >= workers

    await wait_for(refused, "the refusal", server)
    assert server.process.returncode is None
    for _ in range(4):
        assert await status_of(server.url + "/r") == 200

    to_toml(make_config({"a": a}, endpoint("/r2", call("c", "a", "/x"))), path)
    os.kill(server.process.pid, signal.SIGHUP)

    async def reloaded() -> bool:
        codes = [await status_of(server.url + "/r2") for _ in range(4)]
        return codes == [200] * 4

    await wait_for(reloaded, "the reload", server)
    assert await status_of(server.url + "/r") == 404
    assert server.process.returncode is None
