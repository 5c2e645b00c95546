"""TOML config -> frozen dataclasses, validated once and completely at load.

Every problem is collected (not just the first) as one `key.path: reason` line, so
`gateway check` can show them all at once. Pure but for two outside inputs: the
environment, read for `${VAR}` values, and the `combine` hooks, imported here
(hooks.py) so that a hook that cannot be imported is reported with every other
problem, not after they are fixed.

The modules, in the order a config goes through them:

    loading.py    load_config / parse_config: file or dict -> Checker -> Config
    checker.py    Checker: typed getters that record problems with key paths
    sections.py   [gateway], [jobs], [websocket], [upstreams.NAME] (breaker, batch)
    endpoints.py  [[endpoints]] and their [[endpoints.calls]]
    checks.py     cross checks: reserved routes, combine import, placeholders, cycles
    model.py      the frozen dataclasses and constants the rest of the gateway reads

Adding a top-level section `[name]`:

1. Its settings dataclass (frozen, slots, defaults with units) in model.py, or in
   the new section's own module if it brings more than a dataclass, and a field
   on `Config` with a `default_factory`, after the existing fields (callers build
   `Config(...)` positionally).
2. A `parse_name(c: Checker, raw: dict) -> NameSettings` that reads every key with
   the checker (so a bad value is one `name.key: reason` line and the default is
   kept), calls `c.unknown(raw, "name", {...})`, and takes its defaults from the
   dataclass; in sections.py, or a new module of its own if sections.py would grow
   past 400 lines.
3. The name in `loading.TOP_LEVEL`, one line calling the parser in
   `parse_config`, and the value passed to `Config(...)`.
4. Re-export the dataclass here, a validation test in tests/test_config.py, and
   the keys in the README's config reference tables.
"""

from .checker import ENV_RE, HEADER_NAME_RE, NAME_RE
from .checks import COMBINE_RE, call_templates, find_cycle, route_params, template_refs
from .loading import load_config, parse_config
from .model import (
    HOP_BY_HOP,
    LOG_FORMATS,
    MANAGED_HEADERS,
    METHODS,
    RESERVED_PREFIXES,
    STRATEGIES,
    Batch,
    Breaker,
    CallConfig,
    Config,
    EndpointConfig,
    GatewaySettings,
    JobsSettings,
    UpstreamConfig,
    WebsocketSettings,
)

__all__ = [
    "COMBINE_RE",
    "ENV_RE",
    "HEADER_NAME_RE",
    "HOP_BY_HOP",
    "LOG_FORMATS",
    "MANAGED_HEADERS",
    "METHODS",
    "NAME_RE",
    "RESERVED_PREFIXES",
    "STRATEGIES",
    "Batch",
    "Breaker",
    "CallConfig",
    "Config",
    "EndpointConfig",
    "GatewaySettings",
    "JobsSettings",
    "UpstreamConfig",
    "WebsocketSettings",
    "call_templates",
    "find_cycle",
    "load_config",
    "parse_config",
    "route_params",
    "template_refs",
]
