"""Agent loops with scripted models: each protocol's parsing, tool selection, repair, max steps, errors."""

from __future__ import annotations

import pytest

from puyu.agent import Agent, Reply, ToolRegistry, calculator, solve, tool
from puyu.errors import ConfigError
from tests.agent.fakes import ScriptedModel, call


@tool
def python(code: str) -> str:
    """Run code (a stand-in that echoes it reversed).

    Args:
        code: the code.
    """
    return code[::-1]


def tools() -> ToolRegistry:
    return ToolRegistry([calculator, solve, python])


def test_react_runs_a_tool_then_answers():
    model = ScriptedModel([
        'Thought: I should solve it.\nAction: solve\nAction Input: {"equations": "2x+3=10"}',
        "Thought: I now know the final answer\nFinal Answer: x = 3.5",
    ])
    run = Agent(model, tools(), protocol="react").run("Solve 2x+3=10")
    assert run.answer == "x = 3.5"
    first, final = run.steps
    assert (first.tool, first.output, first.thought) == ("solve", "x = 7/2 = 3.5", "I should solve it.")
    assert final.final_answer == "x = 3.5" and final.tool is None
    assert "Observation:" in model.requests[0]["stop"] and model.requests[0]["tools"] is None
    system = model.requests[0]["messages"][0]["content"]
    assert "calculator, solve, python" in system and '"equations"' in system
    assert model.requests[1]["messages"][-1] == {"role": "user", "content": "Observation: x = 7/2 = 3.5"}


def test_react_chinese_prompt_keywords_and_bare_input():
    model = ScriptedModel(["思考：先算一下\n行动：calculator\n行动输入：(10-3)/2", "最终答案：x = 3.5"])
    run = Agent(model, tools(), protocol="react", language="zh").run("已知2x+3=10，求x")
    assert "你可以使用以下工具" in model.requests[0]["messages"][0]["content"]
    assert run.steps[0].arguments == '{"expression": "(10-3)/2"}' and run.steps[0].output == "3.5"
    assert run.answer == "x = 3.5"


def test_react_code_fenced_input_and_action_before_hallucinated_answer():
    model = ScriptedModel(['Action: `calculator`\nAction Input: ```json\n{"expression": "6*7"}\n```\nFinal Answer: 41', "Final Answer: 42"])
    run = Agent(model, tools(), protocol="react").run("6*7?")
    assert run.steps[0].tool == "calculator" and run.steps[0].output == "42" and run.answer == "42"


def test_errors_are_shown_to_the_model():
    model = ScriptedModel(['Action: web_search\nAction Input: {"q": "x"}', 'Action: calculator\nAction Input: {"expression": "1/0"}',
                           "Final Answer: cannot"])
    run = Agent(model, tools(), protocol="react").run("task")
    assert run.steps[0].error.startswith("UnknownTool") and run.steps[1].error == "ZeroDivisionError: division by zero"
    assert "Observation: Error: UnknownTool" in model.requests[1]["messages"][-1]["content"]
    assert "Observation: Error: ZeroDivisionError" in model.requests[2]["messages"][-1]["content"]


def test_one_repair_retry_fixes_a_bad_reply():
    model = ScriptedModel(["I think the answer is 3.5", "Final Answer: 3.5"])
    run = Agent(model, tools(), protocol="react").run("task")
    assert run.answer == "3.5" and run.steps[0].repaired.startswith("neither")
    repair = model.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "I think the answer is 3.5"}
    assert "did not follow the format" in repair[-1]["content"]


def test_repair_of_a_missing_action_input():
    model = ScriptedModel(["Action: calculator", "Action: calculator\nAction Input: 6*7", "Final Answer: 42"])
    run = Agent(model, tools(), protocol="react").run("t")
    assert run.steps[0].repaired == "'Action:' without 'Action Input:'"
    assert (run.steps[0].tool, run.steps[0].output, run.answer) == ("calculator", "42", "42")  # a bare input fills the one string argument


def test_unrepairable_reply_is_recorded():
    @tool
    def pair(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: one.
            b: two.
        """
        return a + b

    model = ScriptedModel(["Action: pair\nAction Input: 1 and 2", "Action: pair\nAction Input: one, two"])
    run = Agent(model, ToolRegistry([pair]), protocol="react").run("t")
    assert run.steps[-1].error.startswith("Action Input is not a JSON object") and run.answer.startswith("Action: pair")


@pytest.mark.parametrize("protocol", ["react", "function"])
def test_max_steps_forces_a_final_answer(protocol):
    looping = ('Action: calculator\nAction Input: {"expression": "1+1"}' if protocol == "react"
               else call("calculator", '{"expression": "1+1"}'))
    model = ScriptedModel([looping, looping, looping])
    run = Agent(model, tools(), protocol=protocol, max_steps=3).run("loop forever")
    assert [s.tool for s in run.steps] == ["calculator", "calculator", None]
    last = model.requests[-1]
    assert last["tools"] is None and "no tool calls left" in last["messages"][-1]["content"]
    assert run.steps[-1].final_answer is not None  # the forced last turn is the answer whatever it says


def test_function_calling_records_tool_messages():
    model = ScriptedModel([call("solve", '{"equations": "2*x + 3 = 10"}', "Let me solve it."), Reply("x = 3.5")])
    run = Agent(model, tools(), protocol="function", tool_choice="required").run("Solve")
    assert run.answer == "x = 3.5" and run.steps[0].thought == "Let me solve it."
    first = model.requests[0]
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator", "solve", "python"] and first["tool_choice"] == "required"
    assistant, result = model.requests[1]["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {"name": "solve", "arguments": '{"equations": "2*x + 3 = 10"}'}
    assert result == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "name": "solve", "content": "x = 7/2 = 3.5"}


def test_function_calling_repairs_a_malformed_call():
    model = ScriptedModel([Reply('<tool_call>{"name": calc}</tool_call>', raw='<tool_call>{"name": calc}</tool_call>', malformed=True),
                           call("calculator", '{"expression": "2"}'), Reply("2")])
    run = Agent(model, tools(), protocol="function").run("t")
    assert run.steps[0].repaired and run.steps[0].output == "2" and run.answer == "2"
    assert "could not be parsed" in model.requests[1]["messages"][-1]["content"]


def test_internlm2_interpreter_block_calls_python():
    model = ScriptedModel([Reply("I will compute.<|action_start|><|interpreter|>\n```python\nprint(1)\n```<|action_end|>"),
                           call("calculator", '{"expression": "3"}'), Reply("done")])
    run = Agent(model, tools(), protocol="internlm2").run("t")
    assert (run.steps[0].tool, run.steps[0].arguments, run.steps[0].output) == ("python", '{"code": "print(1)"}', ")1(tnirp")
    assert run.steps[0].thought == "I will compute." and run.steps[1].output == "3" and run.answer == "done"


def test_stream_yields_steps_as_they_happen():
    model = ScriptedModel([call("calculator", '{"expression": "2+2"}'), Reply("4")])
    stream = Agent(model, tools(), protocol="function").stream("t")
    first = next(stream)
    assert first.tool == "calculator" and len(model.requests) == 1 and first.elapsed_s >= 0
    assert next(stream).final_answer == "4"


def test_bad_agent_settings_raise():
    with pytest.raises(ConfigError, match="protocol"):
        Agent(ScriptedModel([]), tools(), protocol="magic")
    with pytest.raises(ConfigError, match="max_steps"):
        Agent(ScriptedModel([]), tools(), max_steps=0)
    with pytest.raises(ConfigError, match="empty"):
        Agent(ScriptedModel([]), tools()).run("  ")
    with pytest.raises(ConfigError, match="ReAct prompts"):
        Agent(ScriptedModel([]), tools(), protocol="react", language="fr")
