"""Every grammar caps what it generates: strings, arrays and numbers get limits where the schema sets none,
so a random model's call always closes within its budget; ``puyu serve``'s forced tool calls are capped too."""

from __future__ import annotations

import json

import pytest

from puyu.errors import ConfigError
from puyu.generation.constraints import Caps, GrammarMatcher, arguments_schema, cap_schema, json_schema_grammar, tool_call_grammar
from puyu.serve.protocol import ChatCompletionRequest
from puyu.tokenizer.tool_formats import tool_format

PROPERTIES = {"title": {"type": "string"}, "body": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
              "stars": {"type": "integer"}, "weight": {"type": "number"}}
NOTE = {"type": "function", "function": {"name": "note", "description": "save a note",
                                         "parameters": {"type": "object", "properties": PROPERTIES, "required": ["title", "body"]}}}


def _accepts(grammar: str, tokenizer, text: str) -> bool:
    matcher = GrammarMatcher(grammar, tokenizer, tokenizer.vocab_size)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.matcher.try_consume_tokens(ids) == len(ids) and matcher.done


def test_cap_schema_bounds_strings_arrays_and_numbers_but_keeps_given_limits():
    caps = Caps(string=50, items=4, magnitude=1000, decimals=2)
    schema = {"type": "object", "properties": {"s": {"type": "string"}, "short": {"type": "string", "maxLength": 5},
                                               "choice": {"type": "string", "enum": ["a", "b"]}, "n": {"type": "integer", "maximum": 9},
                                               "x": {"type": "number"}, "list": {"type": "array", "items": {"type": "integer"}}}}
    props = cap_schema(schema, caps)["properties"]
    assert props["s"]["maxLength"] == 50 and props["short"]["maxLength"] == 5 and "maxLength" not in props["choice"]
    assert props["n"] == {"type": "integer", "maximum": 9}
    assert (props["x"]["minimum"], props["x"]["maximum"], props["x"]["multipleOf"]) == (-1000, 1000, 0.01)
    assert props["list"]["maxItems"] == 4 and props["list"]["items"]["minimum"] == -1000
    with pytest.raises(ConfigError, match="caps must be positive"):
        Caps(string=0)


def test_a_calls_strings_share_one_cap():
    props = arguments_schema(NOTE, Caps(string=120, items=2))["properties"]
    # title + body + two tags: four strings of at most 30 characters each
    assert props["title"]["maxLength"] == props["body"]["maxLength"] == props["tags"]["items"]["maxLength"] == 30


def test_uncapped_tool_call_from_a_random_model_closes_within_its_caps(tiny_llm):
    grammar = tool_call_grammar([NOTE], "chatml", max_string=40)
    for seed in range(3):
        completion = tiny_llm.complete_chat("note", temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=200, grammar=grammar)
        assert completion.finish_reason == "stop", completion.text
        name, arguments = tool_format("chatml").parse_constrained(completion.text)
        strings = [arguments["title"], arguments["body"], *arguments.get("tags", [])]
        assert name == "note" and sum(len(s) for s in strings) <= 40
        assert abs(arguments.get("stars", 0)) <= Caps().magnitude


def test_the_servers_forced_tool_call_is_capped(tiny_tokenizer):
    echo = {"type": "function", "function": {"name": "echo", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=[echo], tool_choice="required")
    grammar = request.grammar(request.selected_tools(), "chatml")
    call = {"name": "echo", "arguments": {"text": "b" * 300}}
    assert _accepts(grammar, tiny_tokenizer, f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
    call["arguments"]["text"] = "b" * 301  # past the default 300 characters a call's strings share
    assert not _accepts(grammar, tiny_tokenizer, f"<tool_call>\n{json.dumps(call)}\n</tool_call>")


def test_response_format_grammar_caps_strings(tiny_tokenizer):
    grammar = json_schema_grammar({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}, Caps(string=10))
    assert _accepts(grammar, tiny_tokenizer, '{"text": "short"}')
    assert not _accepts(grammar, tiny_tokenizer, '{"text": "much longer than ten"}')
