"""Tool calls in model output, per template family, back into OpenAI ``tool_calls``.

The formats are the ones puyu's templates teach (see
:mod:`puyu.tokenizer.templates`): ChatML/Hermes ``<tool_call>{"name", "arguments"}</tool_call>``,
InternLM2 ``<|action_start|><|plugin|>\\n{"name", "parameters"}<|action_end|>`` and
Llama 3 JSON ``{"name", "parameters"}``.  A call whose JSON does not parse stays
in the text content.  :class:`ToolCallStream` holds back streamed text from the
first sign of a call so that calls never leak into ``content`` deltas.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

# Everything between the markers is the call's JSON (a "}" inside a string argument must not end it).
PATTERNS = {
    "chatml": re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL),
    "internlm2": re.compile(r"<\|action_start\|>\s*<\|plugin\|>(.*?)<\|action_end\|>", re.DOTALL),
    "llama3": re.compile(r"^\s*(\{.*\})\s*$", re.DOTALL),
}
START = {"chatml": "<tool_call>", "internlm2": "<|action_start|>", "llama3": "{"}


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self, index: int | None = None) -> dict:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def parse_tool_calls(text: str, family: str) -> tuple[str, list[ToolCall]]:
    """``(content without the calls, calls)``; families without a format return no calls."""
    pattern = PATTERNS.get(family)
    if pattern is None:
        return text, []
    calls = []

    def take(match: re.Match) -> str:
        try:
            data = json.loads(match.group(1).strip())
        except json.JSONDecodeError:
            return match.group(0)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return match.group(0)
        arguments = data.get("arguments", data.get("parameters", {}))
        calls.append(ToolCall(data["name"], arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)))
        return ""

    content = pattern.sub(take, text)
    return content.strip() if calls else text, calls


class ToolCallStream:
    """Splits streamed text into content that is safe to send now and a held-back tail."""

    def __init__(self, family: str):
        self.start = START.get(family)
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
