"""The request side of an operation: route parameters, placeholders, the JSON body.

Each schema refuses exactly what the gateway refuses with a 400, as patterns that
ECMA 262 and Python read alike: CR, LF or NUL anywhere in a value or path, and in
a value that fills a path, a '.' or '..' between slashes.
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug.routing import AnyConverter, IntegerConverter, Map
from werkzeug.routing.rules import parse_converter_args

from ..plan import Plan
from ..template import Ref

_PARAM = re.compile(r"<(?:([A-Za-z_]\w*)(?:\((.*?)\))?:)?([A-Za-z_]\w*)>")
_CONVERTERS = Map().converters
# Not described as header parameters by OpenAPI (3.1.0, "Parameter Object").
_RESERVED_HEADERS = frozenset({"accept", "content-type", "authorization"})
_SCALAR = {"type": ["string", "number", "boolean"]}
_NOT_NULL = {"not": {"type": "null"}}
_NO_CONTROL = r"(?![\s\S]*[\r\n\x00])"  # no `$` here: Python's matches before a final \n
_NO_DOT_SEGMENT = r"(?!(?:.*/)?\.\.?(?:/|$))"
_TEXT_IN_URL = f"^{_NO_CONTROL}"
_TEXT_IN_PATH = f"^{_NO_CONTROL}{_NO_DOT_SEGMENT}."
# h11 strips a header value's outer spaces and tabs: ' ..' arrives as '..'.
_HEADER_IN_PATH = rf"^{_NO_CONTROL}(?!(?:[ \t]*|.*/)\.\.?(?:/|[ \t]*$))(?=.*[^ \t])"


def openapi_path(route: str) -> str:
    """`/users/<int:id>` -> `/users/{id}`."""
    return _PARAM.sub(lambda m: "{" + m.group(3) + "}", route)


def route_schemas(route: str, in_path: frozenset[str] = frozenset()
                  ) -> dict[str, dict[str, Any]]:
    """Each route parameter's JSON schema, from its werkzeug converter and arguments.

    Text never holds CR, LF or NUL (a 400); a parameter named in `in_path` fills a path
    placeholder, where a '.' or '..' segment is a 400 too.
    """
    out = {}
    for m in _PARAM.finditer(route):
        kind, raw_args, name = m.group(1) or "default", m.group(2), m.group(3)
        args, kwargs = parse_converter_args(raw_args) if raw_args else ((), {})
        converter = _CONVERTERS[kind](Map(), *args, **kwargs)
        if isinstance(converter, IntegerConverter):
            schema: dict[str, Any] = {"type": "integer"}
            low = converter.min if converter.min is not None else (
                None if converter.signed else 0)
            if low is not None:
                schema["minimum"] = low
            if converter.max is not None:
                schema["maximum"] = converter.max
        elif kind == "uuid":
            schema = {"type": "string", "format": "uuid"}
        elif isinstance(converter, AnyConverter):
            schema = {"type": "string", "enum": sorted(converter.items)}
        else:  # string, path, float: the converter's own regex says it exactly
            checks = _NO_CONTROL + (_NO_DOT_SEGMENT if name in in_path else "")
            schema = {"type": "string", "pattern": f"^{checks}(?:{converter.regex})$"}
            if kind == "float":
                schema["format"] = "decimal"
        out[name] = schema
    return out


# A request placeholder: whether it lands in a URL (so must be a scalar), in a path, and
# whether a request without it is a 400 (no default, no `?`, not an optional call's).
Use = tuple[Ref, bool, bool, bool]


def request_refs(plan: Plan) -> list[Use]:
    return [(c.ref, c.in_url, c.in_path, c.required) for c in plan.checks]


def placeholder_params(refs: list[Use]) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ref, in_url, in_path, required in refs:
        if ref.source not in ("query", "header"):
            continue
        if ref.source == "header" and ref.name in _RESERVED_HEADERS:
            continue  # OpenAPI ignores these as parameters; a missing one is still a 400
        param = out.setdefault((ref.source, ref.name), {
            "name": ref.name, "in": ref.source, "required": False,
            "schema": {"type": "string"}, "description": f"fills {ref.text}"})
        param["required"] = param["required"] or required
        schema = param["schema"]
        if in_path:
            schema["pattern"] = _HEADER_IN_PATH if ref.source == "header" else _TEXT_IN_PATH
        elif in_url and schema.get("pattern") is None:
            schema["pattern"] = _TEXT_IN_URL
    return list(out.values())


def body_schema(refs: list[Use]) -> tuple[dict[str, Any], bool] | None:
    """An object schema requiring every `{body....}` field a request must have, scalars
    where used in a URL; and whether the body itself is required. `{body}` is any JSON."""
    root: dict[str, Any] = {}
    found = required_body = False
    for ref, in_url, in_path, required in refs:
        if ref.source != "body":
            continue
        found = True
        required_body = required_body or required
        if required and ref.name:
            leaf: dict[str, Any] = _NOT_NULL
            if in_url:
                leaf = {**_SCALAR, "pattern": _TEXT_IN_PATH if in_path else _TEXT_IN_URL}
            _require(root, (ref.name, *ref.path), leaf)
    if not found:
        return None
    return ({"type": "object", **root} if root else {}), required_body


def _stricter(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Of two leaf schemas for one field, the one that refuses more (path > URL > any)."""
    def rank(leaf: dict[str, Any] | None) -> int:
        if leaf is None or "type" not in leaf:
            return 0
        return 2 if leaf.get("pattern") == _TEXT_IN_PATH else 1
    return dict(a if a is not None and rank(a) >= rank(b) else b)


def _require(node: dict[str, Any], path: tuple[str, ...], leaf: dict[str, Any]) -> None:
    key, rest = path[0], path[1:]
    if key.isdigit():
        return  # an index into a list or a digit key: beyond what we describe
    node.setdefault("required", [])
    if key not in node["required"]:
        node["required"].append(key)
    props = node.setdefault("properties", {})
    if not rest:
        props[key] = _stricter(props.get(key), leaf)
        return
    child = props.setdefault(key, {})
    if rest[0].isdigit():
        props[key] = {**_NOT_NULL}  # object or array: not described further
        return
    child.setdefault("type", "object")
    _require(child, rest, leaf)
