"""The chat models an agent drives: any :class:`~puyu.client.ChatClient` with fixed sampling.

A model answers :meth:`reply(messages, tools, stop, tool_choice, grammar) <ClientModel.reply>` with a
:class:`Reply` (the client's :class:`~puyu.client.ChatResult`, its text stripped): the text, the tool
calls found in it, the raw text and ``malformed`` when a call in the model's format did not parse.
``grammar`` (a text protocol's, e.g. ReAct's) builds the turn's grammar for a token budget; a local
model with ``constrain=True`` generates under it, a remote one cannot and ignores it.
:class:`LocalChatModel` is a :class:`~puyu.client.LocalClient` (tools through the model's own template,
calls constrained to the tools' schemas) and :class:`OpenAIChatModel` an :class:`~puyu.client.OpenAIClient`
(``puyu serve``, vLLM, LMDeploy, OpenAI ...); both default to greedy decoding and 512 new tokens.
Anything with the same ``reply`` method (a scripted fake in tests) is a model too.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Protocol

from puyu.client import ChatClient, ChatResult, LocalClient, OpenAIClient
from puyu.generation import SamplingParams

Reply = ChatResult  # one model turn, as the agent loop sees it
DEFAULTS = {"temperature": 0.0, "max_new_tokens": 512}


Grammar = Callable[[int], str]  # max_new_tokens -> llguidance grammar of one turn


class ChatModel(Protocol):
    def reply(self, messages: list[dict[str, Any]], tools: list[dict] | None = None, stop: list[str] | None = None,
              tool_choice: str = "auto", grammar: Grammar | None = None) -> Reply: ...


class ClientModel:
    """A chat client and its sampling as an agent's model; each turn's ``stop`` replaces ``params.stop``.

    Args:
        client: the chat client.
        params: sampling for every turn.
        constrain: generate under a turn's ``grammar`` (local clients only: an API takes no grammar).
    """

    def __init__(self, client: ChatClient, params: SamplingParams, constrain: bool = False):
        self.client, self.params, self.constrain = client, params, constrain

    def reply(self, messages: list[dict[str, Any]], tools: list[dict] | None = None, stop: list[str] | None = None,
              tool_choice: str = "auto", grammar: Grammar | None = None) -> Reply:
        return self.finish(self.client.chat(*self.request(messages, tools, stop, tool_choice, grammar)))

    def request(self, messages: list[dict[str, Any]], tools: list[dict] | None, stop: list[str] | None, tool_choice: str,
                grammar: Grammar | None) -> tuple[list[dict[str, Any]], SamplingParams, list[dict] | None, str]:
        """The client's ``(messages, params, tools, tool_choice)`` for one turn (a batch of turns goes to ``chat_many``)."""
        params = replace(self.params, stop=list(stop or []))
        if grammar is not None and self.constrain:
            params = replace(params, grammar=grammar(params.max_new_tokens))
        return messages, params, tools, tool_choice

    @staticmethod
    def finish(result: ChatResult) -> Reply:
        return replace(result, text=result.text.strip())


class LocalChatModel(ClientModel):
    """A :class:`~puyu.api.LLM` as an agent's model.

    Args:
        llm: the loaded model.
        constrain: generate tool calls under a grammar of the tools' schemas, and ReAct turns under the ReAct grammar.
        max_string: characters a constrained call's string arguments share where the tool sets no limit
            (at most half of ``max_new_tokens``, so that a call always closes within the budget).
        sampling: :class:`~puyu.generation.SamplingParams` keywords (default greedy, 512 new tokens).
    """

    def __init__(self, llm, constrain: bool = True, max_string: int = 300, **sampling: Any):
        super().__init__(LocalClient(llm, constrain, max_string), SamplingParams.from_keywords(sampling, **DEFAULTS), constrain)


class OpenAIChatModel(ClientModel):
    """A model behind an OpenAI-compatible endpoint.

    Args:
        model: the served model name (``None``: the first one the server lists).
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        api_key: the server's key (``EMPTY`` when it has none).
        sampling: :class:`~puyu.generation.SamplingParams` keywords (default greedy, 512 new tokens, and
            ``top_p`` 1, the API's own default).
    """

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None, **sampling: Any):
        client = OpenAIClient(base_url or "", api_key, model, hint="check --api-base, --api-model and --api-key")
        super().__init__(client, SamplingParams.from_keywords(sampling, **DEFAULTS, top_p=1.0))

    @property
    def model(self) -> str:
        return self.client.model
