"""benchmarks/configs.py and the A/B's variants: one key changed, the rest of the config kept."""

from __future__ import annotations

import tomllib
from pathlib import Path

import ab
import configs
import pytest

from gateway.config import load_config

BASE = Path(__file__).resolve().parent.parent / "benchmarks" / "gateway.toml"


def test_variants_differ_only_in_the_key_and_both_load() -> None:
    texts = ab.variants(BASE, ["limits.rate"], ["1000/second"], [configs.ABSENT])
    off, on = tomllib.loads(texts["off"]), tomllib.loads(texts["on"])
    assert "limits" not in off
    assert on["limits"] == {"rate": "1000/second"}
    on.pop("limits")
    assert on == off == configs.load(BASE)
    env = {"UPSTREAM": "http://127.0.0.1:9"}
    for text in texts.values():
        assert len(load_config(tomllib.loads(text), env=env).endpoints) == 1


def test_star_index_sets_every_item_and_values_are_toml() -> None:
    config = configs.load(BASE)
    configs.set_key(config, "endpoints[*].calls[*].timeout", configs.parse_value("2.5"))
    configs.set_key(config, "auth", configs.parse_value('{ secret = "s", required = true }'))
    configs.set_key(config, "gateway.dashboard", configs.parse_value("false"))
    assert [c["timeout"] for c in config["endpoints"][0]["calls"]] == [2.5, 2.5, 2.5]
    assert config["auth"] == {"secret": "s", "required": True}
    assert config["gateway"]["dashboard"] is False
    assert tomllib.loads(configs.dumps(config)) == config  # the writer round-trips


def test_absent_removes_and_bad_paths_are_refused() -> None:
    config = configs.load(BASE)
    configs.set_key(config, "gateway.deadline", configs.ABSENT)
    assert "deadline" not in config["gateway"]
    with pytest.raises(ValueError, match=r"endpoints\[5\] does not exist"):
        configs.set_key(config, "endpoints[5].auth", True)
    with pytest.raises(ValueError, match="not a table"):
        configs.set_key(config, "gateway.strategy.x", 1)
    with pytest.raises(ValueError, match="must be a key"):
        configs.set_key(config, "endpoints[0]", 1)


def test_strings_with_quotes_and_newlines_survive_the_writer() -> None:
    config = {"gateway": {"x": 'a "b"\n\\c'}, "upstreams": {"a.b": {"url": "http://h"}}}
    assert tomllib.loads(configs.dumps(config)) == config
