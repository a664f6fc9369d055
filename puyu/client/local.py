"""A loaded :class:`~puyu.api.LLM` as a :class:`~puyu.client.ChatClient`, with tool calls as the server makes them.

``tools`` are rendered through the model's own chat template and calls are parsed back in its family's
format (:mod:`puyu.tokenizer.tool_formats`).  With ``constrain=True`` a turn that offers tools is generated
under :func:`~puyu.generation.constraints.tool_call_grammar`, so that a call is always well-formed JSON valid
against its tool's schema (``tool_choice="required"``: the reply must be a call); formats that no grammar
can force (Mistral's) are parsed from the free reply.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from puyu.client.base import ChatResult, Messages
from puyu.generation import SamplingParams, generate, stream
from puyu.generation.constraints import tool_call_grammar
from puyu.tokenizer.tool_formats import ToolCall, tool_format

if TYPE_CHECKING:
    from puyu.api import LLM


class LocalClient:
    """Chat with a local model.

    Args:
        llm: the loaded model.
        constrain: generate turns that offer tools under a grammar of the tools' schemas.
        max_string: longest string argument in a constrained call where the tool sets no limit
            (at most half of ``max_new_tokens``, so that a call always closes within the budget).
    """

    def __init__(self, llm: LLM, constrain: bool = True, max_string: int = 300):
        self.llm, self.constrain, self.max_string = llm, constrain, max_string

    @property
    def context_length(self) -> int:
        return self.llm.context_length

    def prompt_ids(self, messages: Messages, tools: list[dict] | None = None) -> list[int]:
        return self.llm.prompt_ids(messages, tools)

    @property
    def family(self) -> str:
        """The template family whose tool-call format the model uses (``custom``: none)."""
        template = self.llm.tokenizer.template
        return template.for_tools().family if template else "custom"

    def stream_chat(self, messages: Messages, params: SamplingParams) -> Iterator[str]:
        for delta in stream(self.llm.model, self.llm.tokenizer, [self.prompt_ids(messages)], params):
            if delta.text:
                yield delta.text

    def chat(self, messages: Messages, params: SamplingParams, tools: list[dict] | None = None,
             tool_choice: str = "auto") -> ChatResult:
        return self.chat_many([(messages, params, tools, tool_choice)])[0]

    def chat_many(self, requests: list[tuple[Messages, SamplingParams, list[dict] | None, str]]) -> list[ChatResult]:
        """Answer several ``(messages, params, tools, tool_choice)`` turns in one batched generation, in order
        (what :meth:`chat` does for one; agents run side by side share the model's batch this way)."""
        formats = [tool_format(self.family) if tools else None for _, _, tools, _ in requests]
        plist = [self._turn_params(params, tools, tool_choice, fmt) for (_, params, tools, tool_choice), fmt in zip(requests, formats)]
        prompts = [self.prompt_ids(messages, tools) for messages, _, tools, _ in requests]
        done = generate(self.llm.model, self.llm.tokenizer, prompts, plist)
        return [self._result(d, fmt, params) for d, fmt, params in zip(done, formats, plist)]

    def _turn_params(self, params: SamplingParams, tools: list[dict] | None, tool_choice: str, fmt) -> SamplingParams:
        if fmt and fmt.has_grammar and self.constrain:
            params = replace(params, grammar=tool_call_grammar(tools, fmt.family, tool_choice == "required",
                                                               min(self.max_string, params.max_new_tokens // 2)))
        if fmt and fmt.keeps_special_tokens:
            params = replace(params, skip_special_tokens=False)
        return params

    def _result(self, done, fmt, params: SamplingParams) -> ChatResult:
        raw = done.text
        if fmt and fmt.keeps_special_tokens:
            raw = raw.replace(self.llm.tokenizer.template.end_of_turn or "", "").strip()
        result = ChatResult(raw, [], raw, finish_reason=done.finish_reason, prompt_tokens=done.prompt_tokens,
                            completion_tokens=len(done.token_ids))
        if fmt is None:
            return result
        call = fmt.parse_constrained(raw) if params.grammar is not None else None  # the grammar fixed the shape: decode exactly
        if call is not None:
            calls = [ToolCall(call[0], json.dumps(call[1], ensure_ascii=False))]
            return replace(result, text="", tool_calls=calls, finish_reason="tool_calls")
        text, calls = fmt.parse(raw)
        return replace(result, text=text, tool_calls=calls, malformed=fmt.is_malformed(raw, calls),
                       finish_reason="tool_calls" if calls else done.finish_reason)
