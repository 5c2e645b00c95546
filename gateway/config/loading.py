"""TOML file or dict -> checker -> `Config`: the two entry points, and the order in which
the top-level tables are read (settings first: upstreams take their default timeout from
`[gateway]`, endpoints check their calls against the upstreams)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..hooks import hook_folder
from .auth import parse_auth, parse_limits
from .checker import Checker
from .endpoints import parse_endpoint
from .model import Config, EndpointConfig, UpstreamConfig
from .sections import parse_gateway, parse_jobs, parse_upstream, parse_websocket

# The top-level tables; a key outside it is "unknown" (with a did-you-mean).
TOP_LEVEL = {"gateway", "jobs", "websocket", "upstreams", "endpoints", "auth", "limits"}


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | Config,
                env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config from a path, a dict of the TOML shape, or a Config.

    Raises `ConfigError` with every problem found.
    """
    if isinstance(source, Config):
        return source
    origin: str | None = None
    if isinstance(source, Mapping):
        raw: Any = source
    else:
        origin = os.fspath(source)
        try:
            raw = tomllib.loads(Path(origin).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{origin}: file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{origin}: cannot read: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{origin}: invalid TOML: {exc}"]) from None
    return parse_config(raw, env=os.environ if env is None else env, source=origin)


def parse_config(raw: Any, env: Mapping[str, str], source: str | None = None) -> Config:
    """Validate already-parsed TOML data; raises `ConfigError` listing every problem."""
    c = Checker(env, hook_folder(source))
    top = c.table(raw, "config")
    c.unknown(top, "", TOP_LEVEL)
    settings = parse_gateway(c, c.table(top.get("gateway", {}), "gateway"))
    jobs = parse_jobs(c, c.table(top.get("jobs", {}), "jobs"))
    websocket = parse_websocket(c, c.table(top.get("websocket", {}), "websocket"))
    auth = parse_auth(c.fail, top.get("auth", {}), c.expand)
    limits = parse_limits(c.fail, top.get("limits", {}))
    if settings.dashboard_auth == "auth" and not auth.enabled:
        c.fail("gateway.dashboard_auth", '"auth" needs [auth] jwks_url, jwks_file, secret or '
               "api_keys")
    upstreams: dict[str, UpstreamConfig] = {}
    upstreams_raw = c.table(top.get("upstreams", {}), "upstreams")
    for name, up_raw in upstreams_raw.items():
        up = parse_upstream(c, name, up_raw, settings)
        if up is not None:
            upstreams[name] = up
    endpoints_raw = top.get("endpoints", [])
    endpoints: list[EndpointConfig] = []
    if not isinstance(endpoints_raw, list):
        c.fail("endpoints", "must be an array of tables ([[endpoints]])")
        endpoints_raw = []
    seen_routes: dict[tuple[str, str], int] = {}
    declared = set(upstreams_raw)
    for i, ep_raw in enumerate(endpoints_raw):
        ep = parse_endpoint(c, f"endpoints[{i}]", ep_raw, upstreams, declared, auth)
        if ep is None:
            continue
        key = (ep.route, ep.method)
        if ep.route and key in seen_routes:
            c.fail(f"endpoints[{i}].route",
                   f"{ep.method} {ep.route} is already defined by endpoints[{seen_routes[key]}]")
        seen_routes[key] = i
        endpoints.append(ep)
    if c.problems:
        raise ConfigError(c.problems)
    return Config(settings, jobs, upstreams, tuple(endpoints), source, websocket=websocket,
                  auth=auth, limits=limits)
