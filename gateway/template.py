"""Placeholders: parsing at load, substitution and encoding per request (pure).

`{user_id}` is a route parameter, `{query.NAME}`, `{header.NAME}` and
`{body.FIELD}` come from the incoming request (`{body}` is the whole body),
`{CALL.FIELD.SUB}` from another call's reply (`{CALL}` the whole reply), `{jwt.CLAIM}`
from the caller's verified token and `{client}` is the client key the limits use. Values
substituted into a URL are percent-encoded as one path segment or query value,
so nothing a client or an upstream sends can change which upstream path or host
is called.

A placeholder may end in `:-TEXT` (use TEXT when the value is missing) or `?`
(a `query` value left out when the value is missing); `usage_problem` says
where each form is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

from .context import HeaderMap
from .errors import CallInputError, RequestError

Source = Literal["param", "query", "header", "body", "call", "jwt", "client"]
REQUEST_SOURCES = ("query", "header", "body", "jwt")

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_FORBIDDEN = ("\r", "\n", "\0")
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")  # what `quote(text, safe="")` never changes
_DOT_SEGMENTS = (".", "..")


def path_value_problem(text: str) -> str | None:
    """Why `text` cannot fill a path placeholder, or None.

    Empty would change which path is called (`/users/` is a list endpoint). A value is
    encoded as one segment, `/` included, so `a/../admin` stays one; but an upstream or a
    proxy before it that decodes `%2F` would walk up, so a `.` or `..` between slashes is
    refused too (the value as the client's encoding decoded it: `%2e%2e` stays text).
    """
    if not text:
        return "is empty (an empty path segment)"
    if text in _DOT_SEGMENTS:
        return "is a '.' or '..' path segment"
    if any(seg in _DOT_SEGMENTS for seg in text.split("/")):
        return "holds a '.' or '..' path segment"
    return None


@dataclass(frozen=True, slots=True)
class Ref:
    """One placeholder, resolved to its source at load time."""

    source: Source
    name: str  # route parameter, query or header name, body field, or call name
    path: tuple[str, ...]  # fields below `name`
    text: str  # as written, for messages
    default: str | None = None  # `{query.q:-all}`: used when the value is missing
    omit: bool = False  # `{query.q?}`: a missing value leaves its query parameter out

    @property
    def from_request(self) -> bool:
        return self.source != "call"

    @property
    def required(self) -> bool:
        """Whether a missing value is an error (no default, not omittable)."""
        return self.default is None and not self.omit


class _TemplateSyntaxError(ValueError):
    """A template could not be parsed; the message says where."""


def parse_refs(text: str, params: tuple[str, ...], calls: tuple[str, ...]) -> list[str | Ref]:
    """Split `text` into literal strings and `Ref`s; raise `_TemplateSyntaxError` if unusable."""
    parts: list[str | Ref] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(_ref(m.group(1), params, calls))
        pos = m.end()
    tail = text[pos:]
    if "{" in tail or "}" in tail or any("{" in p or "}" in p for p in parts if isinstance(p, str)):
        raise _TemplateSyntaxError(f"unbalanced '{{' or '}}' in '{text}'")
    if tail:
        parts.append(tail)
    return parts


def _ref(inner: str, params: tuple[str, ...], calls: tuple[str, ...]) -> Ref:
    text = "{" + inner + "}"
    names, sep, default = inner.partition(":-")
    omit = not sep and names.endswith("?")
    if omit:
        names = names[:-1]
    fallback = default if sep else None
    segs = tuple(names.split("."))
    if not names or not all(_SEGMENT.match(s) for s in segs):
        raise _TemplateSyntaxError(f"'{text}' is not a placeholder (names joined by '.')")
    head = segs[0]
    if head == "body" and len(segs) == 1:
        return Ref("body", "", (), text, fallback, omit)  # the whole incoming body
    if head in REQUEST_SOURCES:
        if len(segs) < 2:
            raise _TemplateSyntaxError(f"'{text}' needs a name, like {{{head}.NAME}}")
        name = segs[1].lower() if head == "header" else segs[1]
        return Ref(head, name, segs[2:], text, fallback, omit)  # type: ignore[arg-type]
    if head == "client" and len(segs) == 1 and head not in params:
        return Ref("client", "", (), text, fallback, omit)
    if head in params:
        if len(segs) > 1:
            raise _TemplateSyntaxError(f"'{text}': route parameter '{head}' has no fields")
        if sep or omit:
            raise _TemplateSyntaxError(f"'{text}': route parameter '{head}' is never missing, "
                                      "so it takes no ':-DEFAULT' or '?'")
        return Ref("param", head, (), text)
    if head in calls:
        return Ref("call", head, segs[1:], text, fallback, omit)
    raise _TemplateSyntaxError(f"'{text}' names neither a route parameter nor a call")


def usage_problem(ref: Ref, where: str, whole: bool) -> str | None:
    """Why `ref` cannot stand in a `where` template ("path", "batch_key", "query", "body").

    `whole` says the template is this one placeholder and nothing else. Checked at load,
    so a request never meets a template that could not work.
    """
    if ref.source == "body" and not ref.name and where != "body":
        return f"'{ref.text}' (the whole JSON body) only works in a body template; " \
               "use {body.FIELD}"
    if ref.omit and (where != "query" or not whole):
        return f"'{ref.text}' ('?': leave the parameter out) must be a whole query value"
    default = ref.default
    if default is None or where == "body":
        return None
    if any(ch in default for ch in _FORBIDDEN):
        return f"the default of '{ref.text}' contains CR, LF or NUL"
    if where == "path":  # refused exactly as a request value would be, once per request
        try:
            UrlTemplate((ref,), in_path=True).render(_NOTHING, "")
        except (RequestError, CallInputError) as exc:
            return f"the default of '{ref.text}' cannot be used in a path ({exc})"
    return None


@dataclass(frozen=True, slots=True)
class Inputs:
    """What placeholders read from: the incoming request and the replies so far."""

    params: Mapping[str, Any]
    query: Mapping[str, str]
    headers: HeaderMap
    body: Any
    results: Mapping[str, Any]
    claims: Mapping[str, Any] = field(default_factory=dict)  # the verified token's, for {jwt.CLAIM}
    client: str | None = None  # the limits' client key, for {client}


_MISSING: Any = object()
MISSING: Any = _MISSING  # what `find` returns for an absent (or null) value
_NOTHING = Inputs({}, {}, {}, None, {})


def find(ref: Ref, inputs: Inputs) -> Any:
    """The value a placeholder reads, or `MISSING` if it is absent or null (no default)."""
    if ref.source == "param":
        value = inputs.params.get(ref.name, _MISSING)
    elif ref.source == "query":
        value = inputs.query.get(ref.name, _MISSING)
    elif ref.source == "header":
        value = inputs.headers.get(ref.name, _MISSING)
    elif ref.source == "body":
        value = _dig(inputs.body, (ref.name,)) if ref.name else inputs.body
    elif ref.source == "jwt":
        value = inputs.claims.get(ref.name, _MISSING)
    elif ref.source == "client":
        value = _MISSING if inputs.client is None else inputs.client
    else:
        value = inputs.results.get(ref.name, _MISSING)
    if ref.path and value is not _MISSING:
        value = _dig(value, ref.path)
    return _MISSING if value is None else value


def lookup(ref: Ref, inputs: Inputs, call: str) -> Any:
    """The value a placeholder stands for, else its default; missing is a 400 or a failed call."""
    value = find(ref, inputs)
    if value is _MISSING:
        if ref.default is None:
            raise missing(ref, call)
        return ref.default
    return value


def missing(ref: Ref, call: str) -> RequestError | CallInputError:
    what = {
        "param": "route parameter",
        "query": "query parameter",
        "header": "header",
        "body": "body field",
        "call": "reply field",
        "jwt": "token claim",
        "client": "client key",
    }[ref.source]
    if ref.source == "body" and not ref.name:
        return RequestError(f"missing JSON body (needed by call '{call}')")
    shown = ref.text[1:-1] if ref.source in ("body", "call", "jwt", "client") else ref.name
    if ref.from_request or ref.source == "param":
        return RequestError(f"missing {what} '{shown}' (needed by call '{call}')")
    return CallInputError(f"call '{call}': {what} '{shown}' is missing")


def _dig(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def scalar_text(value: Any, ref: Ref, call: str) -> str:
    """A value as text for a URL; only scalars qualify, and never CR/LF/NUL."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str, UUID)):  # UUID: the `<uuid:...>` route converter
        text = str(value)
    else:
        raise _bad(ref, call, "is not a single value")
    if "\r" in text or "\n" in text or "\0" in text:  # _FORBIDDEN, without a generator
        raise _bad(ref, call, "contains CR, LF or NUL")
    return text


def _bad(ref: Ref, call: str, reason: str) -> RequestError | CallInputError:
    if ref.source == "call":
        return CallInputError(f"call '{call}': {ref.text} {reason}")
    return RequestError(f"value of {ref.text} {reason}")


@dataclass(frozen=True, slots=True)
class UrlTemplate:
    """A path or query value with placeholders; renders percent-encoded text."""

    parts: tuple[str | Ref, ...]
    in_path: bool

    @classmethod
    def parse(cls, text: str, params: tuple[str, ...], calls: tuple[str, ...],
              in_path: bool) -> UrlTemplate:
        return cls(tuple(parse_refs(text, params, calls)), in_path)

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    def omitted(self, inputs: Inputs) -> bool:
        """True for a `{X?}` query value whose X is missing: leave the parameter out."""
        parts = self.parts
        return (len(parts) == 1 and isinstance(parts[0], Ref) and parts[0].omit
                and find(parts[0], inputs) is _MISSING)

    def render(self, inputs: Inputs, call: str, encode: bool = True) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = lookup(part, inputs, call)
            if type(value) is int:  # the common `<int:id>`: digits, nothing to check or encode
                out.append(str(value))
                continue
            text = scalar_text(value, part, call)
            if self.in_path and (problem := path_value_problem(text)) is not None:
                raise _bad(part, call, problem)
            if encode and _UNRESERVED.fullmatch(text) is None:  # else quote() leaves it as is
                text = quote(text, safe="")
            out.append(text)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """A JSON body template; a string that is one placeholder keeps the value's JSON type."""

    shape: Any  # JSON with str leaves replaced by tuple[str | Ref, ...]

    @classmethod
    def parse(cls, raw: Any, params: tuple[str, ...], calls: tuple[str, ...]) -> BodyTemplate:
        return cls(_parse_body(raw, params, calls))

    @property
    def refs(self) -> tuple[Ref, ...]:
        found: list[Ref] = []
        _collect(self.shape, found)
        return tuple(found)

    def render(self, inputs: Inputs, call: str) -> Any:
        return _render_body(self.shape, inputs, call)


def _parse_body(raw: Any, params: tuple[str, ...], calls: tuple[str, ...]) -> Any:
    if isinstance(raw, str):
        parts = parse_refs(raw, params, calls)
        return tuple(parts) if any(isinstance(p, Ref) for p in parts) else raw
    if isinstance(raw, dict):
        return {k: _parse_body(v, params, calls) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_parse_body(v, params, calls) for v in raw]
    return raw


def _collect(shape: Any, found: list[Ref]) -> None:
    if isinstance(shape, tuple):
        found.extend(p for p in shape if isinstance(p, Ref))
    elif isinstance(shape, dict):
        for v in shape.values():
            _collect(v, found)
    elif isinstance(shape, list):
        for v in shape:
            _collect(v, found)


def _render_body(shape: Any, inputs: Inputs, call: str) -> Any:
    if isinstance(shape, tuple):
        if len(shape) == 1:
            return lookup(shape[0], inputs, call)
        out = []
        for part in shape:
            if isinstance(part, str):
                out.append(part)
            else:
                value = lookup(part, inputs, call)
                out.append(value if isinstance(value, str) else _text(value))
        return "".join(out)
    if isinstance(shape, dict):
        return {k: _render_body(v, inputs, call) for k, v in shape.items()}
    if isinstance(shape, list):
        return [_render_body(v, inputs, call) for v in shape]
    return shape


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, UUID)):
        return str(value)
    import orjson

    return orjson.dumps(value).decode()
