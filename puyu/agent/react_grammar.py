"""The grammar a ReAct turn is generated under, so that a local model's action always parses.

A turn is ``[Thought: <one line>\\n]`` followed by either ``Action: <tool>\\nAction Input: <input>`` or
``Final Answer: <text>``:

- the tool name is one of the offered tools (the model commits to one by its first characters);
- the input is JSON valid against that tool's schema (exactly its documented keys, capped by
  :func:`~puyu.generation.constraints.arguments_schema`), except for a code tool (one required
  string argument ``code``, like ``python``): its input is the code itself in a fenced
  ````python`` block, because a small model writes code far more reliably than code escaped
  inside a JSON string (Lagent's interpreter action takes raw code the same way);
- every free part has a cap in characters (:class:`ReActCaps`, scaled to the turn's token budget):
  the thought, each string argument, the code and the final answer, so every part of a reply, and
  so the whole reply, is bounded and a call always closes before the budget runs out.

``react_grammar(tools, mode, budget)`` builds the llguidance Lark text; ``mode`` is ``auto`` (act or
answer), ``act`` (``tool_choice="required"``) or ``answer`` (the forced last step).
:class:`~puyu.agent.protocols.ReActProtocol` parses what it produces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from puyu.errors import ConfigError
from puyu.generation.constraints import TOOL_CAPS, arguments_schema, json_rule

MODES = ("auto", "act", "answer")
CODE_FENCE = "```python\n"


@dataclass(frozen=True)
class ReActCaps:
    """Most characters of each free part of a ReAct turn (``string``: a call's string arguments together)."""

    thought: int
    string: int
    code: int
    answer: int

    @classmethod
    def for_budget(cls, max_new_tokens: int) -> ReActCaps:
        """Caps that fit a turn of ``max_new_tokens``: thought ≤ 1/4, the code ≤ 1/2, all string arguments ≤ 1/3
        (a Chinese character may take two or three tokens)."""
        if max_new_tokens < 16:
            raise ConfigError(f"a ReAct turn needs at least 16 new tokens, got max_new_tokens={max_new_tokens}")
        return cls(thought=min(200, max_new_tokens // 4), string=min(TOOL_CAPS.string, max_new_tokens // 3),
                   code=min(1000, max_new_tokens // 2), answer=min(2000, max_new_tokens * 4))


def is_code_tool(function: dict[str, Any]) -> bool:
    """The tool takes one required string ``code`` (its ReAct input is a fenced code block)."""
    parameters = function.get("parameters") or {}
    return parameters.get("required") == ["code"] and (parameters.get("properties") or {}).get("code", {}).get("type") == "string"


def react_grammar(tools: list[dict[str, Any]], mode: str, caps: ReActCaps) -> str:
    """Lark grammar of one ReAct turn over ``tools`` (OpenAI format).

    Args:
        tools: the offered tools; their names and argument schemas.
        mode: ``auto``, ``act`` or ``answer`` (see the module docstring).
        caps: characters allowed to each free part.
    """
    if mode not in MODES:
        raise ConfigError(f"ReAct grammar mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "answer" and not tools:
        raise ConfigError("a ReAct action grammar needs at least one tool")
    body = {"auto": "(action | final)", "act": "action", "answer": "final"}[mode]
    lines = [f"start: thought? {body}", 'thought: "Thought: " THOUGHT "\\n"', 'final: "Final Answer: " ANSWER',
             f"THOUGHT: /[^\\n]{{1,{caps.thought}}}/", f"ANSWER: /(?s:.{{1,{caps.answer}}})/"]
    if mode != "answer":
        calls, tool_caps = [], replace(TOOL_CAPS, string=caps.string)
        for i, tool in enumerate(tools):
            function = tool.get("function", tool)
            head = json.dumps(f"{function['name']}\nAction Input: ", ensure_ascii=False)
            if is_code_tool(function):
                lines.append(f"call_{i}: {head} {json.dumps(CODE_FENCE)} CODE \"```\"")
            else:
                lines += [f"call_{i}: {head} args_{i}", f"args_{i}: {json_rule(arguments_schema(tool, tool_caps))}"]
            calls.append(f"call_{i}")
        lines += [f'action: "Action: " ({" | ".join(calls)})', f"CODE: /[^`]{{1,{caps.code}}}/"]
    return "\n".join(lines)
