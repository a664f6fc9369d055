"""Chat templates: the model's own Jinja template, or a built-in one.

A :class:`ChatTemplate` renders a conversation to text exactly as
``transformers``' ``apply_chat_template`` does (same sandboxed Jinja settings,
``tojson``, ``raise_exception``, ``strftime_now``), and knows its family
(``chatml``, ``internlm2``, ``llama3``, ``mistral``, ``mistral_v11``, ``internlm`` or
``custom``), whose end-of-turn marker gives the stop tokens and the end of each trained
assistant span, and whose tool-call format (:mod:`puyu.tokenizer.tool_formats`) parses replies.

Families from the template's text: Llama 3 headers; ChatML markers, with InternLM2's
tool markers or a leading ``bos_token`` (InternLM2/2.5/3 publish a plain ChatML template
that starts with ``<s>``; Qwen's and SmolLM2's never emit a BOS) for ``internlm2``;
Mistral's ``[INST]`` turns, ``mistral_v11`` where calls are written ``[TOOL_CALLS]name[ARGS]``
(tokenizers v11+), else ``mistral`` (a JSON list after ``[TOOL_CALLS]``; EOS ends a turn);
InternLM v1's ``<|Bot|>`` turns for ``internlm``.

Built-in templates serve models that carry none (InternLM v1 folders publish none:
``internlm`` is its published prompt, ``<|User|>:...<eoh>\n<|Bot|>:...<eoa>\n``), and
models whose own template cannot show tools (SmolLM2's, InternLM2.5's): they then
render tool conversations with the built-in template of their family
(:data:`BUILTIN_TEMPLATES` are the ones that show tools).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from puyu.errors import TemplateError

_CHATML = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}'
    '\\n</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{%- set fn = call.function or call %}
{%- if loop.first and message.content %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n{"name": "' + fn.name + '", "arguments": ' }}
{{- fn.arguments if fn.arguments is string else fn.arguments | tojson }}
{{- '}\\n</tool_call>' + ('\\n' if not loop.last else '') }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

_INTERNLM2 = """\
{{- bos_token }}
{%- if tools %}
{{- '<|im_start|>system name=<|plugin|>\\n' + (tools | tojson) + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'tool' %}
{{- '<|im_start|>environment name=<|plugin|>\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{%- set fn = call.function or call %}
{%- set args = fn.arguments if fn.arguments is string else fn.arguments | tojson %}
{{- '<|action_start|><|plugin|>\\n{"name": "' + fn.name + '", "parameters": ' + args + '}<|action_end|>\\n' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

_LLAMA3 = """\
{{- bos_token }}
{%- if tools %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\nEnvironment: ipython\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content | trim }}{{- '\\n' }}{%- endif %}
{{- 'You have access to the following functions. To call a function, respond with JSON '
    '{"name": function name, "parameters": dictionary of argument name and its value}.\\n' }}
{%- for tool in tools %}{{- (tool | tojson(indent=4)) + '\\n\\n' }}{%- endfor %}
{{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and tools and loop.first %}
{%- elif message.role == 'tool' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- for call in message.tool_calls %}
{%- set fn = call.function or call %}
{%- set args = fn.arguments if fn.arguments is string else fn.arguments | tojson %}
{{- '{"name": "' + fn.name + '", "parameters": ' + args + '}' }}
{%- endfor %}
{{- '<|eot_id|>' }}
{%- else %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + (message.content or '') | trim + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

# InternLM v1 (internlm-chat-7b): the prompt of its published modeling_internlm.py ``build_inputs``, with
# lmdeploy's system line; it has no tool format.
_INTERNLM = """\
{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'system' %}
{{- '<|System|>:' + message.content + '\\n' }}
{%- elif message.role == 'user' %}
{{- '<|User|>:' + message.content + '<eoh>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|Bot|>:' + message.content + '<eoa>\\n' }}
{%- else %}
{{- raise_exception('InternLM v1 has no ' + message.role + ' turns') }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|Bot|>:' }}{%- endif %}
"""

BUILTIN_TEMPLATES = {"chatml": _CHATML, "internlm2": _INTERNLM2, "llama3": _LLAMA3}  # the ones that show tools
CHAT_ONLY_TEMPLATES = {"internlm": _INTERNLM}
END_OF_TURN = {"chatml": "<|im_end|>", "internlm2": "<|im_end|>", "llama3": "<|eot_id|>", "internlm": "<eoa>",
               "mistral": None, "mistral_v11": None, "custom": None}  # None: EOS ends the turn


def detect_family(source: str) -> str:
    """Template family from its text: ``llama3``, ``internlm2``, ``chatml``, ``mistral``, ``mistral_v11``,
    ``internlm`` or ``custom``."""
    if "<|start_header_id|>" in source:
        return "llama3"
    if "<|im_start|>" in source:
        internlm = "<|action_start|>" in source or "<|plugin|>" in source or source.lstrip("{%-+ ").startswith("bos_token")
        return "internlm2" if internlm else "chatml"
    if "[INST]" in source:
        return "mistral_v11" if "[ARGS]" in source else "mistral"
    if "<|Bot|>" in source:
        return "internlm"
    return "custom"


class _GenerationTags(Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (HF's assistant-mask tags) and render the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTags, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"the chat template is not valid Jinja (line {exc.lineno}: {exc.message})") from None


class ChatTemplate:
    """A Jinja chat template plus the special-token values it may reference."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        self.source = source
        self.family = detect_family(source)
        self.special_tokens = dict(special_tokens or {})
        self.end_of_turn = END_OF_TURN[self.family]
        self.supports_tools = "tools" in source
        self._template = _compile(source)

    @classmethod
    def builtin(cls, name: str, special_tokens: dict[str, str] | None = None) -> "ChatTemplate":
        known = BUILTIN_TEMPLATES | CHAT_ONLY_TEMPLATES
        if name not in known:
            raise TemplateError(f"unknown chat template {name!r}; built-in ones are {', '.join(known)}")
        return cls(known[name], special_tokens)

    def for_tools(self) -> "ChatTemplate":
        """This template, or its family's built-in one when this one cannot show tools."""
        if self.supports_tools:
            return self
        if self.family in BUILTIN_TEMPLATES:
            return ChatTemplate.builtin(self.family, self.special_tokens)
        raise TemplateError("this model's chat template does not render tools; pass --chat-template chatml|internlm2|llama3")

    def select(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> "ChatTemplate":
        """The template that renders this conversation: :meth:`for_tools` when tools or tool turns appear."""
        if tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
            return self.for_tools()
        return self

    def render(self, messages: list[dict[str, Any]], tools: list[dict] | None = None, add_generation_prompt: bool = False,
               **extra: Any) -> str:
        """Render to text; raises TemplateError with the template's own message on refusal."""
        template = self.select(messages, tools)
        try:
            return template._template.render(
                messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt, **self.special_tokens, **extra
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template failed on this conversation: {exc}") from None
