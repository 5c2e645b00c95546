"""SPEC section 2's entry points: `create_app`'s three config forms, `gateway.asgi:app`'s
default config file, and `gateway bench --config` end to end against real upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest
from quart import Quart
from support import REPO, UpstreamFactory, call, endpoint, free_port, make_config, reply, to_toml

from gateway import Gateway, create_app, load_config
from gateway.jobs.worker import load_gateway
from gateway.serving import gateway_of


async def test_create_app_takes_a_path_a_dict_or_a_config(
    upstream: UpstreamFactory, tmp_path: Path
) -> None:
    users = await upstream(reply({"id": 7}))
    config = make_config({"users": users}, endpoint("/u/<int:uid>",
                                                    call("user", "users", "/users/{uid}")))
    path = to_toml(config, tmp_path / "gw.toml")
    parsed = await asyncio.to_thread(load_config, path)
    for source in (str(path), path, config, parsed):
        app = await asyncio.to_thread(create_app, source)  # start-up work: off the loop
        async with app.test_app() as test_app:
            response = await test_app.test_client().get("/u/7")
            assert response.status_code == 200, source
            assert (await response.get_json())["data"] == {"user": {"id": 7}}
    assert users.requests == 4


def test_the_gateway_behind_an_app_is_found_from_the_app_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway worker --app module:app` and the server's shutdown hook get the `Gateway`
    from its Quart app (Hypercorn may wrap it); any other object is refused or ignored."""
    config = make_config({"up": "http://127.0.0.1:1"}, endpoint("/e", call("c", "up", "/x")))
    path = to_toml(config, tmp_path / "gw.toml")
    (tmp_path / "probe_app.py").write_text(
        f"from gateway import Gateway\ngw = Gateway({str(path)!r})\napp = gw.app\n"
        "other = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        gw = load_gateway(str(path), "probe_app:app")
        assert isinstance(gw, Gateway)
        assert load_gateway(str(path), "probe_app:gw") is gw
        assert load_gateway(str(path), "probe_app") is gw  # the attribute defaults to gw
        with pytest.raises(TypeError, match=r"is not a gateway\.Gateway"):
            load_gateway(str(path), "probe_app:other")
    finally:
        sys.modules.pop("probe_app", None)
    assert gateway_of(gw.app) is gw

    class Wrapped:  # what Hypercorn's wrappers look like: the app on `.app`
        app = gw.app

    assert gateway_of(Wrapped()) is gw
    assert gateway_of(Quart("plain")) is None


async def _wait_ready(url: str, process: asyncio.subprocess.Process) -> None:
    give_up = time.monotonic() + 20
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < give_up and process.returncode is None:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("the server did not come up")


async def test_asgi_app_reads_gateway_toml_from_the_working_directory(
    upstream: UpstreamFactory, tmp_path: Path
) -> None:
    users = await upstream(reply({"id": 3}))
    to_toml(make_config({"users": users}, endpoint("/u/<int:uid>",
                                                   call("user", "users", "/users/{uid}"))),
            tmp_path / "gateway.toml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "gateway.asgi:app",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url, process)
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(url + "/u/3")
        assert response.status_code == 200
        assert response.json()["data"] == {"user": {"id": 3}}
    finally:
        process.terminate()
        await process.wait()


async def test_gateway_bench_config_measures_both_strategies(
    upstream: UpstreamFactory, tmp_path: Path
) -> None:
    a = await upstream(reply({"a": 1}, delay=0.03))
    b = await upstream(reply({"b": 1}, delay=0.06))
    c = await upstream(reply({"c": 1}, delay=0.09))
    config = to_toml(make_config(
        {"a": a, "b": b, "c": c},
        endpoint("/fan", call("a", "a", "/a"), call("b", "b", "/b"), call("c", "c", "/c"))),
        tmp_path / "bench.toml")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "bench", "--config", str(config), "/fan",
        "--requests", "12", "--concurrency", "3", "--warmup", "2", "--json",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    report = json.loads(out)
    parallel, sequential = report["strategies"]["parallel"], report["strategies"]["sequential"]
    assert (parallel["errors"], sequential["errors"]) == (0, 0)
    assert parallel["p50_ms"] < sequential["p50_ms"]
    assert 1.7 < report["speedup"]["ideal"] < 2.3  # (30 + 60 + 90) / 90
    assert report["speedup"]["measured"] > 1.4
