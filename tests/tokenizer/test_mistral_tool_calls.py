"""Mistral's tool calls: replies as Mistral models write them parse into calls in both formats
(``[TOOL_CALLS] [{...}]`` of tokenizers v2-v7, ``[TOOL_CALLS]name[ARGS]{...}`` of v11+), broken ones stay text
and count as malformed, the families come from the published templates, and what those templates render for an
assistant call parses back with its id."""

from __future__ import annotations

import json

import pytest

from puyu.tokenizer.templates import ChatTemplate, detect_family
from puyu.tokenizer.tool_formats import ToolCallStream, tool_format
from tests.tokenizer.test_zoo_templates import MISTRAL_NEMO

WEATHER = {"location": "Paris, France", "format": "celsius"}
# The template that Mistral Small 3.2 / Devstral / Ministral 3 publish (tokenizer v11+), shortened to its turns; the
# assistant's tool-call lines are verbatim.
MISTRAL_V11 = """{{- bos_token }}
{%- if tools is defined and tools is not none and tools|length > 0 %}
    {{- '[AVAILABLE_TOOLS]' + tools|tojson + '[/AVAILABLE_TOOLS]' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '[INST]' + message['content'] + '[/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {%- if message['content'] is string %}
            {{- message['content'] }}
        {%- endif %}
        {%- if message['tool_calls'] is defined and message['tool_calls'] is not none and message['tool_calls']|length > 0 %}
            {%- for tool in message['tool_calls'] %}
                {%- set arguments = tool['function']['arguments'] %}
                {%- if arguments is not string %}
                    {%- set arguments = arguments|tojson|safe %}
                {%- elif arguments == '' %}
                    {%- set arguments = '{}' %}
                {%- endif %}
                {{- '[TOOL_CALLS]' + tool['function']['name'] + '[ARGS]' + arguments }}
            {%- endfor %}
        {%- endif %}
        {{- eos_token }}
    {%- elif message['role'] == 'tool' %}
        {{- '[TOOL_RESULTS]' + message['content']|string + '[/TOOL_RESULTS]' }}
    {%- endif %}
{%- endfor %}
"""

# Replies as the models write them (decoded with special tokens kept), and the calls in them.
REPLIES = {
    "mistral": [
        # Mistral-7B-Instruct-v0.3 (SentencePiece: a space after the control token)
        ('[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", "format": "celsius"}}]',
         "", [("get_current_weather", WEATHER, None)]),
        # Mistral-Nemo (Tekken: no space), two calls, ids as the template writes them back
        ('[TOOL_CALLS][{"name": "get_current_weather", "arguments": {"location": "Paris, France", "format": "celsius"}, '
         '"id": "a1B2c3D4e"}, {"name": "get_time", "arguments": {}}]',
         "", [("get_current_weather", WEATHER, "a1B2c3D4e"), ("get_time", {}, None)]),
        ('Let me check. [TOOL_CALLS] [{"name": "python", "arguments": {"code": "print(\\"]}\\")"}}]',
         "Let me check.", [("python", {"code": 'print("]}")'}, None)]),
    ],
    "mistral_v11": [
        ('[TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris, France", "format": "celsius"}',
         "", [("get_current_weather", WEATHER, None)]),
        ('I will look both up.[TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris, France", "format": "celsius"}'
         '[TOOL_CALLS]get_time[ARGS]{}',
         "I will look both up.", [("get_current_weather", WEATHER, None), ("get_time", {}, None)]),
        ('[TOOL_CALLS]python[CALL_ID]Xy7Zq9Ab1[ARGS]{"code": "print(\'[TOOL_CALLS]\')"}',
         "", [("python", {"code": "print('[TOOL_CALLS]')"}, "Xy7Zq9Ab1")]),
    ],
}
# Replies that open a call but hold none: they stay content and count as malformed.
MALFORMED = {
    "mistral": [
        '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Par',  # cut off
        '[TOOL_CALLS] {"name": "get_current_weather", "arguments": {}}',  # not a list
        '[TOOL_CALLS] [{"arguments": {}}]',  # no name
        '[TOOL_CALLS] [{"name": "a", "arguments": {}}, "b"]',  # one bad item spoils the list
        "[TOOL_CALLS] []",
        "[TOOL_CALLS] [{'name': 'get_current_weather', 'arguments': {}}]",  # not JSON
    ],
    "mistral_v11": [
        '[TOOL_CALLS]get_current_weather{"location": "Paris"}',  # no [ARGS]
        '[TOOL_CALLS]get_current_weather[ARGS]["Paris"]',  # arguments not an object
        '[TOOL_CALLS]get_current_weather[ARGS]{"location": ',  # cut off
        '[TOOL_CALLS][ARGS]{"location": "Paris"}',  # no name
    ],
}


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("family", sorted(REPLIES))
def test_replies_as_mistral_models_write_them_parse_into_calls(family):
    fmt = tool_format(family)
    for text, content, expected in REPLIES[family]:
        got_content, calls = fmt.parse(text)
        assert (got_content, _calls(calls)) == (content, [(name, args) for name, args, _ in expected]), text
        for call, (_, _, given) in zip(calls, expected):
            assert call.id == given if given else (len(call.id) == 9 and call.id.isalnum())  # the ids Mistral's templates take
        assert not fmt.is_malformed(text, calls)


@pytest.mark.parametrize("family", sorted(MALFORMED))
def test_malformed_calls_stay_text_and_are_flagged(family):
    fmt = tool_format(family)
    for text in MALFORMED[family]:
        assert fmt.parse(text) == (text, []), text
        assert fmt.is_malformed(text, [])
    plain = "Paris is sunny today [citation needed]."
    assert fmt.parse(plain) == (plain, []) and not fmt.is_malformed(plain, [])


def test_families_from_the_published_templates():
    assert detect_family(MISTRAL_NEMO) == "mistral"
    assert detect_family(MISTRAL_V11) == "mistral_v11"
    assert detect_family("{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}") == "mistral"  # v0.1/v0.2
    for family in ("mistral", "mistral_v11"):
        fmt = tool_format(family)
        assert fmt.keeps_special_tokens and not fmt.has_grammar  # [TOOL_CALLS] is a control token


@pytest.mark.parametrize(("family", "source"), [("mistral", MISTRAL_NEMO), ("mistral_v11", MISTRAL_V11)])
def test_a_call_the_template_renders_parses_back(family, source):
    template = ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"})
    call = {"id": "k9Xw2Lm7Q", "type": "function", "function": {"name": "get_current_weather", "arguments": WEATHER}}
    messages = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    reply = template.render(messages).split("[/INST]", 1)[1].removesuffix("</s>")
    content, calls = tool_format(family).parse(reply)
    assert content == "" and _calls(calls) == [("get_current_weather", WEATHER)]
    if family == "mistral":  # the list format carries the id; the v11 template writes none
        assert calls[0].id == "k9Xw2Lm7Q"


def test_stream_holds_back_from_the_control_token():
    stream = ToolCallStream("mistral_v11")
    pieces = [stream.feed(p) for p in ["Checking", " now.[TOOL_", "CALLS]get_time", "[ARGS]{}"]]
    assert "".join(pieces) == "Checking now." and stream.holding
    near_miss = ToolCallStream("mistral")
    assert "".join(near_miss.feed(p) for p in ["see [TOOL", "S] list"]) == "see [TOOLS] list"
