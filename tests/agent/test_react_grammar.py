"""The ReAct grammar: a turn is a thought, then an action on an offered tool with valid arguments (code in a
fenced block for python) or a final answer; every part is capped.  A random model under it always parses."""

from __future__ import annotations

import json

import pytest

from puyu import LLM
from puyu.agent import Agent, LocalChatModel, builtin_tools
from puyu.agent.protocols import ReActProtocol
from puyu.agent.react_grammar import ReActCaps, react_grammar
from puyu.errors import ConfigError
from puyu.generation.constraints import GrammarMatcher
from tests.conftest import make_hf_model

CAPS = ReActCaps(thought=40, string=60, code=80, answer=100)


@pytest.fixture(scope="module")
def schemas():
    return builtin_tools(["python", "calculator", "solve"]).schemas()


def _accepts(tokenizer, grammar: str, text: str) -> bool:
    matcher = GrammarMatcher(grammar, tokenizer, tokenizer.vocab_size)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.matcher.try_consume_tokens(ids) == len(ids) and matcher.done


@pytest.mark.parametrize("mode, text, accepted", [
    ("auto", 'Thought: solve it\nAction: solve\nAction Input: {"equations": "2x+3=10"}', True),
    ("auto", "Action: python\nAction Input: ```python\nx = 3.5\nprint(x)\n```", True),
    ("auto", "Thought: done\nFinal Answer: x = 3.5", True),
    ("auto", 'Action: search\nAction Input: {"q": "x"}', False),  # not an offered tool
    ("auto", 'Action: solve\nAction Input: {"equation": "2x+3=10"}', False),  # not the tool's schema
    ("auto", 'Action: calculator\nAction Input: {"expression": "1+1", "extra": 1}', False),  # only documented keys
    ("auto", 'Action: python\nAction Input: {"code": "print(1)"}', False),  # code goes in a fenced block
    ("auto", "Thought: " + "a" * 41 + "\nFinal Answer: 1", False),  # the thought's cap
    ("auto", 'Action: calculator\nAction Input: {"expression": "' + "1+" * 40 + '1"}', False),  # the string cap
    ("act", "Final Answer: 3.5", False),
    ("answer", 'Action: solve\nAction Input: {"equations": "x=1"}', False),
    ("answer", "Final Answer: 3.5", True),
])
def test_react_grammar_accepts_only_valid_turns(tiny_tokenizer, schemas, mode, text, accepted):
    assert _accepts(tiny_tokenizer, react_grammar(schemas, mode, CAPS), text) is accepted


def test_react_caps_follow_the_budget_and_bad_input_is_refused(schemas):
    assert ReActCaps.for_budget(512) == ReActCaps(thought=128, string=170, code=256, answer=2000)
    with pytest.raises(ConfigError, match="at least 16 new tokens"):
        ReActCaps.for_budget(8)
    with pytest.raises(ConfigError, match="mode must be one of auto, act, answer"):
        react_grammar(schemas, "maybe", CAPS)


def test_the_parser_reads_a_fenced_code_action(schemas):
    from puyu.agent.models import Reply

    protocol = ReActProtocol(builtin_tools(["python", "solve"]))
    decision = protocol.parse(Reply("Thought: run it\nAction: python\nAction Input: ```python\nprint(7 / 2)```"), last=False)
    assert decision.error is None and decision.calls[0].name == "python"
    assert json.loads(decision.calls[0].arguments) == {"code": "print(7 / 2)"}
    assert "python: Run Python code" in protocol.start("x", None)[0]["content"]


@pytest.fixture(scope="module")
def react_llm(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("react") / "tiny"
    make_hf_model(folder, tiny_tokenizer_dir, max_position_embeddings=2048)  # room for the ReAct prompt's tool list
    return LLM(str(folder), dtype="float32", device="cpu")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_model_under_the_react_grammar_always_acts_validly(react_llm, seed):
    model = LocalChatModel(react_llm, temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=96)
    registry = builtin_tools(["calculator", "solve"])
    steps = list(Agent(model, registry, protocol="react", tool_choice="required", max_steps=2).stream("What is 2+2?"))
    call, final = steps
    assert call.tool in registry and call.repaired is None and final.final_answer is not None and final.error is None
