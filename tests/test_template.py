"""template.py: placeholder parsing, lookup, percent-encoding and JSON body rendering."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from gateway.context import HeaderMap
from gateway.errors import CallInputError, RequestError
from gateway.template import (
    BodyTemplate,
    Inputs,
    Ref,
    UrlTemplate,
    _TemplateSyntaxError,
    parse_refs,
    path_value_problem,
)

PARAMS = ("user_id", "slug")
CALLS = ("user", "feed")


def inputs(params: Mapping[str, Any] | None = None, query: Mapping[str, str] | None = None,
           headers: HeaderMap | None = None, body: Any = None,
           results: Mapping[str, Any] | None = None) -> Inputs:
    return Inputs(params or {}, query or {}, headers or {}, body, results or {})


def path(text: str) -> UrlTemplate:
    return UrlTemplate.parse(text, PARAMS, CALLS, in_path=True)


def value(text: str) -> UrlTemplate:
    return UrlTemplate.parse(text, PARAMS, CALLS, in_path=False)


def body(raw: Any) -> BodyTemplate:
    return BodyTemplate.parse(raw, PARAMS, CALLS)


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("{user_id}", Ref("param", "user_id", (), "{user_id}")),
        ("{query.verbose}", Ref("query", "verbose", (), "{query.verbose}")),
        ("{header.X-Client-Id}", Ref("header", "x-client-id", (), "{header.X-Client-Id}")),
        ("{body.order.id}", Ref("body", "order", ("id",), "{body.order.id}")),
        ("{user.account_id}", Ref("call", "user", ("account_id",), "{user.account_id}")),
        ("{feed.items.0.id}", Ref("call", "feed", ("items", "0", "id"), "{feed.items.0.id}")),
        ("{user}", Ref("call", "user", (), "{user}")),
    ],
)
def test_each_placeholder_resolves_to_its_source(text: str, ref: Ref) -> None:
    assert parse_refs(text, PARAMS, CALLS) == [ref]


def test_literal_text_is_kept_between_placeholders() -> None:
    parts = parse_refs("/u/{user_id}/x-{slug}.json", PARAMS, CALLS)
    assert [p if isinstance(p, str) else p.name for p in parts] == [
        "/u/", "user_id", "/x-", "slug", ".json"]


def test_request_refs_are_from_request_and_call_refs_are_not() -> None:
    refs = [r for r in parse_refs("{query.a}{header.b}{body.c}{user_id}{user.x}", PARAMS, CALLS)
            if isinstance(r, Ref)]
    assert [r.from_request for r in refs] == [True, True, True, True, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/{}", "'{}' is not a placeholder (names joined by '.')"),
        ("/{user id}", "'{user id}' is not a placeholder (names joined by '.')"),
        ("/{user..id}", "'{user..id}' is not a placeholder (names joined by '.')"),
        ("/{query}", "'{query}' needs a name, like {query.NAME}"),
        ("/{header}", "'{header}' needs a name, like {header.NAME}"),
        ("/{user_id.x}", "'{user_id.x}': route parameter 'user_id' has no fields"),
        ("/{nobody.id}", "'{nobody.id}' names neither a route parameter nor a call"),
        ("/{user", "unbalanced '{' or '}' in '/{user'"),
        ("/user}", "unbalanced '{' or '}' in '/user}'"),
        ("/{{user}}", "unbalanced '{' or '}' in '/{{user}}'"),
    ],
)
def test_malformed_placeholders_are_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(_TemplateSyntaxError) as info:
        parse_refs(text, PARAMS, CALLS)
    assert str(info.value) == message


# -- lookup from every source -------------------------------------------------------------------


def test_every_source_is_substituted() -> None:
    t = path("/{user_id}/{query.q}/{header.x-tenant}/{body.order.id}/{user.account_id}")
    got = t.render(inputs(params={"user_id": 7}, query={"q": "shoes"},
                          headers={"x-tenant": "acme"}, body={"order": {"id": 42}},
                          results={"user": {"account_id": "A-1"}}), "c")
    assert got == "/7/shoes/acme/42/A-1"


def test_headers_are_looked_up_case_insensitively() -> None:
    t = value("{header.X-Tenant}")
    assert t.render(inputs(headers=Headers({"x-TENANT": "acme"})), "c") == "acme"


def test_list_indexes_reach_into_replies() -> None:
    t = path("/items/{feed.items.1.id}")
    feed = {"items": [{"id": "a"}, {"id": "b"}]}
    assert t.render(inputs(results={"feed": feed}), "c") == "/items/b"


def test_list_index_out_of_range_is_a_failed_call() -> None:
    t = path("/items/{feed.items.5.id}")
    with pytest.raises(CallInputError, match=r"'feed\.items\.5\.id' is missing"):
        t.render(inputs(results={"feed": {"items": [{"id": "a"}]}}), "c")


def test_a_field_name_on_a_list_is_missing() -> None:
    with pytest.raises(CallInputError):
        path("/x/{feed.items.id}").render(inputs(results={"feed": {"items": [{"id": 1}]}}), "c")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{user_id}", "missing route parameter 'user_id' (needed by call 'orders')"),
        ("{query.page}", "missing query parameter 'page' (needed by call 'orders')"),
        ("{header.x-tenant}", "missing header 'x-tenant' (needed by call 'orders')"),
        ("{body.order.id}", "missing body field 'body.order.id' (needed by call 'orders')"),
    ],
)
def test_missing_request_value_is_a_400(template: str, message: str) -> None:
    with pytest.raises(RequestError) as info:
        value(template).render(inputs(body={"order": {}}), "orders")
    assert (info.value.status, str(info.value)) == (400, message)


def test_missing_reply_field_is_a_failed_call_not_a_400() -> None:
    with pytest.raises(CallInputError) as info:
        path("/a/{user.account_id}").render(inputs(results={"user": {"id": 1}}), "account")
    assert type(info.value) is CallInputError  # not a RequestError: the request was fine
    assert str(info.value) == "call 'account': reply field 'user.account_id' is missing"


def test_null_counts_as_missing() -> None:
    with pytest.raises(CallInputError):
        path("/a/{user.account_id}").render(inputs(results={"user": {"account_id": None}}), "c")
    with pytest.raises(RequestError):
        body("{body.x}").render(inputs(body={"x": None}), "c")


# -- encoding: a value is one path segment or one query value ------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("a/b", "a%2Fb"),
        ("..%2Fadmin", "..%252Fadmin"),
        ("a?x=1", "a%3Fx%3D1"),
        ("a#frag", "a%23frag"),
        ("me@evil.example", "me%40evil.example"),
        ("100%", "100%25"),
        ("%2e%2e", "%252e%252e"),
        ("a b&c=d+e", "a%20b%26c%3Dd%2Be"),
        ("Zoë 東京", "Zo%C3%AB%20%E6%9D%B1%E4%BA%AC"),
        ("...", "..."),
    ],
)
def test_values_are_percent_encoded_as_one_segment(raw: str, encoded: str) -> None:
    t = path("/users/{query.id}/orders")
    assert t.render(inputs(query={"id": raw}), "c") == f"/users/{encoded}/orders"


@pytest.mark.parametrize(("raw", "text"), [(True, "true"), (False, "false"), (7, "7"),
                                           (-2.5, "-2.5"), (uuid.UUID(int=1),
                                                            "00000000-0000-0000-0000-000000000001")])
def test_scalars_render_as_text(raw: Any, text: str) -> None:
    assert path("/{user_id}").render(inputs(params={"user_id": raw}), "c") == f"/{text}"


def test_render_without_encoding_keeps_the_raw_text() -> None:
    assert value("{query.k}").render(inputs(query={"k": "a/b c"}), "c", encode=False) == "a/b c"


_SAFE_TEXT = st.text().filter(
    lambda s: s != "" and not any(seg in (".", "..") for seg in s.split("/"))
    and not any(c in s for c in "\r\n\0")
)


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_empty_or_dot_path_value_is_refused(value: str) -> None:
    with pytest.raises(RequestError, match=r"is empty|is a '\.' or '\.\.' path segment"):
        path("/users/{query.id}").render(inputs(query={"id": value}), "c")
    with pytest.raises(CallInputError):
        path("/a/{user.id}/b").render(inputs(results={"user": {"id": value}}), "c")


@settings(max_examples=300, deadline=None)
@given(raw=_SAFE_TEXT)
def test_any_text_stays_inside_its_path_segment(raw: str) -> None:
    rendered = path("/users/{query.id}").render(inputs(query={"id": raw}), "c")
    assert rendered.startswith("/users/")
    segment = rendered.removeprefix("/users/")
    assert not any(ch in segment for ch in "/?#@")
    assert unquote(segment, errors="strict") == raw


@settings(max_examples=100, deadline=None)
@given(raw=_SAFE_TEXT)
def test_any_reply_value_stays_inside_its_path_segment(raw: str) -> None:
    rendered = path("/a/{user.id}/b").render(inputs(results={"user": {"id": raw}}), "c")
    head, segment, tail = rendered.split("/")[1:]
    assert (head, tail) == ("a", "b")
    assert unquote(segment) == raw


@pytest.mark.parametrize("dots", [".", ".."])
def test_dot_segments_from_the_request_are_a_400(dots: str) -> None:
    with pytest.raises(RequestError, match=r"is a '\.' or '\.\.' path segment"):
        path("/files/{query.name}").render(inputs(query={"name": dots}), "c")


@pytest.mark.parametrize("dots", [".", ".."])
def test_dot_segments_from_a_reply_fail_the_call(dots: str) -> None:
    with pytest.raises(CallInputError, match=r"is a '\.' or '\.\.' path segment"):
        path("/files/{user.dir}").render(inputs(results={"user": {"dir": dots}}), "c")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is empty"),
        (".", "is a '.' or '..'"),
        ("..", "is a '.' or '..'"),
        ("../admin", "holds a '.' or '..'"),
        ("a/../../etc", "holds a '.' or '..'"),
        ("a/./b", "holds a '.' or '..'"),
        ("a/..", "holds a '.' or '..'"),
        ("/..", "holds a '.' or '..'"),
        ("a", None),
        ("a/b", None),
        ("...", None),
        ("a..b/..c/.d", None),
        ("%2e%2e/x", None),  # the client's encoding is decoded once, by the server: text
        ("a//b", None),
        ("..\\x", None),  # split on '/' only, as a URL is
    ],
)
def test_path_value_problem_names_empty_values_and_dot_segments(
    text: str, problem: str | None
) -> None:
    found = path_value_problem(text)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize("value", ["../admin", "a/../../etc", "x/./y", "a/.."])
def test_a_dot_segment_inside_a_path_value_is_refused(value: str) -> None:
    with pytest.raises(RequestError, match=r"holds a '\.' or '\.\.' path segment"):
        path("/files/{query.name}").render(inputs(query={"name": value}), "c")
    with pytest.raises(RequestError, match=r"holds a '\.' or '\.\.' path segment"):
        path("/files/{slug}").render(inputs(params={"slug": value}), "c")
    with pytest.raises(CallInputError, match=r"holds a '\.' or '\.\.' path segment"):
        path("/files/{user.dir}").render(inputs(results={"user": {"dir": value}}), "c")


def test_dot_segments_are_fine_in_a_query_value() -> None:
    assert value("{query.v}").render(inputs(query={"v": "../../x"}), "c") == "..%2F..%2Fx"


def test_dots_are_fine_in_a_query_value() -> None:
    assert value("{query.v}").render(inputs(query={"v": ".."}), "c") == ".."


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\0b", "\r\n"])
def test_cr_lf_nul_from_the_request_are_a_400(bad: str) -> None:
    with pytest.raises(RequestError, match="contains CR, LF or NUL"):
        value("{query.v}").render(inputs(query={"v": bad}), "c")


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\0b"])
def test_cr_lf_nul_from_a_reply_fail_the_call(bad: str) -> None:
    with pytest.raises(CallInputError, match="contains CR, LF or NUL"):
        path("/x/{user.name}").render(inputs(results={"user": {"name": bad}}), "c")


@pytest.mark.parametrize("non_scalar", [{"a": 1}, [1, 2], b"bytes"])
def test_objects_and_lists_cannot_go_into_a_url(non_scalar: Any) -> None:
    with pytest.raises(CallInputError, match="is not a single value"):
        path("/x/{user.v}").render(inputs(results={"user": {"v": non_scalar}}), "c")
    with pytest.raises(RequestError, match="is not a single value"):
        path("/x/{body.v}").render(inputs(body={"v": non_scalar}), "c")


# -- JSON body templates ------------------------------------------------------------------------


@pytest.mark.parametrize("kept", [7, 2.5, True, False, "text", {"a": [1, 2]}, [1, "x"], 0, ""])
def test_whole_string_placeholder_keeps_the_json_type(kept: Any) -> None:
    assert body({"v": "{body.v}"}).render(inputs(body={"v": kept}), "c") == {"v": kept}


@pytest.mark.parametrize(
    ("raw", "text"),
    [(7, "id-7"), (2.5, "id-2.5"), (True, "id-true"), ("ab", "id-ab"),
     ({"a": 1}, 'id-{"a":1}'), ([1, 2], "id-[1,2]"),
     (uuid.UUID(int=2), "id-00000000-0000-0000-0000-000000000002")],
)
def test_embedded_placeholder_is_inserted_as_text(raw: Any, text: str) -> None:
    assert body("id-{user_id}").render(inputs(params={"user_id": raw}), "c") == text


def test_body_values_are_not_percent_encoded() -> None:
    got = body({"path": "{query.p}", "note": "see {query.p}"}).render(
        inputs(query={"p": "a/b?c#d@e"}), "c")
    assert got == {"path": "a/b?c#d@e", "note": "see a/b?c#d@e"}


def test_nested_body_is_rendered_and_literals_are_kept() -> None:
    t = body({"owner": {"id": "{user.id}", "tags": ["{user.tags}", "fixed", 3, None, False]},
              "n": 1.5})
    got = t.render(inputs(results={"user": {"id": 9, "tags": ["x"]}}), "c")
    assert got == {"owner": {"id": 9, "tags": [["x"], "fixed", 3, None, False]}, "n": 1.5}
    assert [r.text for r in t.refs] == ["{user.id}", "{user.tags}"]


def test_body_placeholders_missing_from_the_request_or_a_reply() -> None:
    with pytest.raises(RequestError):
        body({"a": "{body.a}"}).render(inputs(body=[]), "c")
    with pytest.raises(CallInputError):
        body({"a": "x {user.a}"}).render(inputs(results={"user": {}}), "c")


def test_body_list_indexes_work_on_the_incoming_body() -> None:
    assert body("{body.items.0}").render(inputs(body={"items": ["first"]}), "c") == "first"
