"""The suite runs with blockbuster active (tests/conftest.py): this proves the detector bites."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from blockbuster import BlockingError
from support import GatewayClientFactory, UpstreamFactory, call, echo, endpoint, make_config

from gateway import Fan, Gateway
from gateway.config import load_config


async def test_a_blocking_call_while_handling_a_request_fails_it(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    up = await upstream(echo)
    gw = Gateway(make_config({"up": up}, endpoint("/x", call("x", "up"))))

    @gw.aggregate("/sleepy")
    async def sleepy(fan: Fan) -> dict[str, str]:
        time.sleep(0.001)  # noqa: ASYNC251 - exactly what must never happen on the loop
        return {}

    client = await gateway_client(gw)
    assert (await client.get("/x")).status_code == 200  # the ordinary path blocks nowhere
    response = await client.get("/sleepy")
    assert response.status_code == 500
    assert "BlockingError" in caplog.text
    assert "Blocking call to time.sleep" in caplog.text


async def test_reading_a_config_file_on_the_loop_is_caught_outside_start_up(
    tmp_path: Path
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[upstreams.up]\nurl = "http://127.0.0.1:9"\n'
                    '[[endpoints]]\nroute = "/x"\n'
                    '[[endpoints.calls]]\nname = "x"\nupstream = "up"\npath = "/"\n')
    Gateway(path)  # start-up: allowed
    with pytest.raises(BlockingError):
        load_config(path)  # the same read from a request handler would stall every request
