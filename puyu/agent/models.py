"""The chat models an agent drives: a local :class:`~puyu.api.LLM` or any OpenAI-compatible API.

Both answer :meth:`reply(messages, tools, stop, tool_choice) <LocalChatModel.reply>`
with a :class:`Reply`: the text and the tool calls found in it.  The local
model renders ``tools`` through the model's own chat template, parses calls back
with the serving parsers (:mod:`puyu.serve.tool_calls`) and, with
``constrain=True``, generates under :func:`~puyu.generation.constraints.tool_call_grammar`
so that a call is always well-formed JSON valid against the tool's schema.
The API model uses the official ``openai`` client (``puyu serve``, vLLM,
LMDeploy, OpenAI ...).  Anything with the same ``reply`` method (a scripted
fake in tests) is a model too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from puyu.errors import ConfigError
from puyu.generation.constraints import CALL_WRAPPERS, parse_constrained_call, tool_call_grammar
from puyu.serve.tool_calls import START, ToolCall, parse_tool_calls

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """One model turn: ``text`` (without parsed calls), the ``tool_calls`` and the raw text generated.

    ``malformed`` is set when the text starts a call in the model's format that did not parse.
    """

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    raw: str = ""
    malformed: bool = False


class ChatModel(Protocol):
    def reply(self, messages: list[dict[str, Any]], tools: list[dict] | None = None, stop: list[str] | None = None,
              tool_choice: str = "auto") -> Reply: ...


class LocalChatModel:
    """A :class:`~puyu.api.LLM` as an agent's model.

    Args:
        llm: the loaded model.
        constrain: generate tool calls under a grammar of the tools' schemas.
        max_string: longest string argument in a constrained call where the tool sets no limit
            (at most half of ``max_new_tokens``, so that a call always closes within the budget).
        sampling: :class:`~puyu.generation.SamplingParams` keywords (default greedy, 512 new tokens).
    """

    def __init__(self, llm, constrain: bool = True, max_string: int = 300, **sampling: Any):
        self.llm = llm
        self.constrain, self.max_string = constrain, max_string
        self.sampling = {"temperature": 0.0, "max_new_tokens": 512, **sampling}

    @property
    def family(self) -> str:
        template = self.llm.tokenizer.template
        return template.for_tools().family if template else "custom"

    def reply(self, messages: list[dict[str, Any]], tools: list[dict] | None = None, stop: list[str] | None = None,
              tool_choice: str = "auto") -> Reply:
        sampling = {**self.sampling, "stop": list(stop or [])}
        family = self.family if tools else "custom"
        if tools and self.constrain and family in CALL_WRAPPERS:
            sampling["grammar"] = tool_call_grammar(tools, family, tool_choice == "required",
                                                   min(self.max_string, sampling["max_new_tokens"] // 2))
        if family == "internlm2":
            sampling["skip_special_tokens"] = False  # its action markers are special tokens
        raw = self.llm.complete_chat(messages, tools, **sampling).text
        if family == "internlm2":
            raw = raw.replace("<|im_end|>", "").strip()
        if "grammar" in sampling:  # the grammar fixed the shape: decode the JSON exactly
            call = parse_constrained_call(raw, family)
            if call is not None:
                return Reply("", [ToolCall(call[0], json.dumps(call[1], ensure_ascii=False))], raw)
        text, calls = parse_tool_calls(raw, family) if tools else (raw, [])
        start = START.get(family)
        malformed = bool(tools) and not calls and start is not None and start != "{" and start in raw
        return Reply(text.strip(), calls, raw, malformed)


class OpenAIChatModel:
    """A model behind an OpenAI-compatible endpoint, through the official client.

    Args:
        model: the served model name (``None``: the first one the server lists).
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        api_key: the server's key (``EMPTY`` when it has none).
        sampling: ``temperature``, ``max_tokens`` ... passed to ``chat.completions.create``.
    """

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None, **sampling: Any):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=1)
        self.model = model or self._first_model()
        self.sampling = {"temperature": 0.0, **sampling}

    def _first_model(self) -> str:
        import openai

        try:
            models = self.client.models.list().data
        except openai.OpenAIError as e:
            raise ConfigError(f"cannot list models at {self.client.base_url}: {e}; check --api-base and --api-key") from None
        if not models:
            raise ConfigError(f"the server at {self.client.base_url} serves no model; pass its name")
        return models[0].id

    def reply(self, messages: list[dict[str, Any]], tools: list[dict] | None = None, stop: list[str] | None = None,
              tool_choice: str = "auto") -> Reply:
        import openai

        extra: dict[str, Any] = {"tools": tools, "tool_choice": tool_choice} if tools else {}
        if stop:
            extra["stop"] = stop
        try:
            response = self.client.chat.completions.create(model=self.model, messages=messages, **self.sampling, **extra)
        except openai.OpenAIError as e:
            raise ConfigError(f"the model API at {self.client.base_url} failed: {e}") from None
        message = response.choices[0].message
        calls = [ToolCall(c.function.name, c.function.arguments or "{}", c.id) for c in message.tool_calls or []]
        text = message.content or ""
        return Reply(text.strip(), calls, text + "".join(json.dumps(c.to_openai()) for c in calls))
