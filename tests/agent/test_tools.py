"""Tools: schemas from hints and docstrings, structured errors, and the built-in tools' behaviour."""

from __future__ import annotations

import json
import os
from typing import Literal

import pytest

from puyu.agent import PythonSandbox, ToolRegistry, builtin_tools, calculator, solve, tool
from puyu.agent.builtin_tools import file_reader_tool, python_tool
from puyu.errors import ConfigError


@tool
def convert(amount: float, unit: Literal["km", "mi"], tags: list[str] | None = None, exact: bool = False) -> dict:
    """Convert a distance.

    Args:
        amount: how far.
        unit: the unit to convert
            into.
        tags: labels to keep.
        exact: keep all digits.

    Returns:
        the converted distance.
    """
    if amount < 0:
        raise ValueError("distance cannot be negative")
    return {"value": amount * (1.609 if unit == "km" else 1 / 1.609), "unit": unit}


def test_schema_comes_from_hints_and_docstring():
    function = convert.schema()["function"]
    assert function["name"] == "convert" and function["description"] == "Convert a distance."
    props = function["parameters"]["properties"]
    assert props["amount"] == {"type": "number", "description": "how far."}
    assert props["unit"] == {"enum": ["km", "mi"], "description": "the unit to convert into."}
    assert props["tags"]["type"] == "array" and props["tags"]["items"] == {"type": "string"}
    assert props["exact"]["type"] == "boolean"
    assert function["parameters"]["required"] == ["amount", "unit"]


def test_undocumented_or_untyped_functions_are_refused():
    def bare(x: int):
        return x

    def untyped(x):
        """Has a doc."""

    with pytest.raises(ConfigError, match="docstring"):
        tool(bare)
    with pytest.raises(ConfigError, match="type hint"):
        tool(untyped)


def test_registry_returns_errors_as_data():
    registry = ToolRegistry([convert, calculator])
    ok = registry.run("convert", '{"amount": 10, "unit": "km"}')
    assert ok.ok and json.loads(ok.output)["value"] == pytest.approx(16.09)
    assert registry.run("nope", {}).error.startswith("UnknownTool") and "convert, calculator" in registry.run("nope", {}).error
    assert registry.run("convert", "{not json").error.startswith("InvalidArguments: not valid JSON")
    assert registry.run("convert", "[1, 2]").error.startswith("InvalidArguments: expected a JSON object")
    bad = registry.run("convert", {"amount": 1, "unit": "parsec"})
    assert bad.error.startswith("InvalidArguments") and "parsec" in bad.error
    raised = registry.run("convert", {"amount": -1, "unit": "km"})
    assert raised.error == "ValueError: distance cannot be negative" and raised.observation().startswith("Error: ")
    with pytest.raises(ConfigError, match="two tools"):
        registry.add(convert)


@pytest.mark.parametrize("expression, expected", [("(3 + 4) * 2", "14"), ("2^10", "1024"), ("7 / 2", "3.5"), ("sqrt(16) + pi - pi", "4"),
                                                  ("-3 ** 2 % 5", "1")])
def test_calculator_evaluates(expression, expected):
    assert calculator.run({"expression": expression}).output == expected


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "(1).__class__", "open('x')", "2 ** 100000", "x + 1"])
def test_calculator_never_evaluates_code(expression):
    result = calculator.run({"expression": expression})
    assert result.error and result.error.startswith("ValueError")


def test_solver_solves_the_bootcamp_equation_and_refuses_code():
    assert solve.run({"equations": "2x+3=10"}).output == "x = 7/2 = 3.5"
    assert solve.run({"equations": "x + y = 3; x - y = 1"}).output == "x = 2, y = 1"
    assert solve.run({"equations": "x^2 = 4", "variables": "x"}).output == "x = -2; x = 2"
    for code in ["exit()", "__import__('os')", "open(1)", "x.func"]:
        assert solve.run({"equations": code}).error.startswith("ValueError"), code


@pytest.mark.parametrize("equations", ["x + y = 3；x - y = 1", "x + y = 3，x - y = 1", "x + y = 3、x - y = 1", "x + y = 3\nx - y = 1",
                                       "ｘ＋ｙ＝３；ｘ−ｙ＝１"])
def test_solver_reads_equations_copied_from_chinese_text(equations):
    assert solve.run({"equations": equations}).output == "x = 2, y = 1"


def test_solver_and_calculator_read_typographic_signs_and_refuse_bad_variables():
    assert calculator.run({"expression": "1280 × 35 ÷ 100"}).output == "448"
    assert solve.run({"equations": "x + y = 3; x - y = 1", "variables": "x；y"}).output == "x = 2, y = 1"
    error = solve.run({"equations": "2x - 5y = -32", "variables": "2x - 5y = -32"}).error
    assert error.startswith("ValueError") and "'x, y'" in error


def test_file_reader_stays_in_its_folder(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", tmp_path / "docs" / "link.txt")
    reader = ToolRegistry([file_reader_tool(tmp_path / "docs")])
    assert reader.run("read_file", {"path": "a.txt"}).output == "hello"
    assert reader.run("read_file", {"path": "../secret.txt"}).error.startswith("PermissionError")
    assert reader.run("read_file", {"path": "link.txt"}).error.startswith("PermissionError")
    assert "a.txt" in reader.run("read_file", {"path": "missing.txt"}).error


def test_python_tool_keeps_state_and_reports_errors():
    with PythonSandbox(timeout_s=30) as sandbox:
        registry = ToolRegistry([python_tool(sandbox)])
        assert registry.run("python", {"code": "x = (10 - 3) / 2\nprint(x)"}).output == "3.5"
        assert registry.run("python", {"code": "x * 2"}).output == "7.0"
        failed = registry.run("python", {"code": "1 / 0"})
        assert failed.error.startswith("RuntimeError: ZeroDivisionError")


def test_builtin_tools_by_name(tmp_path):
    registry = builtin_tools(["calculator", "solve", "read_file"], files=tmp_path)
    assert registry.names == ["calculator", "solve", "read_file"]
    with pytest.raises(ConfigError, match="unknown tool"):
        builtin_tools(["web"])
    with pytest.raises(ConfigError, match="--files"):
        builtin_tools(["read_file"])
    with pytest.raises(ConfigError, match="--kb"):
        builtin_tools(["search_kb"])
