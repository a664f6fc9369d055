"""Constrained decoding: grammars mask the logits so that even a random model's output is valid."""

from __future__ import annotations

import json

import jsonschema
import pytest

from puyu.errors import ConfigError
from puyu.generation.constraints import GrammarMatcher, json_object_grammar, json_schema_grammar, tool_call_grammar
from puyu.tokenizer.tool_formats import tool_format

SCHEMA = {
    "type": "object",
    "properties": {"op": {"enum": ["add", "sub", "mul"]}, "exact": {"type": "boolean"}, "tag": {"type": "string", "maxLength": 6}},
    "required": ["op", "exact", "tag"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "calculator", "description": "evaluate", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}}, "required": ["expression"]}}},
    {"type": "function", "function": {"name": "lookup", "description": "find", "parameters": {
        "type": "object", "properties": {"key": {"enum": ["a", "b"]}}, "required": ["key"]}}},
]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_model_output_follows_the_schema(tiny_llm, seed):
    text = tiny_llm.chat("give json", temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=200, grammar=json_schema_grammar(SCHEMA))
    jsonschema.validate(json.loads(text), SCHEMA)


def test_unconstrained_random_model_output_is_not_json(tiny_llm):
    text = tiny_llm.chat("give json", temperature=1.0, top_p=1.0, seed=0, max_new_tokens=40)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_json_object_grammar_gives_an_object(tiny_llm):
    completion = tiny_llm.complete_chat("json", temperature=0.8, seed=5, max_new_tokens=150, grammar=json_object_grammar())
    if completion.finish_reason == "stop":  # a random model may still be mid-object when the budget ends
        assert isinstance(json.loads(completion.text), dict)
    else:
        assert completion.text.startswith("{")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_tool_call_parses_with_the_serve_parser(tiny_llm, seed):
    grammar = tool_call_grammar(TOOLS, "chatml")
    text = tiny_llm.chat("call a tool", temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=120, grammar=grammar)
    content, calls = tool_format("chatml").parse(text)
    assert len(calls) == 1 and content == ""
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == calls[0].name)
    jsonschema.validate(json.loads(calls[0].arguments), schema)


def test_optional_tool_call_lets_a_plain_answer_through(tiny_tokenizer):
    grammar = tool_call_grammar(TOOLS, "chatml", required=False)
    matcher = GrammarMatcher(grammar, tiny_tokenizer, tiny_tokenizer.vocab_size)
    for token in tiny_tokenizer.encode("Hello there", add_special_tokens=False):
        assert matcher.allowed()[token]
        matcher.advance(token)
    assert matcher.done
    fresh = GrammarMatcher(grammar, tiny_tokenizer, tiny_tokenizer.vocab_size)
    space = tiny_tokenizer.encode(" ", add_special_tokens=False)[0]
    assert not fresh.allowed()[space]  # the reply commits to text or a call on its first character


def test_internlm2_and_llama3_call_formats_parse(tiny_tokenizer):
    for family, text in [("llama3", '{"name": "lookup", "parameters": {"key": "b"}}')]:
        matcher = GrammarMatcher(tool_call_grammar(TOOLS, family), tiny_tokenizer, tiny_tokenizer.vocab_size)
        for token in tiny_tokenizer.encode(text, add_special_tokens=False):
            assert matcher.allowed()[token], tiny_tokenizer.decode([token])
            matcher.advance(token)
        assert matcher.done
        assert tool_format(family).parse(text)[1][0].name == "lookup"
    grammar = tool_call_grammar(TOOLS, "internlm2")
    assert grammar.startswith("start: call") and "<|action_start|> <|plugin|>" in grammar and '"parameters"' in grammar


def test_mask_allows_only_tokens_that_continue_the_grammar(tiny_tokenizer):
    matcher = GrammarMatcher(json_schema_grammar(SCHEMA), tiny_tokenizer, tiny_tokenizer.vocab_size + 7)
    allowed = matcher.allowed()
    assert allowed.shape == (tiny_tokenizer.vocab_size + 7,)
    assert not allowed[tiny_tokenizer.vocab_size :].any()
    texts = [tiny_tokenizer.decode([i]) for i in allowed.nonzero().flatten().tolist()]
    assert texts and all(t.lstrip().startswith("{") or not t.strip() for t in texts)


def test_bad_inputs_raise_config_errors(tiny_tokenizer):
    with pytest.raises(ConfigError, match="grammar is invalid"):
        GrammarMatcher("start: undefined_rule", tiny_tokenizer, tiny_tokenizer.vocab_size)
    with pytest.raises(ConfigError, match="family"):
        tool_call_grammar(TOOLS, "custom")
    with pytest.raises(ConfigError, match="at least one tool"):
        tool_call_grammar([], "chatml")
    with pytest.raises(ConfigError, match="must be an object"):
        json_schema_grammar(["not", "a", "schema"])  # type: ignore[arg-type]


def test_constrained_call_decoding_is_exact():
    text = '<tool_call>\n{"name": "python", "arguments": {"code": "print(\'}</tool_call>\')"}}\n</tool_call>'
    assert tool_format("chatml").parse_constrained(text) == ("python", {"code": "print('}</tool_call>')"})
    assert tool_format("chatml").parse_constrained("just text") is None
    assert tool_format("internlm2").parse_constrained(
        '<|action_start|><|plugin|>\n{"name": "a", "parameters": {"x": 1}}<|action_end|>') == ("a", {"x": 1})
    assert tool_format("llama3").parse_constrained('{"name": "a", "parameters": {}}') == ("a", {})
