"""Gateway configs for the benchmarks: one key changed in a TOML file, and generated routes.

`set_key` takes a key path as the gateway reports it (`limits.rate`,
`endpoints[0].auth`, with `[*]` for every item of an array) and a value
written in TOML (`'"100/second"'`, `true`, `{ secret = "..." }`) or `absent`
to remove the key. `dumps` writes the result back as TOML (tomllib only
reads it); it covers what gateway configs hold: tables, arrays of tables,
strings, numbers, booleans, arrays and inline tables.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

ABSENT = "absent"
_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[(?:\d+|\*)\])*)")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def parse_value(text: str) -> Any:
    """A TOML value (`"x"`, `5`, `true`, `[1, 2]`, `{a = 1}`); bare words that are not
    TOML are taken as strings, so `--on 100/second` works without shell quoting."""
    if text == ABSENT:
        return ABSENT
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _steps(path: str) -> list[str | int]:
    """`endpoints[0].calls[*].x` -> ["endpoints", 0, "calls", "*", "x"]."""
    steps: list[str | int] = []
    for part in path.split("."):
        match = _SEGMENT.fullmatch(part)
        if not match:
            raise ValueError(f"{path!r}: cannot read key path segment {part!r}")
        steps.append(match[1])
        for index in re.findall(r"\[(\d+|\*)\]", match[2]):
            steps.append("*" if index == "*" else int(index))
    return steps


def set_key(config: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, with `ABSENT`, remove) the key at `path` in place; missing tables are made."""
    steps = _steps(path)

    def walk(node: Any, rest: list[str | int], where: str) -> None:
        step, *more = rest
        if step == "*" or isinstance(step, int):
            if not more:
                raise ValueError(f"{path!r}: the last segment must be a key, not an index")
            if not isinstance(node, list):
                raise ValueError(f"{path!r}: {where or 'the config'} is not an array")
            if isinstance(step, int) and step >= len(node):
                raise ValueError(f"{path!r}: {where}[{step}] does not exist")
            for item in node[step : step + 1] if isinstance(step, int) else node:
                walk(item, more, f"{where}[{step}]")
            return
        if not isinstance(node, dict):
            raise ValueError(f"{path!r}: {where} is not a table")
        if not more:
            if value == ABSENT:
                node.pop(step, None)
            else:
                node[step] = value
            return
        if value == ABSENT and step not in node:
            return  # nothing to remove: make no empty tables on the way
        walk(node.setdefault(step, {}), more, f"{where}.{step}" if where else step)

    walk(config, steps, "")


def load(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


# --------------------------------------------------------------------------- writing TOML


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(out: list[str], name: str, table: dict[str, Any], header: str | None) -> None:
    nested = [(k, v) for k, v in table.items() if isinstance(v, dict) or _is_table_array(v)]
    scalars = [f"{_key(k)} = {_value(v)}" for k, v in table.items() if (k, v) not in nested]
    if header is not None and (scalars or not nested):
        out.append(header)  # [upstreams] holding only [upstreams.a] needs no header of its own
    out.extend(scalars)
    for k, v in nested:
        full = f"{name}.{_key(k)}" if name else _key(k)
        if isinstance(v, dict):
            _table(out, full, v, f"\n[{full}]")
        else:
            for item in v:
                _table(out, full, item, f"\n[[{full}]]")


def dumps(config: dict[str, Any]) -> str:
    out: list[str] = []
    _table(out, "", config, None)
    return "\n".join(out).lstrip("\n") + "\n"
