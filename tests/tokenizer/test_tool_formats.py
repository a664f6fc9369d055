"""The tool-call formats agree with the templates that teach them: what a built-in template renders
for an assistant call, its family's format parses back (and decodes under a grammar), for every family."""

from __future__ import annotations

import json

import pytest

from puyu.tokenizer.templates import BUILTIN_TEMPLATES, ChatTemplate
from puyu.tokenizer.tool_formats import FORMATS, ToolCallStream, tool_format

ARGS = {"code": "print('}</tool_call>')", "n": 2}


@pytest.mark.parametrize("family", sorted(BUILTIN_TEMPLATES))
def test_a_rendered_call_parses_back_in_its_family_format(family):
    assert set(BUILTIN_TEMPLATES) <= set(FORMATS)  # every template that teaches calls has a format
    template = ChatTemplate.builtin(family, {"bos_token": ""})
    messages = [{"role": "user", "content": "run it"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": ARGS}}]}]
    text = template.render(messages)
    prompt = template.render(messages[:1], add_generation_prompt=True)
    reply = text[len(prompt):].removesuffix("\n")
    reply = reply[: reply.rindex(template.end_of_turn)]
    fmt = tool_format(family)
    assert reply.lstrip().startswith(fmt.start)
    content, calls = fmt.parse(reply)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("python", ARGS)]
    assert fmt.parse_constrained(reply) == ("python", ARGS)
    assert not fmt.is_malformed(reply, calls)


def test_special_token_rule_and_malformed_calls():
    # their markers are special tokens
    assert [f.family for f in FORMATS.values() if f.keeps_special_tokens] == ["internlm2", "mistral", "mistral_v11"]
    assert tool_format("custom") is None
    chatml = tool_format("chatml")
    broken = '<tool_call>\n{"name": "python", "arguments": {"code": </tool_call>'
    content, calls = chatml.parse(broken)
    assert (content, calls) == (broken, []) and chatml.is_malformed(broken, calls)
    assert not tool_format("llama3").is_malformed("{not json", [])  # a bare "{" is no explicit marker


def test_stream_holds_back_a_call_and_passes_other_families_through():
    stream = ToolCallStream("chatml")
    assert stream.feed("Let me check. <tool") == "Let me check. "
    assert stream.feed('_call>\n{"name"') == "" and stream.holding
    plain = ToolCallStream("custom")
    assert plain.feed("<tool_call>") == "<tool_call>"
