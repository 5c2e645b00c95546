"""gateway.config: TOML -> frozen dataclasses; every problem found at once, with its key path."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import (
    Batch,
    Breaker,
    Config,
    GatewaySettings,
    JobsSettings,
    WebsocketSettings,
    find_cycle,
    load_config,
    parse_config,
    route_params,
)
from gateway.errors import ConfigError
from gateway.plan import compile_plans

SPEC_TOML = """
[gateway]
strategy = "sequential"
timeout = 2.5
deadline = 8
max_request_bytes = 2048
max_upstream_bytes = 4096
cors_origins = ["http://localhost:5173"]
dashboard = false

[jobs]
store = "memory"
max_running = 2
max_queued = 0
ttl = 60

[upstreams.users]
url = "http://127.0.0.1:9001/api/"
timeout = 1.0
retries = 2
max_connections = 10
forward_headers = ["Authorization"]
headers = { "X-Api-Key" = "${USERS_API_KEY}" }
cache_ttl = 0
breaker = { failures = 3, reset = 12.5 }

[upstreams.orders]
url = "https://orders.internal:8443"
cache_ttl = 30

[upstreams.billing]
url = "http://127.0.0.1:9003"

[upstreams.people]
url = "http://127.0.0.1:9004"

[upstreams.people.batch]
path = "/users"
param = "ids"
key = "id"
max_size = 20
window_ms = 2

[[endpoints]]
route = "/dashboard/<int:user_id>"
method = "get"
combine = "examples.dashboard:combine"
strategy = "parallel"
deadline = 3.0

  [[endpoints.calls]]
  name = "user"
  upstream = "users"
  path = "/users/{user_id}"
  query = { verbose = "{query.verbose}", page = 2, full = true }
  select = ["id", "name", "account_id"]
  rename = { name = "full_name" }

  [[endpoints.calls]]
  name = "orders"
  upstream = "orders"
  path = "/orders"
  query = { user = "{user_id}" }
  optional = true
  default = []

  [[endpoints.calls]]
  name = "account"
  upstream = "billing"
  method = "POST"
  path = "/accounts/{user.account_id}"
  body = { owner = "{user.id}", note = "for {header.x-client}" }

  [[endpoints.calls]]
  name = "author"
  upstream = "people"
  batch_key = "{user.id}"
"""


def endpoint(*calls: dict[str, Any], route: str = "/x", **keys: Any) -> dict[str, Any]:
    return {"route": route, "calls": list(calls), **keys}


def call(name: str = "a", path: str | None = "/a", upstream: str = "u",
         **keys: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "upstream": upstream, **keys}
    if path is not None:
        out["path"] = path
    return out


def config(*endpoints: dict[str, Any], **top: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"upstreams": {"u": {"url": "http://127.0.0.1:9001"}}}
    raw["endpoints"] = list(endpoints) or [endpoint(call())]
    raw.update(top)
    return raw


def problems(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={} if env is None else env)
    return info.value.problems


def only_problem(raw: Any, env: dict[str, str] | None = None) -> str:
    found = problems(raw, env)
    assert len(found) == 1, found
    return found[0]


# -- defaults and the whole SPEC shape ---------------------------------------------------------


def test_empty_config_has_every_default() -> None:
    cfg = parse_config({}, env={})
    assert cfg.gateway == GatewaySettings(
        strategy="parallel", timeout=5.0, deadline=10.0, max_request_bytes=1048576,
        max_upstream_bytes=10485760, cors_origins=(), dashboard=True,
    )
    jobs = cfg.jobs
    assert (jobs.store, jobs.max_running, jobs.max_queued, jobs.ttl) == ("memory", 4, 4, 300.0)
    assert cfg.jobs == JobsSettings()
    assert dict(cfg.upstreams) == {}
    assert cfg.endpoints == ()
    assert cfg.source is None


def test_spec_example_parses_every_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(SPEC_TOML)
    cfg = load_config(path, env={"USERS_API_KEY": "s3cret"})
    assert cfg.source == str(path)
    assert cfg.gateway == GatewaySettings("sequential", 2.5, 8.0, 2048, 4096,
                                          ("http://localhost:5173",), False)
    assert (cfg.jobs.store, cfg.jobs.max_running, cfg.jobs.max_queued, cfg.jobs.ttl) == (
        "memory", 2, 0, 60.0)

    users = cfg.upstreams["users"]
    assert users.url == "http://127.0.0.1:9001/api"  # trailing slash dropped, base path kept
    assert (users.timeout, users.retries, users.max_connections) == (1.0, 2, 10)
    assert users.forward_headers == ("authorization",)
    assert users.headers == (("x-api-key", "s3cret"),)
    assert users.cache_ttl == 0.0
    assert users.breaker == Breaker(failures=3, reset=12.5)
    assert users.batch is None

    orders = cfg.upstreams["orders"]
    assert orders.timeout == 2.5  # the gateway's timeout
    assert (orders.retries, orders.max_connections, orders.cache_ttl) == (0, 100, 30.0)
    assert orders.breaker is None
    assert cfg.upstreams["people"].batch == Batch("/users", "ids", "id", 20, 2.0)

    (ep,) = cfg.endpoints
    assert (ep.route, ep.method, ep.combine) == ("/dashboard/<int:user_id>", "GET",
                                                 "examples.dashboard:combine")
    assert (ep.strategy, ep.deadline) == ("parallel", 3.0)
    user, orders_call, account, author = ep.calls
    assert user.query == (("verbose", "{query.verbose}"), ("page", "2"), ("full", "true"))
    assert user.select == ("id", "name", "account_id")
    assert user.rename == (("name", "full_name"),)
    assert (user.method, user.optional, user.has_body) == ("GET", False, False)
    assert (orders_call.optional, orders_call.default) == (True, [])
    assert account.method == "POST"
    assert account.has_body
    assert account.body == {"owner": "{user.id}", "note": "for {header.x-client}"}
    assert (author.batch_key, author.path) == ("{user.id}", None)


def test_numbers_in_seconds_accept_integers_and_become_floats() -> None:
    cfg = parse_config({"gateway": {"timeout": 3, "deadline": 7}, "jobs": {"ttl": 9}}, env={})
    assert isinstance(cfg.gateway.timeout, float)
    assert (cfg.gateway.timeout, cfg.gateway.deadline, cfg.jobs.ttl) == (3.0, 7.0, 9.0)


def test_breaker_table_fills_its_defaults() -> None:
    raw = config(upstreams={"u": {"url": "http://h", "breaker": {}}})
    assert parse_config(raw, env={}).upstreams["u"].breaker == Breaker(failures=5, reset=30.0)


def test_batch_table_fills_its_defaults() -> None:
    raw = config(upstreams={"u": {"url": "http://h",
                                  "batch": {"path": "/b", "param": "ids", "key": "id"}}})
    batch = parse_config(raw, env={}).upstreams["u"].batch
    assert batch == Batch(path="/b", param="ids", key="id", max_size=50, window_ms=5.0)


def test_batch_max_wait_ms_is_at_least_the_window() -> None:
    def batch(**keys: Any) -> dict[str, Any]:
        return config(upstreams={"u": {"url": "http://h", "batch": {
            "path": "/b", "param": "ids", "key": "id", **keys}}})

    parsed = parse_config(batch(window_ms=5, max_wait_ms=40), env={}).upstreams["u"].batch
    assert parsed is not None
    assert parsed.max_wait_ms == 40.0
    assert problems(batch(window_ms=5, max_wait_ms=2)) == [
        "upstreams.u.batch.max_wait_ms: must be >= window_ms (5)"]
    assert problems(batch(max_wait_ms="x")) == [
        "upstreams.u.batch.max_wait_ms: must be a number, not a string"]


def test_config_is_frozen() -> None:
    cfg = parse_config(config(), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gateway.timeout = 1.0  # type: ignore[misc]


def test_load_config_passes_a_config_through_and_accepts_a_dict() -> None:
    cfg = load_config(config(), env={})
    assert load_config(cfg) is cfg
    assert cfg.endpoints[0].calls[0].name == "a"


def test_load_config_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_KEY", "from-env")
    raw = config(upstreams={"u": {"url": "http://h", "headers": {"k": "${GW_TEST_KEY}"}}})
    assert load_config(raw).upstreams["u"].headers == (("k", "from-env"),)


# -- unknown keys and wrong types --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where", "hint"),
    [
        ({"extra": 1}, "extra", ""),
        ({"gateway": {"timeuot": 1}}, "gateway.timeuot", "; did you mean 'timeout'?"),
        ({"jobs": {"stor": "memory"}}, "jobs.stor", "; did you mean 'store'?"),
        ({"upstreams": {"u": {"url": "http://h", "retry": 1}}}, "upstreams.u.retry",
         "; did you mean 'retries'?"),
        ({"upstreams": {"u": {"url": "http://h", "breaker": {"fails": 1}}}},
         "upstreams.u.breaker.fails", "; did you mean 'failures'?"),
        ({"upstreams": {"u": {"url": "http://h",
                              "batch": {"path": "/b", "param": "p", "key": "k", "size": 1}}}},
         "upstreams.u.batch.size", "; did you mean 'max_size'?"),
        ({"endpoints": [endpoint(call(), rout="/y")]}, "endpoints[0].rout",
         "; did you mean 'route'?"),
        ({"endpoints": [endpoint(call(selekt=["a"]))]}, "endpoints[0].calls[0].selekt",
         "; did you mean 'select'?"),
    ],
)
def test_unknown_keys_are_reported_at_every_level(raw: dict[str, Any], where: str,
                                                  hint: str) -> None:
    """The closest known key is suggested (issue 12: `gateway.timout` said only "unknown")."""
    assert only_problem(config(**raw)) == f"{where}: unknown key{hint}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"gateway": {"timeout": "5"}}, "gateway.timeout: must be a number, not a string"),
        ({"gateway": {"timeout": True}}, "gateway.timeout: must be a number, not a boolean"),
        ({"gateway": {"max_request_bytes": True}},
         "gateway.max_request_bytes: must be an integer, not a boolean"),
        ({"gateway": {"max_request_bytes": 1.5}},
         "gateway.max_request_bytes: must be an integer, not a number"),
        ({"gateway": {"dashboard": 1}}, "gateway.dashboard: must be a boolean, not an integer"),
        ({"gateway": {"strategy": 1}}, "gateway.strategy: must be a string, not an integer"),
        ({"gateway": {"cors_origins": "http://a"}},
         "gateway.cors_origins: must be a list of strings"),
        ({"gateway": []}, "gateway: must be a table, not an array"),
        ({"jobs": {"max_running": False}}, "jobs.max_running: must be an integer, not a boolean"),
        ({"upstreams": {"u": {"url": "http://h", "retries": True}}},
         "upstreams.u.retries: must be an integer, not a boolean"),
        ({"upstreams": {"u": {"url": "http://h", "forward_headers": ["a", 1]}}},
         "upstreams.u.forward_headers: must be a list of strings"),
        ({"upstreams": {"u": {"url": "http://h", "headers": {"k": 1}}}},
         "upstreams.u.headers.k: must be a string, not an integer"),
        ({"upstreams": {"u": "http://h"}}, "upstreams.u: must be a table, not a string"),
        ({"endpoints": {"route": "/x"}}, "endpoints: must be an array of tables ([[endpoints]])"),
        ({"endpoints": [endpoint(call(optional="yes"))]},
         "endpoints[0].calls[0].optional: must be a boolean, not a string"),
        ({"endpoints": [endpoint(call(query={"q": ["a"]}))]},
         "endpoints[0].calls[0].query.q: must be a string, not an array"),
        ({"endpoints": [endpoint(call(select="id"))]},
         "endpoints[0].calls[0].select: must be a list of strings"),
        ({"endpoints": [endpoint(call(rename={"a": 1}))]},
         "endpoints[0].calls[0].rename.a: must be a string, not an integer"),
        ({"endpoints": [{"route": "/x", "calls": {"name": "a"}}]},
         "endpoints[0].calls: must be an array of tables ([[endpoints.calls]])"),
    ],
)
def test_wrong_types_are_reported_with_their_key_path(raw: dict[str, Any], expected: str) -> None:
    assert expected in problems(config(**raw))


def test_a_boolean_is_not_an_integer_nor_a_number() -> None:
    found = problems({"gateway": {"max_upstream_bytes": True, "deadline": False}})
    assert found == ["gateway.deadline: must be a number, not a boolean",
                     "gateway.max_upstream_bytes: must be an integer, not a boolean"]


def test_top_level_must_be_a_table() -> None:
    assert problems([1, 2]) == ["config: must be a table, not an array"]


def test_upstreams_that_is_not_a_table_is_reported_once() -> None:
    assert problems({"upstreams": 5}) == ["upstreams: must be a table, not an integer"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"gateway": {"timeout": 0}}, "gateway.timeout: must be > 0"),
        ({"gateway": {"deadline": -1.0}}, "gateway.deadline: must be > 0"),
        ({"gateway": {"timeout": float("nan")}}, "gateway.timeout: must be a finite number"),
        ({"gateway": {"deadline": float("inf")}}, "gateway.deadline: must be a finite number"),
        ({"gateway": {"max_request_bytes": 0}}, "gateway.max_request_bytes: must be >= 1"),
        ({"gateway": {"strategy": "fast"}},
         "gateway.strategy: must be one of parallel, sequential, not 'fast'"),
        ({"gateway": {"log_format": "yaml"}},
         "gateway.log_format: must be one of text, json, not 'yaml'"),
        ({"gateway": {"cors_origins": ["localhost:5173"]}},
         "gateway.cors_origins[0]: 'localhost:5173' is not an origin like http://host:port"),
        ({"jobs": {"store": "mysql://db"}},
         "jobs.store: must be \"memory\" or a redis URL (redis://host:port/db), not 'mysql://db'"),
        ({"jobs": {"max_running": 0}}, "jobs.max_running: must be >= 1"),
        ({"jobs": {"max_queued": -1}}, "jobs.max_queued: must be >= 0"),
        ({"upstreams": {"u": {"url": "http://h", "retries": -1}}},
         "upstreams.u.retries: must be >= 0"),
        ({"upstreams": {"u": {"url": "http://h", "cache_ttl": -1}}},
         "upstreams.u.cache_ttl: must be >= 0"),
        ({"upstreams": {"u": {"url": "http://h", "max_connections": 0}}},
         "upstreams.u.max_connections: must be >= 1"),
        ({"upstreams": {"u": {"url": "http://h", "breaker": {"failures": 0}}}},
         "upstreams.u.breaker.failures: must be >= 1"),
        ({"endpoints": [endpoint(call(), deadline=0)]}, "endpoints[0].deadline: must be > 0"),
        ({"endpoints": [endpoint(call(), method="TRACE")]},
         "endpoints[0].method: must be one of GET, POST, PUT, PATCH, DELETE, not 'TRACE'"),
    ],
)
def test_values_out_of_range_are_reported(raw: dict[str, Any], expected: str) -> None:
    assert only_problem(config(**raw)) == expected


def test_zero_is_allowed_where_it_means_off() -> None:
    raw = config(jobs={"max_queued": 0},
                 upstreams={"u": {"url": "http://h", "cache_ttl": 0, "retries": 0}})
    cfg = parse_config(raw, env={})
    assert (cfg.jobs.max_queued, cfg.upstreams["u"].cache_ttl) == (0, 0.0)


# -- [websocket] -------------------------------------------------------------------------------


def test_websocket_table_has_spec_defaults_and_takes_every_key() -> None:
    assert parse_config({}, env={}).websocket == WebsocketSettings(
        max_in_flight=16, max_message_bytes=1048576, idle_timeout=25.0)
    cfg = parse_config(config(websocket={"max_in_flight": 2, "max_message_bytes": 4096,
                                         "idle_timeout": 5}), env={})
    assert cfg.websocket == WebsocketSettings(2, 4096, 5.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"max_in_flight": 0}, "websocket.max_in_flight: must be >= 1"),
        ({"max_in_flight": "16"}, "websocket.max_in_flight: must be an integer, not a string"),
        ({"max_in_flight": True}, "websocket.max_in_flight: must be an integer, not a boolean"),
        ({"max_message_bytes": 0}, "websocket.max_message_bytes: must be >= 1"),
        ({"max_message_bytes": 1.5},
         "websocket.max_message_bytes: must be an integer, not a number"),
        ({"idle_timeout": 0}, "websocket.idle_timeout: must be > 0"),
        ({"idle_timeout": -1.0}, "websocket.idle_timeout: must be > 0"),
        ({"idle_timeout": "60s"}, "websocket.idle_timeout: must be a number, not a string"),
        ({"max_queue": 4}, "websocket.max_queue: unknown key"),
    ],
)
def test_websocket_keys_are_validated_with_their_key_path(raw: dict[str, Any],
                                                          expected: str) -> None:
    assert only_problem(config(websocket=raw)) == expected


def test_websocket_must_be_a_table() -> None:
    assert only_problem(config(websocket=16)) == "websocket: must be a table, not an integer"


def test_cors_origins_accept_a_wildcard_and_full_origins() -> None:
    raw = config(gateway={"cors_origins": ["*", "https://app.example:8443"]})
    assert parse_config(raw, env={}).gateway.cors_origins == ("*", "https://app.example:8443")


# -- upstreams: URLs, headers, environment -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://files.example", "'ftp://files.example' must start with http:// or https://"),
        ("127.0.0.1:9001", "'127.0.0.1:9001' must start with http:// or https://"),
        ("http://", "'http://' has no host"),
        ("http://user:pw@api.example", "credentials in the URL are not allowed; use headers"),
        ("http://evil@api.example", "credentials in the URL are not allowed; use headers"),
        ("http://api.example/?key=1", "a base URL takes no query or fragment"),
        ("http://api.example/#top", "a base URL takes no query or fragment"),
        ("http://api.example:99999", "'http://api.example:99999' has an invalid port"),
        ("http://[::1", "'http://[::1' is not a valid URL"),
        ("http://api.exa\nmple", "'http://api.exa\\nmple' holds whitespace or control characters"),
        ("http://api example", "'http://api example' holds whitespace or control characters"),
    ],
)
def test_bad_upstream_urls_are_refused(url: str, reason: str) -> None:
    raw = config(upstreams={"u": {"url": url}})
    assert only_problem(raw) == f"upstreams.u.url: {reason}"


def test_upstream_url_is_required() -> None:
    assert only_problem(config(upstreams={"u": {}})) == "upstreams.u.url: is required"


def test_upstream_names_are_identifiers() -> None:
    raw = config(upstreams={"u": {"url": "http://h"}, "bad name": {"url": "http://h"},
                            "trailing\n": {"url": "http://h"}})
    found = problems(raw)
    assert "upstreams.bad name: upstream names are letters, digits, '_' and '-'" in found
    assert "upstreams.trailing\n: upstream names are letters, digits, '_' and '-'" in found


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Connection", "'Connection' is a hop-by-hop header and is never forwarded"),
        ("keep-alive", "'keep-alive' is a hop-by-hop header and is never forwarded"),
        ("Transfer-Encoding", "'Transfer-Encoding' is a hop-by-hop header and is never forwarded"),
        ("te", "'te' is a hop-by-hop header and is never forwarded"),
        ("upgrade", "'upgrade' is a hop-by-hop header and is never forwarded"),
        ("Proxy-Authorization",
         "'Proxy-Authorization' is a hop-by-hop header and is never forwarded"),
        ("Host", "'Host' is set by the gateway itself"),
        ("content-length", "'content-length' is set by the gateway itself"),
        ("X-Request-ID", "'X-Request-ID' is set by the gateway itself"),
        ("bad header", "'bad header' is not a header name"),
        ("x-token\n", "'x-token\n' is not a header name"),
    ],
)
def test_forward_headers_refuse_hop_by_hop_managed_and_invalid_names(header: str,
                                                                     reason: str) -> None:
    raw = config(upstreams={"u": {"url": "http://h", "forward_headers": ["accept", header]}})
    assert only_problem(raw) == f"upstreams.u.forward_headers[1]: {reason}"


def test_forward_headers_are_kept_lower_case() -> None:
    raw = config(upstreams={"u": {"url": "http://h", "forward_headers": ["Authorization",
                                                                        "X-Tenant"]}})
    assert parse_config(raw, env={}).upstreams["u"].forward_headers == ("authorization",
                                                                       "x-tenant")


@pytest.mark.parametrize("header", ["Connection", "TE", "host", "Content-Type", "x-request-id"])
def test_static_headers_refuse_hop_by_hop_and_managed_names(header: str) -> None:
    raw = config(upstreams={"u": {"url": "http://h", "headers": {header: "v"}}})
    assert only_problem(raw) == (
        f"upstreams.u.headers.{header}: '{header}' cannot be set as a static header")


def test_static_header_names_must_be_tokens() -> None:
    raw = config(upstreams={"u": {"url": "http://h", "headers": {"x-key\n": "v"}}})
    assert only_problem(raw) == "upstreams.u.headers.x-key\n: 'x-key\n' is not a header name"


def test_static_header_values_cannot_smuggle_cr_lf_through_the_environment() -> None:
    raw = config(upstreams={"u": {"url": "http://h", "headers": {"x-key": "${KEY}"}}})
    assert only_problem(raw, env={"KEY": "a\r\nx-evil: 1"}) == (
        "upstreams.u.headers.x-key: header values cannot hold CR, LF or NUL")


def test_missing_environment_variable_is_reported_where_it_is_used() -> None:
    raw = config(upstreams={"u": {"url": "${USERS_URL}",
                                  "headers": {"x-api-key": "key ${USERS_API_KEY}"}}})
    assert problems(raw) == [
        "upstreams.u.url: environment variable USERS_URL is not set",
        "upstreams.u.headers.x-api-key: environment variable USERS_API_KEY is not set",
    ]


def test_environment_variables_are_substituted() -> None:
    raw = config(upstreams={"u": {"url": "http://${HOST}:${PORT}",
                                  "headers": {"x-api-key": "Bearer ${KEY}"}}})
    up = parse_config(raw, env={"HOST": "10.0.0.5", "PORT": "8080", "KEY": "k1"}).upstreams["u"]
    assert up.url == "http://10.0.0.5:8080"
    assert up.headers == (("x-api-key", "Bearer k1"),)


def test_environment_default_is_used_only_when_the_variable_is_unset() -> None:
    raw = config(upstreams={"u": {"url": "${URL:-http://fallback:1}",
                                  "headers": {"a": "${A:-}", "b": "${B:-x}"}}})
    unset = parse_config(raw, env={}).upstreams["u"]
    assert unset.url == "http://fallback:1"
    assert unset.headers == (("a", ""), ("b", "x"))
    set_ = parse_config(raw, env={"URL": "http://real:2", "B": ""}).upstreams["u"]
    assert set_.url == "http://real:2"
    assert set_.headers == (("a", ""), ("b", ""))


def test_an_environment_value_is_validated_like_a_literal() -> None:
    raw = config(upstreams={"u": {"url": "${URL}"}})
    assert only_problem(raw, env={"URL": "http://admin:pw@h"}) == (
        "upstreams.u.url: credentials in the URL are not allowed; use headers")


# -- batching ---------------------------------------------------------------------------------


def test_batch_key_needs_a_batch_table_on_its_upstream() -> None:
    raw = config(endpoint(call(path=None, batch_key="{id}"), route="/p/<id>"))
    assert only_problem(raw) == (
        "endpoints[0].calls[0].batch_key: upstream 'u' has no [upstreams.u.batch]")


def test_path_and_batch_key_together_are_refused() -> None:
    raw = config(endpoint(call(path="/a", batch_key="{id}"), route="/p/<id>"),
                 upstreams={"u": {"url": "http://h",
                                  "batch": {"path": "/b", "param": "ids", "key": "id"}}})
    assert only_problem(raw) == (
        "endpoints[0].calls[0]: has both 'path' and 'batch_key'; a call uses one")


def test_a_call_needs_a_path_or_a_batch_key() -> None:
    raw = config(endpoint(call(path=None)))
    assert only_problem(raw) == (
        "endpoints[0].calls[0]: needs 'path' (or 'batch_key' for a batching upstream)")


def test_batched_calls_are_get() -> None:
    raw = config(endpoint(call(path=None, batch_key="{id}", method="POST"), route="/p/<id>"),
                 upstreams={"u": {"url": "http://h",
                                  "batch": {"path": "/b", "param": "ids", "key": "id"}}})
    assert only_problem(raw) == "endpoints[0].calls[0].method: batched calls are GET"


def test_batch_table_requires_path_param_and_key_and_takes_no_placeholders() -> None:
    raw = config(upstreams={"u": {"url": "http://h", "batch": {"path": "/b/{x}"}}})
    assert problems(raw) == [
        "upstreams.u.batch.param: is required",
        "upstreams.u.batch.key: is required",
        "upstreams.u.batch.path: takes no placeholders",
    ]


# -- endpoints and calls ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    ["/healthz", "/readyz", "/metrics", "/jobs", "/jobs/x", "/jobs/<id>", "/ws",
     "/_gateway", "/_gateway/", "/_gateway/api/recent"],
)
def test_reserved_routes_are_refused(route: str) -> None:
    prefix = "/" + route.split("/")[1]
    raw = config(endpoint(call(), route=route))
    assert only_problem(raw) == (
        f"endpoints[0].route: '{route}' is reserved for the gateway ({prefix})")


@pytest.mark.parametrize("route", ["/jobsearch", "/healthz-report", "/metrics_v2", "/wsx",
                                   "/api/jobs", "/_gatewayish"])
def test_routes_that_only_look_reserved_are_allowed(route: str) -> None:
    assert parse_config(config(endpoint(call(), route=route)), env={}).endpoints[0].route == route


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ("dashboard", "'dashboard' must start with '/'"),
        ("/x/<", "'/x/<' is not a valid route: malformed url rule: '/x/<'"),
        ("/x/<nope:y>", "'/x/<nope:y>' is not a valid route: the converter 'nope' does not exist"),
    ],
)
def test_invalid_routes_are_refused(route: str, reason: str) -> None:
    assert only_problem(config(endpoint(call(), route=route))) == f"endpoints[0].route: {reason}"


def test_route_is_required() -> None:
    assert only_problem(config({"calls": [call()]})) == "endpoints[0].route: is required"


def test_an_endpoint_needs_a_call() -> None:
    assert only_problem(config(endpoint())) == (
        "endpoints[0].calls: an endpoint needs at least one call")


def test_duplicate_route_and_method_is_refused() -> None:
    raw = config(endpoint(call()), endpoint(call(), method="post"), endpoint(call(), method="get"))
    assert only_problem(raw) == "endpoints[2].route: GET /x is already defined by endpoints[0]"


def test_invalid_routes_do_not_also_count_as_duplicates() -> None:
    raw = config(endpoint(call(), route="/healthz"), endpoint(call(), route="/jobs/1"))
    assert len(problems(raw)) == 2


def test_duplicate_call_names_are_refused() -> None:
    raw = config(endpoint(call("a"), call("b"), call("a")))
    assert only_problem(raw) == "endpoints[0].calls[2].name: 'a' is used by another call"


@pytest.mark.parametrize("name", ["query", "header", "body", "1st", "a.b", "", "user\n"])
def test_call_names_must_be_usable_in_placeholders(name: str) -> None:
    raw = config(endpoint(call(name), call(name, path="/b")))
    assert problems(raw) == [
        f"endpoints[0].calls[{j}].name: '{name}' is not usable as a call name "
        "(letters, digits, '_', '-'; not query/header/body)"
        for j in (0, 1)
    ]


def test_call_needs_name_and_upstream() -> None:
    raw = config(endpoint({"path": "/a"}))
    assert problems(raw) == ["endpoints[0].calls[0].name: is required",
                             "endpoints[0].calls[0].upstream: is required"]


def test_unknown_upstream_is_reported_with_its_key_path() -> None:
    raw = config(endpoint(call(), call("b", upstream="bill")))
    assert only_problem(raw) == "endpoints[0].calls[1].upstream: unknown upstream 'bill'"


def test_an_upstream_with_problems_is_still_known_to_calls() -> None:
    raw = config(upstreams={"u": {"url": "ftp://h"}})
    assert only_problem(raw).startswith("upstreams.u.url:")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("users", "'users' must start with '/'"),
        ("/users?id=1", "put query parameters in 'query', not in the path"),
        ("/users#x", "put query parameters in 'query', not in the path"),
        ("/users/../admin", "'.' and '..' segments are not allowed"),
        ("/./users", "'.' and '..' segments are not allowed"),
    ],
)
def test_bad_call_paths_are_refused(path: str, reason: str) -> None:
    found = only_problem(config(endpoint(call(path=path))))
    assert found == f"endpoints[0].calls[0].path: {reason}"


def test_default_belongs_to_optional_calls() -> None:
    raw = config(endpoint(call(default=[])))
    assert only_problem(raw) == "endpoints[0].calls[0].default: only optional calls have a default"


@pytest.mark.parametrize("combine", ["examples.dashboard", "a:b:c", "a/b:c", ":f", "m:f\n"])
def test_combine_must_name_module_and_function(combine: str) -> None:
    raw = config(endpoint(call(), combine=combine))
    assert only_problem(raw) == f"endpoints[0].combine: must be 'module:function', not '{combine}'"


# -- placeholders and the dependency graph ------------------------------------------------------


def test_placeholder_naming_an_unknown_call_is_reported() -> None:
    raw = config(endpoint(call("user"), call("account", path="/acc/{usr.account_id}")))
    assert only_problem(raw) == (
        "endpoints[0].calls[1].path: '{usr.account_id}' names neither a route parameter nor a call")


def test_placeholder_naming_an_unknown_route_parameter_is_reported() -> None:
    raw = config(endpoint(call(path="/u/{user}"), route="/d/<int:user_id>"))
    assert only_problem(raw) == (
        "endpoints[0].calls[0].path: '{user}' names neither a route parameter nor a call")


def test_placeholders_are_checked_in_query_body_and_batch_key() -> None:
    raw = config(
        endpoint(call(query={"q": "{nope}"}, body={"x": ["{gone.id}"]}),
                 call("b", path=None, batch_key="{missing}")),
        upstreams={"u": {"url": "http://h", "batch": {"path": "/b", "param": "ids", "key": "id"}}},
    )
    assert problems(raw) == [
        "endpoints[0].calls[0].query.q: '{nope}' names neither a route parameter nor a call",
        "endpoints[0].calls[0].body: '{gone.id}' names neither a route parameter nor a call",
        "endpoints[0].calls[1].batch_key: '{missing}' names neither a route parameter nor a call",
    ]


def test_malformed_placeholders_are_reported() -> None:
    raw = config(endpoint(call(path="/a/{}"), call("b", path="/b/{query}"),
                          call("c", path="/c/{x"), route="/r/<x>"))
    assert problems(raw) == [
        "endpoints[0].calls[0].path: '{}' is not a placeholder (names joined by '.')",
        "endpoints[0].calls[1].path: '{query}' needs a name, like {query.NAME}",
        "endpoints[0].calls[2].path: unbalanced '{' or '}' in '/c/{x'",
    ]


def test_route_parameters_have_no_fields() -> None:
    raw = config(endpoint(call(path="/a/{x.y}"), route="/r/<x>"))
    assert only_problem(raw) == (
        "endpoints[0].calls[0].path: '{x.y}': route parameter 'x' has no fields")


def test_request_placeholders_need_no_declaration() -> None:
    raw = config(endpoint(call(path="/a/{header.x-user}",
                               query={"q": "{query.q}"}, body={"v": "{body.v}"}, method="POST")))
    assert parse_config(raw, env={}).endpoints[0].calls[0].method == "POST"


def test_cycle_is_reported_with_its_path() -> None:
    raw = config(endpoint(call("user", path="/u/{account.owner}"),
                          call("account", path="/a/{user.account_id}")))
    assert only_problem(raw) == "endpoints[0].calls: dependency cycle: user -> account -> user"


def test_longer_cycle_is_reported_with_every_step() -> None:
    raw = config(endpoint(call("free"),
                          call("a", path="/a/{c.id}"),
                          call("b", path="/b", query={"x": "{a.id}"}),
                          call("c", path="/c", body={"y": "{b.id}"}, method="POST")))
    assert only_problem(raw) == "endpoints[0].calls: dependency cycle: a -> c -> b -> a"


def test_self_reference_is_reported_once_and_not_as_a_cycle() -> None:
    raw = config(endpoint(call("user", path="/u/{user.id}")))
    assert only_problem(raw) == "endpoints[0].calls[0].path: '{user.id}' refers to the call itself"


def test_a_dag_is_accepted() -> None:
    raw = config(endpoint(call("d", path="/d/{b.x}/{c.y}"), call("b", path="/b/{a.id}"),
                          call("c", path="/c/{a.id}"), call("a")))
    assert [c.name for c in parse_config(raw, env={}).endpoints[0].calls] == ["d", "b", "c", "a"]


def test_find_cycle_returns_a_closed_path_or_none() -> None:
    assert find_cycle(("a", "b", "c"), {"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle(("a", "b", "c"), {"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_route_params_lists_every_converter_argument() -> None:
    route = "/a/<int:x>/<y>/<path:rest>/<int(signed=True):z>"
    assert route_params(route) == ("x", "y", "rest", "z")


# -- all at once, files -----------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    raw = {
        "gateway": {"strategy": "fast", "timeout": True},
        "jobs": {"max_running": 0},
        "upstreams": {"users": {"url": "ftp://x", "forward_headers": ["connection"]},
                      "orders": {"url": "http://o", "headers": {"k": "${NOPE}"}}},
        "endpoints": [
            {"route": "/healthz", "calls": [call("x", upstream="users")]},
            {"route": "/d/<int:id>", "calls": [
                call("user", upstream="bill", path="/u/{id}"),
                call("user", upstream="orders", path="/o/{ghost.id}"),
            ]},
            {"route": "/c", "calls": [call("p", upstream="users", path="/p/{q.id}"),
                                      call("q", upstream="users", path="/q/{p.id}")]},
        ],
        "extra": {},
    }
    found = problems(raw)
    assert sorted(found) == sorted([
        "extra: unknown key",
        "gateway.strategy: must be one of parallel, sequential, not 'fast'",
        "gateway.timeout: must be a number, not a boolean",
        "jobs.max_running: must be >= 1",
        "upstreams.users.url: 'ftp://x' must start with http:// or https://",
        "upstreams.users.forward_headers[0]: 'connection' is a hop-by-hop header and is never "
        "forwarded",
        "upstreams.orders.headers.k: environment variable NOPE is not set",
        "endpoints[0].route: '/healthz' is reserved for the gateway (/healthz)",
        "endpoints[1].calls[0].upstream: unknown upstream 'bill'",
        "endpoints[1].calls[1].name: 'user' is used by another call",
        "endpoints[1].calls[1].path: '{ghost.id}' names neither a route parameter nor a call",
        "endpoints[2].calls: dependency cycle: p -> q -> p",
    ])
    assert len(found) == 12


def test_config_error_message_is_one_line_per_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"a": 1, "b": 2}, env={})
    assert str(info.value).splitlines() == ["a: unknown key", "b: unknown key"]


def test_toml_syntax_error_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[gateway]\nstrategy = "parallel\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in problem


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: file not found"]


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems[0].startswith(f"{tmp_path}: cannot read: ")


# -- no input crashes the validator ------------------------------------------------------------

_KEYS = st.sampled_from([
    "gateway", "jobs", "upstreams", "endpoints", "calls", "url", "route", "name", "upstream",
    "path", "batch_key", "query", "body", "select", "rename", "breaker", "batch", "headers",
    "forward_headers", "timeout", "method", "combine", "strategy", "deadline", "cors_origins",
    "store", "param", "key", "optional", "default", "retries", "u",
]) | st.text(max_size=4)
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(alphabet="{}/.<>:au_$@?# \n-", max_size=10)
    | st.sampled_from(["http://[::1", "http://h", "/a/{a}", "/x/<int:a>", "{a.b}", "${X}", "u"])
)
_TREES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_TREES | st.dictionaries(_KEYS, _TREES, max_size=5))
def test_parse_config_raises_only_config_error(raw: Any) -> None:
    found: list[str] = []
    try:
        cfg = parse_config(raw, env={})
    except ConfigError as exc:
        found = exc.problems
        assert found
    else:
        assert isinstance(cfg, Config)
    assert all(isinstance(p, str) and ": " in p for p in found)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "gateway.max_buffered_bytes: must be >= 1"),
        (-5, "gateway.max_buffered_bytes: must be >= 1"),
        ("256MiB", "gateway.max_buffered_bytes: must be an integer, not a string"),
        (1.5, "gateway.max_buffered_bytes: must be an integer, not a number"),
    ],
)
def test_max_buffered_bytes_is_a_positive_integer(value: Any, expected: str) -> None:
    assert only_problem({"gateway": {"max_buffered_bytes": value}}) == expected


def test_max_buffered_bytes_defaults_to_256_mib_and_may_be_below_the_per_call_cap() -> None:
    assert parse_config({}, env={}).gateway.max_buffered_bytes == 256 * 1024 * 1024
    small = parse_config({"gateway": {"max_buffered_bytes": 1024}}, env={})
    assert small.gateway.max_buffered_bytes == 1024  # bodies over it are then 503s


# -- issue 12: messages that point at the fix -------------------------------------------------


def test_misspelt_key_gets_a_did_you_mean() -> None:
    assert only_problem(config(gateway={"timout": 1})) == (
        "gateway.timout: unknown key; did you mean 'timeout'?")


def test_rename_of_a_field_not_selected_is_a_config_error() -> None:
    raw = config(endpoint(call(select=["id", "name"], rename={"name": "n", "email": "mail"})))
    assert only_problem(raw) == ("endpoints[0].calls[0].rename.email: 'email' is not in select, "
                                 "so there is nothing to rename; add it to select")
    fine = config(endpoint(call(select=["id", "name"], rename={"name": "n"})))
    assert parse_config(fine, env={}).endpoints[0].calls[0].rename == (("name", "n"),)
    no_select = config(endpoint(call(rename={"email": "mail"})))  # every field is kept
    assert parse_config(no_select, env={}).endpoints[0].calls[0].rename == (("email", "mail"),)


def test_combine_import_error_is_reported_with_the_other_problems() -> None:
    raw = config(endpoint(call(), combine="gw_test_no_such_hook_module:f"),
                 gateway={"strategy": "fast"})
    found = problems(raw)
    assert found[0] == "gateway.strategy: must be one of parallel, sequential, not 'fast'"
    assert found[1].startswith("endpoints[0].combine: cannot import module "
                               "'gw_test_no_such_hook_module'")
    assert len(found) == 2


def test_invalid_route_still_reports_the_problems_of_its_calls() -> None:
    raw = config(endpoint(call(path="/u/{uid}/{ghost.id}", upstream="nope"),
                          route="/healthz/<int:uid"))
    found = problems(raw)
    assert found[0].startswith("endpoints[0].route: ")
    assert sorted(found[1:]) == [
        "endpoints[0].calls[0].path: '{ghost.id}' names neither a route parameter nor a call",
        "endpoints[0].calls[0].upstream: unknown upstream 'nope'",
    ]  # and no false "{uid} names neither...": the broken route's parameter is still read


def test_combine_is_imported_from_the_config_files_folder_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "gw_test_hooks_beside.py").write_text("def combine(r, c):\n    return 'beside'\n")
    (folder / "gateway.toml").write_text(
        '[upstreams.u]\nurl = "http://127.0.0.1:9001"\n\n[[endpoints]]\nroute = "/x"\n'
        'combine = "gw_test_hooks_beside:combine"\n\n  [[endpoints.calls]]\n  name = "a"\n'
        '  upstream = "u"\n  path = "/a"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    monkeypatch.delitem(sys.modules, "gw_test_hooks_beside", raising=False)
    cfg = load_config("deploy/gateway.toml")
    assert cfg.endpoints[0].combine == "gw_test_hooks_beside:combine"
    (plan,) = compile_plans(cfg)
    assert plan.combine is not None
    assert plan.combine({}, None) == "beside"


def test_config_package_exports_the_names_of_the_former_module() -> None:
    """gateway/config.py became a package; every name other modules imported from it
    still comes from `gateway.config`, and nothing else is exported."""
    import gateway.config as package

    names = {
        "COMBINE_RE", "ENV_RE", "HEADER_NAME_RE", "HOP_BY_HOP", "LOG_FORMATS", "MANAGED_HEADERS",
        "METHODS", "NAME_RE", "RESERVED_PREFIXES", "STRATEGIES", "Batch", "Breaker", "CallConfig",
        "Config", "EndpointConfig", "GatewaySettings", "JobsSettings", "UpstreamConfig",
        "WebsocketSettings", "call_templates", "find_cycle", "load_config", "parse_config",
        "route_params", "template_refs",
    }
    assert set(package.__all__) == names
    assert all(getattr(package, name) is not None for name in names)
