"""Tool calls per chat-template family: the one place that knows each family's call format.

The built-in templates (:mod:`puyu.tokenizer.templates`) teach a model to call
tools in its family's format; this module holds everything else about that
format, for serving, agents and constrained decoding alike:

=========== =============================================================================== ==========
family      a call in the model's output                                                    arguments
=========== =============================================================================== ==========
chatml      ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``              arguments
internlm2   ``<|action_start|><|plugin|>\\n{"name": ..., "parameters": ...}<|action_end|>`` parameters
llama3      the whole reply is ``{"name": ..., "parameters": {...}}``                       parameters
mistral     ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` (tokenizers v2-v7:    arguments
            Mistral 7B v0.3, Nemo, Small 3.1, Large 2407/2411)
mistral_v11 ``[TOOL_CALLS]name[ARGS]{...}`` per call, or ``name[CALL_ID]id[ARGS]{...}``     the JSON
            (tokenizers v11+: Mistral Small 3.2, Magistral, Devstral, Ministral 3)
=========== =============================================================================== ==========

A :class:`ToolFormat` parses calls out of finished text (:meth:`~ToolFormat.parse`;
a call whose JSON does not parse stays in the content), decodes a call made
under a grammar (:meth:`~ToolFormat.parse_constrained`), gives the pieces of the
grammar that forces a call (``grammar_open``/``grammar_close``, used by
:func:`puyu.generation.constraints.tool_call_grammar`; None for the Mistral
formats, whose markers llguidance can only name by token id) and says whether its
markers are special tokens that decoding must keep (``keeps_special_tokens``).
Mistral's templates refuse call ids other than 9 letters and digits, so its calls
get such ids (the model's own where it wrote one).
:class:`ToolCallStream` holds back streamed text from the first sign of a call
so that calls never leak into streamed content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    """One parsed call: the function ``name`` and its ``arguments`` as JSON text (as OpenAI sends them)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self, index: int | None = None) -> dict:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


@dataclass(frozen=True)
class ToolFormat:
    """How one template family writes a tool call.

    Attributes:
        family: a key of :data:`FORMATS` (``chatml``, ``internlm2``, ``llama3``, ``mistral``, ``mistral_v11``).
        start: the text that opens a call (streaming hold-back; a reply containing it but no call is malformed).
        opening: where a call's payload begins (the markers before it).
        closing: what must follow the payload for the call to count (the markers after it).
        argument_key: the key of the arguments object in the call JSON.
        opener: the text right before the JSON of a call made under a grammar.
        grammar_open: llguidance Lark items before the call JSON ('' for none; None: no grammar forces a call).
        grammar_close: llguidance Lark items after the call JSON.
        answer_first: a plain answer may not start with this character (so a model commits to a call or an answer
            at its first character); None where a call starts with a special token.
        keeps_special_tokens: the markers are special tokens, so replies that may hold calls decode with them kept.
        payload: what follows an opening: ``object`` (one call's JSON), ``list`` (a JSON list of calls) or
            ``named`` (``name[ARGS]`` then the arguments' JSON).
        short_ids: calls get 9-character alphanumeric ids, the model's own where it wrote a valid one (Mistral).
    """

    family: str
    start: str
    opening: re.Pattern
    closing: re.Pattern
    argument_key: str
    opener: str
    grammar_open: str | None
    grammar_close: str | None
    answer_first: str | None
    keeps_special_tokens: bool = False
    payload: str = "object"
    short_ids: bool = False

    @property
    def has_grammar(self) -> bool:
        """A grammar can force a call in this format (see :func:`puyu.generation.constraints.tool_call_grammar`)."""
        return self.grammar_open is not None

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """``(content without the calls, calls)``; text without a well-formed call comes back unchanged.

        The JSON after each opening marker is decoded as JSON (``raw_decode``), so a string argument
        that contains the closing marker or braces cannot end the call early.
        """
        calls, kept, at = [], [], 0
        for opening in self.opening.finditer(text):
            if opening.start() < at:
                continue
            found = self._read_payload(text, opening.end())
            closing = self.closing.match(text, found[1]) if found else None
            if closing is None:
                continue
            calls.extend(found[0])
            kept.append(text[at : opening.start()])
            at = closing.end()
        if not calls:
            return text, []
        return "".join([*kept, text[at:]]).strip(), calls

    def _read_payload(self, text: str, pos: int) -> tuple[list[ToolCall], int] | None:
        """The calls whose payload starts at ``pos`` and where it ends; None unless every call in it is well-formed."""
        head = None
        if self.payload == "named":
            head = _NAMED_CALL.match(text, pos)
            if head is None:
                return None
            pos = head.end()
        try:
            data, end = json.JSONDecoder().raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        if head:
            items = [{"name": head["name"], "arguments": data, "id": head["id"]}] if isinstance(data, dict) else []
        elif self.payload == "list":
            items = data if isinstance(data, list) else []
        else:
            items = [data]
        calls = [self._call(item) for item in items]
        return (calls, end) if calls and None not in calls else None

    def _call(self, data: Any) -> ToolCall | None:
        """One call from its JSON object (``name`` and ``arguments``/``parameters``); None when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        arguments = data.get("arguments", data.get("parameters", {}))
        call = ToolCall(data["name"], arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))
        if self.short_ids:
            given = data.get("id")
            call.id = given if isinstance(given, str) and _MISTRAL_ID.fullmatch(given) else uuid.uuid4().hex[:9]
        return call

    def parse_constrained(self, text: str) -> tuple[str, dict[str, Any]] | None:
        """``(name, arguments)`` of a call generated under the tool-call grammar, or None for a plain answer.

        The grammar fixes the wrapper, so the JSON is decoded from the first ``{`` after the opener with
        ``raw_decode``: a string argument that contains the closing marker cannot end it early.
        """
        stripped = text.lstrip()
        if not stripped.startswith(self.start.strip()) or "{" not in stripped:
            return None
        try:
            data, _ = json.JSONDecoder().raw_decode(stripped[stripped.index("{", stripped.find(self.opener) + len(self.opener)):])
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        return data["name"], data.get(self.argument_key, {})

    def is_malformed(self, text: str, calls: list[ToolCall]) -> bool:
        """The reply opened a call in this format (an explicit marker) but none parsed."""
        return not calls and self.start != "{" and self.start in text


FORMATS = {
    "chatml": ToolFormat("chatml", "<tool_call>", re.compile(r"<tool_call>\s*"), re.compile(r"\s*</tool_call>"), "arguments",
                         opener="<tool_call>", grammar_open='"<tool_call>\\n"', grammar_close='"\\n</tool_call>"', answer_first="<"),
    "internlm2": ToolFormat("internlm2", "<|action_start|>", re.compile(r"<\|action_start\|>\s*<\|plugin\|>\s*"),
                            re.compile(r"\s*<\|action_end\|>"), "parameters", opener="<|plugin|>",
                            grammar_open='<|action_start|> <|plugin|> "\\n"', grammar_close="<|action_end|>", answer_first=None,
                            keeps_special_tokens=True),
    "llama3": ToolFormat("llama3", "{", re.compile(r"^\s*"), re.compile(r"\s*$"), "parameters",
                         opener="", grammar_open="", grammar_close="", answer_first="{"),
    "mistral": ToolFormat("mistral", "[TOOL_CALLS]", re.compile(r"\[TOOL_CALLS\]\s*"), re.compile(r"\s*"), "arguments",
                          opener="[TOOL_CALLS]", grammar_open=None, grammar_close=None, answer_first=None,
                          keeps_special_tokens=True, payload="list", short_ids=True),
    "mistral_v11": ToolFormat("mistral_v11", "[TOOL_CALLS]", re.compile(r"\[TOOL_CALLS\]\s*"), re.compile(r"\s*"), "arguments",
                              opener="[TOOL_CALLS]", grammar_open=None, grammar_close=None, answer_first=None,
                              keeps_special_tokens=True, payload="named", short_ids=True),
}
# A mistral_v11 call's head: the function name, an optional call id, then the arguments' JSON.
_NAMED_CALL = re.compile(r"(?P<name>[\w.\-]+)(?:\[CALL_ID\](?P<id>\w*))?\[ARGS\]\s*")
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
# InternLM2's code-interpreter action (Lagent): ``<|action_start|><|interpreter|>\ncode<|action_end|>``.
INTERNLM2_INTERPRETER = re.compile(r"<\|action_start\|>\s*<\|interpreter\|>\s*(.*?)\s*(?:<\|action_end\|>|$)", re.DOTALL)


def tool_format(family: str) -> ToolFormat | None:
    """The call format of template ``family``; None for families without one (``custom``)."""
    return FORMATS.get(family)


class ToolCallStream:
    """Splits streamed text into content that is safe to send now and a held-back tail.

    Args:
        family: the template family whose call format to watch for (others pass text straight through).
    """

    def __init__(self, family: str):
        fmt = tool_format(family)
        self.start = fmt.start if fmt else None
        self.text = ""
        self.sent = 0
        self.holding = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the content that can go out now."""
        self.text += piece
        if self.start is None:
            out, self.sent = self.text[self.sent :], len(self.text)
            return out
        if not self.holding:
            at = self.text.find(self.start) if self.start != "{" else (0 if self.text.lstrip().startswith("{") else -1)
            if at >= 0:
                self.holding = True
                out, self.sent = self.text[self.sent : at], max(self.sent, at)
                return out
            keep = next((n for n in range(min(len(self.start) - 1, len(self.text)), 0, -1) if self.text.endswith(self.start[:n])), 0)
            if self.start == "{" and not self.text.strip():
                keep = len(self.text)
            end = len(self.text) - keep
            out, self.sent = self.text[self.sent : end], max(self.sent, end)
            return out
        return ""
