"""The chat-client contract: :class:`ChatClient`, its :class:`ChatResult`, and sampling keywords made typed once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from puyu.generation import SamplingParams
from puyu.tokenizer.tool_formats import ToolCall

Messages = list[dict[str, Any]]


@dataclass
class ChatResult:
    """One assistant turn.

    Attributes:
        text: the reply without its tool calls, as generated (not stripped).
        tool_calls: the calls parsed out of the reply (the server's ``message.tool_calls``).
        raw: everything generated, calls included (what the model would see of its own turn).
        malformed: the reply opens a call in the model's format that did not parse (local models only).
        finish_reason: ``stop``, ``length`` or ``tool_calls``.
        prompt_tokens: tokens of the rendered conversation.
        completion_tokens: tokens generated.
    """

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    raw: str = ""
    malformed: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatClient(Protocol):
    """A chat model, local or behind an OpenAI-compatible server.

    A client that knows the model's tokenizer also has ``context_length`` (tokens, else None) and
    ``prompt_ids(messages)``, so that callers can fit a prompt to the window before sending it.
    """

    def chat(self, messages: Messages, params: SamplingParams, tools: list[dict] | None = None,
             tool_choice: str = "auto") -> ChatResult:
        """The reply to ``messages``; with ``tools`` the model may call them (``required``: it must)."""

    def stream_chat(self, messages: Messages, params: SamplingParams) -> Iterator[str]:
        """The reply to ``messages``, piece by piece."""


