"""Constrained actions on the built-in model: every ReAct and function-calling turn parses, within its caps.

56 tasks (calculations, equations, weather, Python) go through each protocol in one batch: under the
ReAct grammar half of them must act (``tool_choice="required"``) and half may answer; under the
function-calling grammar every turn must call.  Every turn must end by itself (no ``length``
finish for a call), parse, name an offered tool with arguments valid for its schema, and keep
its strings within their cap.  Which tool the 135M model picks is printed, not asserted.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from puyu.agent import ToolRegistry, builtin_tools
from puyu.agent.models import Reply
from puyu.agent.protocols import FunctionCallingProtocol, ReActProtocol
from puyu.agent.react_grammar import ReActCaps
from puyu.generation import SamplingParams, generate
from puyu.generation.constraints import tool_call_grammar
from puyu.tokenizer.tool_formats import tool_format
from tests.agent.test_builtin_tool_calls import PROMPTS, get_weather

TASKS = [p for p, _, _ in PROMPTS] + [
    "Use Python to solve 2x+3=10 for x.", "用Python求解 2x+3=10", "Use Python to print the first 10 prime numbers.",
    "Write Python code that sums the numbers from 1 to 100.", "Use Python to reverse the string 'puyu'.",
    "Compute 17 factorial with Python.", "Use Python to sort [5, 3, 9, 1].", "How many days are in 3 weeks? Use Python.",
    "Use Python to convert 100 Fahrenheit to Celsius.", "用 Python 计算 3 的 12 次方", "Use Python to count the vowels in 'banana'.",
    "What is the average of 4, 8 and 15? Use Python.", "Use Python to compute 15% of 80.", "Is 97 prime? Check with Python.",
    "Use Python to find the greatest common divisor of 48 and 36.", "Use Python to list the squares of 1 to 5.",
    "用 Python 把 2.5 公里换算成米", "Use Python to compute the area of a circle with radius 3.",
    "Convert 5 miles to kilometres using Python.", "Use Python to find the largest of 12, 45 and 7.",
    "What is 2**20? Use the python tool.", "Use Python to generate the Fibonacci numbers below 50.",
    "A shirt costs 20 dollars with a 25% discount. What is the price? Use Python.", "Solve x/3 = 7 with Python.",
    "How many seconds are in a day? Use Python.", "Use Python to compute the sum of the digits of 2026.",
]
BUDGET = 128


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.fixture(scope="module")
def registry():
    tools = builtin_tools(["python", "calculator", "solve"])
    tools.add(get_weather)
    return tools


def _check_call(registry: ToolRegistry, name: str, arguments: str, string_cap: int) -> None:
    assert name in registry, name
    values = json.loads(arguments)
    jsonschema.validate(values, registry.tools[name].parameters)
    assert sum(len(s) for s in _strings(values)) <= string_cap, (name, values)  # the call's strings share one cap


@pytest.mark.builtin
def test_react_actions_always_parse_within_their_caps(builtin_llm, registry):
    assert len(TASKS) >= 50
    protocol, caps = ReActProtocol(registry), ReActCaps.for_budget(BUDGET)
    choices = ["required" if i % 2 == 0 else "auto" for i in range(len(TASKS))]
    params = [SamplingParams(temperature=0, max_new_tokens=BUDGET, stop=protocol.stop, grammar=protocol.grammar(False, choice)(BUDGET))
              for choice in choices]
    prompts = [builtin_llm.prompt_ids(protocol.start(task, None)) for task in TASKS]
    completions = generate(builtin_llm.model, builtin_llm.tokenizer, prompts, params)
    acted = {}
    for task, choice, completion in zip(TASKS, choices, completions):
        decision = protocol.parse(Reply(completion.text.strip()), last=False)
        assert decision.error is None, (task, completion.text)
        assert len(decision.thought) <= caps.thought, (task, decision.thought)
        if decision.final is not None:
            assert choice == "auto" and len(decision.final) <= caps.answer, (task, completion.text)
            continue
        assert completion.finish_reason == "stop", (task, completion.text)  # the call closed by itself
        (call,) = decision.calls
        _check_call(registry, call.name, call.arguments, caps.code if call.name == "python" else caps.string)
        acted[call.name] = acted.get(call.name, 0) + 1
        print(f"{task!r} -> {call.name}({call.arguments})")
    assert sum(acted.values()) >= len(TASKS) // 2
    print(f"ReAct: {len(TASKS)}/{len(TASKS)} parsed; calls by tool {acted}")


@pytest.mark.builtin
def test_function_calls_always_parse_within_their_caps(builtin_llm, registry):
    protocol, schemas = FunctionCallingProtocol(registry), registry.schemas()
    fmt = tool_format(builtin_llm.tokenizer.template.for_tools().family)
    string_cap = BUDGET // 3
    params = SamplingParams(temperature=0, max_new_tokens=BUDGET, grammar=tool_call_grammar(schemas, fmt.family, max_string=string_cap))
    prompts = [builtin_llm.prompt_ids(protocol.start(task, None), schemas) for task in TASKS]
    for task, completion in zip(TASKS, generate(builtin_llm.model, builtin_llm.tokenizer, prompts, params)):
        call = fmt.parse_constrained(completion.text)
        assert completion.finish_reason == "stop" and call is not None, (task, completion.text)
        _check_call(registry, call[0], json.dumps(call[1]), string_cap)
