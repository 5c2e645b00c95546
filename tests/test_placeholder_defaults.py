"""Placeholder defaults (`{query.q:-all}`), omission (`{query.q?}`), `{body}` and `{CALL}`
whole, and optional calls skipped for a missing request value: the pure parts (template.py
parsing and substitution, config.py's load-time checks, plan.py's request checks)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import CallInputError, ConfigError, RequestError
from gateway.plan import Plan, compile_plans
from gateway.template import (
    MISSING,
    BodyTemplate,
    Inputs,
    Ref,
    UrlTemplate,
    _TemplateSyntaxError,
    find,
    lookup,
    parse_refs,
    usage_problem,
)

PARAMS = ("user_id",)
CALLS = ("user",)


def inputs(query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
           body: Any = None, results: dict[str, Any] | None = None) -> Inputs:
    return Inputs({"user_id": 7}, query or {}, headers or {}, body, results or {})


def value(text: str) -> UrlTemplate:
    return UrlTemplate.parse(text, PARAMS, CALLS, in_path=False)


def path(text: str) -> UrlTemplate:
    return UrlTemplate.parse(text, PARAMS, CALLS, in_path=True)


def one_ref(text: str) -> Ref:
    (ref,) = [p for p in parse_refs(text, PARAMS, CALLS) if isinstance(p, Ref)]
    return ref


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("{query.q:-all}", Ref("query", "q", (), "{query.q:-all}", "all")),
        ("{query.q:-}", Ref("query", "q", (), "{query.q:-}", "")),
        ("{query.q?}", Ref("query", "q", (), "{query.q?}", None, True)),
        ("{header.X-Tier:-free}", Ref("header", "x-tier", (), "{header.X-Tier:-free}", "free")),
        ("{body.a.b:-x}", Ref("body", "a", ("b",), "{body.a.b:-x}", "x")),
        ("{body}", Ref("body", "", (), "{body}")),
        ("{body:-none}", Ref("body", "", (), "{body:-none}", "none")),
        ("{user}", Ref("call", "user", (), "{user}")),
        ("{user.nick:-anon}", Ref("call", "user", ("nick",), "{user.nick:-anon}", "anon")),
        ("{user.nick?}", Ref("call", "user", ("nick",), "{user.nick?}", None, True)),
        # The default is free text up to the closing brace (split at the first ':-').
        ("{query.q:-a:-b}", Ref("query", "q", (), "{query.q:-a:-b}", "a:-b")),
        ("{query.q:-two words/?#}", Ref("query", "q", (), "{query.q:-two words/?#}",
                                        "two words/?#")),
        ("{query.q:-x?}", Ref("query", "q", (), "{query.q:-x?}", "x?")),
    ],
)
def test_defaults_and_omission_parse(text: str, ref: Ref) -> None:
    assert one_ref(text) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{user_id:-1}", "'{user_id:-1}': route parameter 'user_id' is never missing, so it "
                         "takes no ':-DEFAULT' or '?'"),
        ("{user_id?}", "'{user_id?}': route parameter 'user_id' is never missing, so it "
                       "takes no ':-DEFAULT' or '?'"),
        ("{query.q?x}", "'{query.q?x}' is not a placeholder (names joined by '.')"),
        ("{query.q??}", "'{query.q??}' is not a placeholder (names joined by '.')"),
        ("{:-x}", "'{:-x}' is not a placeholder (names joined by '.')"),
        ("{?}", "'{?}' is not a placeholder (names joined by '.')"),
        ("{query:-x}", "'{query:-x}' needs a name, like {query.NAME}"),
        ("{nobody?}", "'{nobody?}' names neither a route parameter nor a call"),
    ],
)
def test_malformed_defaults_are_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(_TemplateSyntaxError) as info:
        parse_refs(text, PARAMS, CALLS)
    assert str(info.value) == message


# -- substitution ---------------------------------------------------------------------------


def test_default_is_used_only_when_the_value_is_missing() -> None:
    t = value("{query.q:-all}")
    assert t.render(inputs(), "c") == "all"
    assert t.render(inputs({"q": "shoes"}), "c") == "shoes"
    assert t.render(inputs({"q": ""}), "c") == ""  # present but empty is present


def test_default_is_percent_encoded_like_any_value() -> None:
    assert value("{query.q:-two words/?#}").render(inputs(), "c") == "two%20words%2F%3F%23"
    assert path("/s/{header.x-tier:-free plan}").render(inputs(), "c") == "/s/free%20plan"


def test_null_reply_field_takes_the_default() -> None:
    t = value("{user.nick:-anon}")
    assert t.render(inputs(results={"user": {"nick": None}}), "c") == "anon"
    assert t.render(inputs(results={"user": {}}), "c") == "anon"
    assert t.render(inputs(results={"user": {"nick": "ada"}}), "c") == "ada"


def test_without_a_default_missing_is_still_an_error() -> None:
    with pytest.raises(RequestError, match="missing query parameter 'q'"):
        value("{query.q}").render(inputs(), "c")
    with pytest.raises(CallInputError, match=r"reply field 'user\.nick' is missing"):
        value("{user.nick}").render(inputs(results={"user": {}}), "c")


def test_omitted_only_when_the_value_is_missing() -> None:
    t = value("{query.q?}")
    assert t.omitted(inputs())
    assert not t.omitted(inputs({"q": ""}))
    assert not t.omitted(inputs({"q": "x"}))
    assert t.render(inputs({"q": "a b"}), "c") == "a%20b"
    assert not value("{query.q}").omitted(inputs())  # no '?': a 400 elsewhere, not omitted


def test_find_says_missing_without_raising() -> None:
    assert find(one_ref("{query.q:-x}"), inputs()) is MISSING
    assert lookup(one_ref("{query.q:-x}"), inputs(), "c") == "x"
    assert find(one_ref("{body}"), inputs(body=None)) is MISSING


def test_whole_body_and_whole_reply_keep_their_json_type() -> None:
    t = BodyTemplate.parse({"order": "{body}", "owner": "{user}", "n": 1}, PARAMS, CALLS)
    got = t.render(inputs(body={"items": [1, 2], "note": None},
                          results={"user": {"id": 7, "tags": ["a"]}}), "c")
    assert got == {"order": {"items": [1, 2], "note": None},
                   "owner": {"id": 7, "tags": ["a"]}, "n": 1}
    assert BodyTemplate.parse("{body}", PARAMS, CALLS).render(inputs(body=[1, "x"]), "c") == \
        [1, "x"]


def test_whole_body_inside_a_longer_string_is_json_text() -> None:
    t = BodyTemplate.parse("got {body}", PARAMS, CALLS)
    assert t.render(inputs(body={"a": 1}), "c") == 'got {"a":1}'


def test_missing_whole_body_is_a_400_unless_defaulted() -> None:
    with pytest.raises(RequestError) as info:
        BodyTemplate.parse({"o": "{body}"}, PARAMS, CALLS).render(inputs(), "create")
    assert str(info.value) == "missing JSON body (needed by call 'create')"
    t = BodyTemplate.parse({"o": "{body:-none}"}, PARAMS, CALLS)
    assert t.render(inputs(), "c") == {"o": "none"}


def test_a_body_default_is_text() -> None:
    t = BodyTemplate.parse({"n": "{body.n:-5}"}, PARAMS, CALLS)
    assert t.render(inputs(body={}), "c") == {"n": "5"}
    assert t.render(inputs(body={"n": 9}), "c") == {"n": 9}


# -- where each form may stand ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "whole", "problem"),
    [
        ("{body}", "path", False,
         "'{body}' (the whole JSON body) only works in a body template; use {body.FIELD}"),
        ("{body}", "query", True,
         "'{body}' (the whole JSON body) only works in a body template; use {body.FIELD}"),
        ("{query.q?}", "path", False,
         "'{query.q?}' ('?': leave the parameter out) must be a whole query value"),
        ("{query.q?}", "query", False,
         "'{query.q?}' ('?': leave the parameter out) must be a whole query value"),
        ("{query.q?}", "body", False,
         "'{query.q?}' ('?': leave the parameter out) must be a whole query value"),
        ("{query.q?}", "batch_key", True,
         "'{query.q?}' ('?': leave the parameter out) must be a whole query value"),
        ("{query.q:-a\nb}", "query", True,
         "the default of '{query.q:-a\nb}' contains CR, LF or NUL"),
        ("{query.q:-..}", "path", False,
         "the default of '{query.q:-..}' cannot be used in a path (value of {query.q:-..} is a "
         "'.' or '..' path segment)"),
        ("{query.q:-}", "path", False,
         "the default of '{query.q:-}' cannot be used in a path (value of {query.q:-} is empty "
         "(an empty path segment))"),
    ],
)
def test_misplaced_forms_are_refused(text: str, where: str, whole: bool, problem: str) -> None:
    assert usage_problem(one_ref(text), where, whole) == problem


@pytest.mark.parametrize(
    ("text", "where", "whole"),
    [("{body}", "body", False), ("{query.q?}", "query", True), ("{query.q:-}", "query", True),
     ("{query.q:-a\nb}", "body", False), ("{query.q:-..}", "query", True),
     ("{query.q:-v1}", "path", False), ("{user}", "body", False)],
)
def test_well_placed_forms_pass(text: str, where: str, whole: bool) -> None:
    assert usage_problem(one_ref(text), where, whole) is None


# -- config: checked at load with the key path -----------------------------------------------------


def config(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"upstreams": {"u": {"url": "http://127.0.0.1:9001"}},
            "endpoints": [{"route": "/r/<int:user_id>", "calls": list(calls)}]}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return info.value.problems


def test_misplaced_forms_are_config_errors_with_their_key_path() -> None:
    raw = config(
        {"name": "a", "upstream": "u", "path": "/a/{query.q?}"},
        {"name": "b", "upstream": "u", "path": "/b", "query": {"q": "x{query.q?}"}},
        {"name": "c", "upstream": "u", "path": "/c/{body}"},
        {"name": "d", "upstream": "u", "path": "/d/{header.v:-..}"},
        {"name": "e", "upstream": "u", "path": "/e/{user_id:-1}"},
        {"name": "f", "upstream": "u", "path": "/f", "method": "POST", "body": {"x": "{body.x?}"}},
    )
    assert problems(raw) == [
        "endpoints[0].calls[0].path: '{query.q?}' ('?': leave the parameter out) must be a "
        "whole query value",
        "endpoints[0].calls[1].query.q: '{query.q?}' ('?': leave the parameter out) must be a "
        "whole query value",
        "endpoints[0].calls[2].path: '{body}' (the whole JSON body) only works in a body "
        "template; use {body.FIELD}",
        "endpoints[0].calls[3].path: the default of '{header.v:-..}' cannot be used in a path "
        "(value of {header.v:-..} is a '.' or '..' path segment)",
        "endpoints[0].calls[4].path: '{user_id:-1}': route parameter 'user_id' is never "
        "missing, so it takes no ':-DEFAULT' or '?'",
        "endpoints[0].calls[5].body: '{body.x?}' ('?': leave the parameter out) must be a "
        "whole query value",
    ]


def test_well_placed_forms_load() -> None:
    raw = config({"name": "a", "upstream": "u", "path": "/a/{query.v:-v1}",
                  "query": {"q": "{query.q?}", "sort": "{query.sort:-name}"},
                  "method": "POST", "body": {"all": "{body}", "n": "{body.n:-1}"}},
                 {"name": "b", "upstream": "u", "path": "/b", "method": "POST",
                  "body": "{a}"})
    assert [c.name for c in parse_config(raw, env={}).endpoints[0].calls] == ["a", "b"]


# -- plan: request checks, omission, skipping -------------------------------------------------


def plan_of(*calls: dict[str, Any]) -> Plan:
    (plan,) = compile_plans(parse_config(config(*calls), env={}))
    return plan


def test_defaulted_and_omittable_values_need_not_be_sent() -> None:
    plan = plan_of({"name": "a", "upstream": "u", "path": "/a/{query.v:-v1}",
                    "query": {"q": "{query.q?}", "sort": "{query.sort:-name}"}})
    plan.check_request(inputs())  # no 400
    (a,) = plan.calls
    assert a.render_url(inputs()) == "/a/v1?sort=name"
    assert a.render_url(inputs({"q": "x y", "sort": "date", "v": "v2"})) == \
        "/a/v2?q=x%20y&sort=date"
    assert not a.skipped(inputs())


def test_every_parameter_omitted_leaves_no_question_mark() -> None:
    plan = plan_of({"name": "a", "upstream": "u", "path": "/a",
                    "query": {"q": "{query.q?}", "p": "{header.p?}"}})
    assert plan.calls[0].render_url(inputs()) == "/a"
    assert plan.calls[0].render_url(inputs(headers={"p": "1"})) == "/a?p=1"


def test_required_call_missing_a_value_is_still_a_400() -> None:
    plan = plan_of({"name": "a", "upstream": "u", "path": "/a", "query": {"q": "{query.q}"}})
    with pytest.raises(RequestError, match=r"missing query parameter 'q' \(needed by call 'a'\)"):
        plan.check_request(inputs())


def test_optional_call_missing_a_value_is_skipped_not_a_400() -> None:
    plan = plan_of(
        {"name": "a", "upstream": "u", "path": "/a"},
        {"name": "b", "upstream": "u", "path": "/b/{header.x-tier}", "optional": True,
         "default": [], "query": {"q": "{query.q}", "s": "{query.s:-1}", "o": "{query.o?}"}},
    )
    plan.check_request(inputs())  # no 400
    a, b = plan.calls
    assert not a.skipped(inputs())
    assert b.skipped(inputs({"q": "x"}))  # the header is missing
    assert b.skipped(inputs(headers={"x-tier": "pro"}))  # the query value is missing
    assert not b.skipped(inputs({"q": "x"}, {"x-tier": "pro"}))  # defaults and '?' never skip
    # Only request values without a default or '?' can make it skip.
    assert {r.text for r in b.skip_unless} == {"{header.x-tier}", "{query.q}"}


def test_optional_call_with_a_present_but_bad_value_is_still_a_400() -> None:
    plan = plan_of({"name": "b", "upstream": "u", "path": "/b/{query.q}", "optional": True})
    with pytest.raises(RequestError, match=r"is a '\.' or '\.\.' path segment"):
        plan.check_request(inputs({"q": ".."}))
    with pytest.raises(RequestError, match="contains CR, LF or NUL"):
        plan.check_request(inputs({"q": "a\nb"}))


def test_a_reply_value_never_makes_a_call_skip() -> None:
    plan = plan_of({"name": "user", "upstream": "u", "path": "/u"},
                   {"name": "b", "upstream": "u", "path": "/b/{user.id}", "optional": True})
    assert plan.calls[1].skip_unless == ()
    assert plan.calls[1].deps == ("user",)


def test_call_labels_name_the_endpoint_for_the_breakers_messages() -> None:
    plan = plan_of({"name": "a", "upstream": "u", "path": "/a"},
                   {"name": "b", "upstream": "u", "path": "/b", "optional": True})
    assert [c.label for c in plan.calls] == ["call 'a' of GET /r/<int:user_id>",
                                              "optional call 'b' of GET /r/<int:user_id>"]
