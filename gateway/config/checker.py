"""The reading tool every section uses: typed getters over raw TOML data that record
a `key.path: reason` problem and go on with the default, instead of raising.

It also carries the two outside inputs a check may need, so the section parsers stay
plain functions: the environment (for `${VAR}` values, `expand`) and the folder that
`combine` hooks are imported from first.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Checker:
    """Reads raw TOML data with key paths, collecting problems instead of raising."""

    def __init__(self, env: Mapping[str, str], hook_folder: str | None = None) -> None:
        self.problems: list[str] = []
        self.env = env
        self.hook_folder = hook_folder  # where `combine` modules are looked up first

    def fail(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def table(self, raw: Any, path: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(path, f"must be a table, not {type_name(raw)}")
            return {}
        return raw

    def unknown(self, raw: dict[str, Any], path: str, known: set[str]) -> None:
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.fail(join(path, key), "unknown key" + hint)

    def get(
        self,
        raw: dict[str, Any],
        path: str,
        key: str,
        kind: Callable[[Any], bool],
        kind_name: str,
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        if key not in raw:
            return default
        value = raw[key]
        where = join(path, key)
        if not kind(value):
            self.fail(where, f"must be {kind_name}, not {type_name(value)}")
            return default
        if check is not None and (reason := check(value)) is not None:
            self.fail(where, reason)
            return default
        return value  # type: ignore[no-any-return]

    def number(self, raw: dict[str, Any], path: str, key: str, default: float,
               minimum: float = 0.0, allow_zero: bool = False) -> float:
        def check(v: Any) -> str | None:
            if not -(2.0**1023) < v < 2.0**1023:  # also refuses TOML's nan and inf
                return "must be a finite number"
            if v < minimum or (v == minimum and not allow_zero):
                return f"must be {'>=' if allow_zero else '>'} {minimum:g}"
            return None

        return float(self.get(raw, path, key, _is_number, "a number", default, check))

    def integer(self, raw: dict[str, Any], path: str, key: str, default: int,
                minimum: int = 1) -> int:
        def check(v: Any) -> str | None:
            return f"must be >= {minimum}" if v < minimum else None

        return int(self.get(raw, path, key, _is_int, "an integer", default, check))

    def string(self, raw: dict[str, Any], path: str, key: str, default: T,
               check: Callable[[Any], str | None] | None = None) -> str | T:
        return self.get(raw, path, key, _is_str, "a string", default, check)

    def boolean(self, raw: dict[str, Any], path: str, key: str, default: bool) -> bool:
        return bool(self.get(raw, path, key, _is_bool, "a boolean", default))

    def strings(self, raw: dict[str, Any], path: str, key: str) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(join(path, key), "must be a list of strings")
            return None
        return tuple(value)

    def string_table(self, raw: dict[str, Any], path: str, key: str,
                     scalars: bool = False) -> tuple[tuple[str, str], ...]:
        if key not in raw:
            return ()
        where = join(path, key)
        table = self.table(raw[key], where)
        out = []
        for k, v in table.items():
            if scalars and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            elif scalars and isinstance(v, bool):
                v = "true" if v else "false"
            if not isinstance(v, str):
                self.fail(join(where, k), f"must be a string, not {type_name(v)}")
                continue
            out.append((k, v))
        return tuple(out)

    def expand(self, path: str, value: str) -> str:
        """`${VAR}` and `${VAR:-fallback}` replaced from the environment; an unset
        variable without a fallback is a problem at `path`."""

        def sub(m: re.Match[str]) -> str:
            var, fallback = m.group(1), m.group(2)
            if var not in self.env and fallback is not None:
                return fallback
            if var not in self.env:
                self.fail(path, f"environment variable {var} is not set")
                return ""
            return self.env[var]

        return ENV_RE.sub(sub, value)


def one_of(choices: tuple[str, ...], upper: bool = False) -> Callable[[Any], str | None]:
    def check(v: str) -> str | None:
        value = v.upper() if upper else v
        if value in choices:
            return None
        return f"must be one of {', '.join(choices)}, not '{v}'"

    return check


def is_origin(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.path in ("", "/")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_name(v: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)
