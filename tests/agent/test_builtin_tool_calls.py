"""The built-in model's tool calls under constrained decoding: 30 prompts, every call parses against its schema.

The model is weak (135M), so which tool and which arguments it picks is measured and
printed, not asserted; that every call parses and validates is asserted.
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest

from puyu.agent import ToolRegistry, calculator, solve, tool
from puyu.generation import SamplingParams, generate
from puyu.generation.constraints import tool_call_grammar
from puyu.tokenizer.tool_formats import tool_format


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather in a city.

    Args:
        city: the city name, e.g. Paris.
        unit: the temperature unit.
    """
    return f"sunny in {city}"


# (prompt, expected tool, a string the arguments should contain)
PROMPTS = [
    ("What is 23 * 47?", "calculator", "23"), ("Compute 1234 + 5678.", "calculator", "1234"),
    ("How much is 2 to the power of 10?", "calculator", "10"),
    ("Calculate (15 + 27) / 6.", "calculator", "15"), ("What is the square root of 144?", "calculator", "144"),
    ("What's 99 minus 17?", "calculator", "99"),
    ("Multiply 12 by 12.", "calculator", "12"), ("What is 7% of 300?", "calculator", "300"), ("计算 45 乘以 3", "calculator", "45"),
    ("Divide 1000 by 8.", "calculator", "1000"),
    ("Solve 2x + 3 = 10 for x.", "solve", "2"), ("Find x if x^2 = 49.", "solve", "49"), ("Solve the equation 5x - 7 = 18.", "solve", "5"),
    ("已知2x+3=10，求x", "solve", "10"), ("Solve x + y = 10 and x - y = 2.", "solve", "10"),
    ("What value of y satisfies 3y = 27?", "solve", "27"),
    ("Solve for z: z/4 = 6.", "solve", "6"), ("Find the roots of x^2 - 5x + 6 = 0.", "solve", "6"), ("Solve 4a + 2 = 14.", "solve", "14"),
    ("求解方程 x - 8 = 2", "solve", "8"),
    ("What's the weather in Paris?", "get_weather", "Paris"), ("Is it raining in London right now?", "get_weather", "London"),
    ("Tell me the temperature in Tokyo in fahrenheit.", "get_weather", "Tokyo"), ("How hot is it in Cairo today?", "get_weather", "Cairo"),
    ("Weather forecast for New York please.", "get_weather", "New York"), ("北京今天天气怎么样？", "get_weather", "北京"),
    ("Should I take an umbrella in Seattle today?", "get_weather", "Seattle"),
    ("What's the current weather in Berlin?", "get_weather", "Berlin"),
    ("Is it cold in Moscow now?", "get_weather", "Moscow"), ("Check the weather in Sydney.", "get_weather", "Sydney"),
]


@pytest.mark.builtin
def test_every_constrained_call_parses_against_its_schema(builtin_llm):
    registry = ToolRegistry([calculator, solve, get_weather])
    tools = registry.schemas()
    family = builtin_llm.tokenizer.template.for_tools().family
    params = SamplingParams(temperature=0, max_new_tokens=80, grammar=tool_call_grammar(tools, family, max_string=40))
    prompts = [builtin_llm.prompt_ids([{"role": "user", "content": p}], tools) for p, _, _ in PROMPTS]
    completions = generate(builtin_llm.model, builtin_llm.tokenizer, prompts, params)
    right_tool = right_args = 0
    for (prompt, expected, fragment), completion in zip(PROMPTS, completions):
        call = tool_format(family).parse_constrained(completion.text)
        assert completion.finish_reason == "stop" and call is not None, (prompt, completion.text)
        name, arguments = call
        jsonschema.validate(arguments, registry.tools[name].parameters)
        right_tool += name == expected
        right_args += name == expected and fragment in json.dumps(arguments, ensure_ascii=False)
        print(f"{prompt!r} -> {name}({json.dumps(arguments, ensure_ascii=False)})")
    n = len(PROMPTS)
    print(f"parsed {n}/{n}; right tool {right_tool}/{n}; right tool and arguments {right_args}/{n}")
