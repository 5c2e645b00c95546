"""guard.py as plain functions: the JSON depth bound and the framing checks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import RequestError
from gateway.guard import (
    MAX_HEADER_BYTES,
    MAX_REPLY_DEPTH,
    MAX_REQUEST_DEPTH,
    MAX_TARGET_BYTES,
    _TooDeep,
    bounded_body,
    framing_problem,
    loads_reply,
    too_deep,
)


def depth(value: Any) -> int:
    """The reference: levels of nested objects/arrays (a scalar is 0, `[]` is 1)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def chain(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(min_value=1, max_value=12))
def test_too_deep_agrees_with_the_reference_walk(value: Any, limit: int) -> None:
    expected = depth(value) > limit
    assert too_deep(value, limit) == expected
    assert too_deep(value, limit, orjson.dumps(value)) == expected  # the bracket-count shortcut


@settings(max_examples=60, deadline=None)
@given(levels=st.integers(min_value=0, max_value=400), limit=st.sampled_from([
    1, MAX_REQUEST_DEPTH, MAX_REPLY_DEPTH, 200]))
def test_too_deep_is_exact_at_every_depth_orjson_can_hold(levels: int, limit: int) -> None:
    value = chain(levels)
    if levels > 254:  # past what orjson encodes: only "too deep" is possible, and it is
        assert too_deep(value, limit)
    else:
        assert too_deep(value, limit) == (levels > limit)


def test_an_unencodable_value_is_not_called_too_deep() -> None:
    assert not too_deep([2**70], 5)  # orjson.loads never yields one (it makes a float)


@pytest.mark.parametrize("value", [None, 1, "x", 1.5, True, [], {}])
def test_scalars_and_empty_containers_are_never_too_deep(value: Any) -> None:
    assert not too_deep(value, 1)


def test_bounded_body_refuses_one_level_past_the_limit() -> None:
    assert bounded_body(chain(MAX_REQUEST_DEPTH)) == chain(MAX_REQUEST_DEPTH)
    with pytest.raises(RequestError, match=f"deeper than {MAX_REQUEST_DEPTH} levels") as info:
        bounded_body(chain(MAX_REQUEST_DEPTH + 1))
    assert info.value.status == 400


def test_loads_reply_parses_and_bounds() -> None:
    assert loads_reply(orjson.dumps(chain(MAX_REPLY_DEPTH))) == chain(MAX_REPLY_DEPTH)
    with pytest.raises(_TooDeep):
        loads_reply(orjson.dumps(chain(MAX_REPLY_DEPTH + 1)))
    with pytest.raises(orjson.JSONDecodeError):
        loads_reply(b"[" * 2000)


@pytest.mark.parametrize(
    ("headers", "target", "status"),
    [
        ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], 1, 400),
        ([(b"Transfer-Encoding", b"gzip, chunked"), (b"CONTENT-LENGTH", b"0")], 1, 400),
        ([(b"x-a", b"v\r\nx-b: 1")], 1, 400),
        ([(b"x-a", b"\x00")], 1, 400),
        ([(b"x-a", b"a" * MAX_HEADER_BYTES)], 1, 431),
        ([(b"x-a", b"a")] * (MAX_HEADER_BYTES // 6), 1, 431),
        ([], MAX_TARGET_BYTES + 1, 414),
    ],
)
def test_framing_problem_refuses(headers: list[tuple[bytes, bytes]], target: int,
                                 status: int) -> None:
    problem = framing_problem(headers, target)
    assert problem is not None
    assert problem[0] == status
    assert "\n" not in problem[1]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-length", b"10")],
        [(b"transfer-encoding", b"chunked")],
        [(b"x-a", b"caf\xc3\xa9\t\xff")],  # tab and obs-text are legal field content
        [(b"x-a", b"a" * (MAX_HEADER_BYTES - 8))],
    ],
)
def test_framing_problem_passes_what_is_legal(headers: list[tuple[bytes, bytes]]) -> None:
    assert framing_problem(headers, MAX_TARGET_BYTES) is None


@pytest.mark.parametrize("path", ["/items/a\r\nb", "/items/\n", "/x\x00", "/files/a/\r/b"])
def test_framing_problem_refuses_a_decoded_path_holding_cr_lf_or_nul(path: str) -> None:
    assert framing_problem([], len(path), path) == (
        400, "request path holds CR, LF or NUL (percent-decoded)")


@pytest.mark.parametrize("path", ["/items/a b", "/items/%0d%0a", "/caf\u00e9\t", "/"])
def test_framing_problem_passes_other_paths(path: str) -> None:
    assert framing_problem([], len(path), path) is None
