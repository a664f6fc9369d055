"""Dataclass configs from YAML files or dicts: nested sections, types checked, unknown keys named with the valid ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from puyu.config_files import apply_override, build, read_yaml
from puyu.errors import ConfigError


@dataclass
class Inner:
    r: int = 8
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    model: str
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_a_dict_builds_nested_dataclasses_with_types_checked():
    built = build(Outer, {"model": "m", "inner": {"r": "4", "names": "a"}, "extra": {"k": None}}, "test")
    assert built == Outer("m", Inner(4, ["a"]), None, {"k": None})
    with pytest.raises(ConfigError, match=r"^test: unknown keys \['inner.rank'\]; valid keys in inner: r, names$"):
        build(Outer, {"model": "m", "inner": {"rank": 4}}, "test")
    with pytest.raises(ConfigError, match=r"^judge: unknown keys \['temperature'\]; valid keys: model, inner, limit, extra$"):
        build(Outer, {"model": "m", "temperature": 0.7}, "judge")
    with pytest.raises(ConfigError, match="test: key 'inner.r' must be int, got 'four'"):
        build(Outer, {"model": "m", "inner": {"r": "four"}}, "test")
    with pytest.raises(ConfigError, match="test: key 'model' cannot be empty"):
        build(Outer, {"model": None}, "test")


def test_yaml_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ninner: {r: 2}\n")
    values = read_yaml(path)
    apply_override(values, "inner.names=[x, y]")
    assert build(Outer, values, str(path)).inner == Inner(2, ["x", "y"])
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping of recipe keys"):
        read_yaml(path, "recipe")
    with pytest.raises(ConfigError, match="no such recipe file"):
        read_yaml(tmp_path / "missing.yaml", "recipe")
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_override(values, "inner.r")
