"""A model behind any OpenAI-compatible server (``puyu serve``, vLLM, LMDeploy, OpenAI ...) as a :class:`~puyu.client.ChatClient`.

Requests go through the official ``openai`` client with its own retries off: :class:`~puyu.client.RetryPolicy`
decides.  :func:`request_fields` is the one mapping of :class:`~puyu.generation.SamplingParams` to a
request: ``max_new_tokens`` becomes ``max_tokens`` here and only here; ``temperature`` is always sent;
``top_p``, ``seed``, ``stop`` and the penalties when not at their off value; the puyu/vLLM extensions
(``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``, ``skip_special_tokens``)
in ``extra_body`` likewise, so a server that lacks them sees nothing new unless they are used.  A failure
that persists, or one not worth retrying, raises :class:`ClientError` (a ConfigError) naming what failed,
the URL and what to check (``hint``).  Besides chat, :meth:`OpenAIClient.complete` continues a raw prompt
and :meth:`OpenAIClient.score` reads a prompt's log-probabilities (``/v1/completions`` with ``echo``).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from puyu.client.base import ChatResult, Messages
from puyu.client.retry import RetryPolicy
from puyu.errors import ConfigError
from puyu.generation import SamplingParams
from puyu.tokenizer.tool_formats import ToolCall

log = logging.getLogger(__name__)
T = TypeVar("T")

# Fields sent only when they differ from these off values (the server's defaults then apply).
STANDARD_OFF: dict[str, Any] = {"top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": None, "stop": []}
EXTENSION_OFF: dict[str, Any] = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": False, "stop_token_ids": [],
                                 "skip_special_tokens": True}


class ClientError(ConfigError):
    """A request to a model server failed for good; ``status`` is the HTTP status (None: no answer), ``detail`` the reason."""

    def __init__(self, message: str, status: int | None, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


@dataclass
class PromptLogprobs:
    """A prompt's tokens (as text), the log-probability of each (the first is None) and each one's top alternatives."""

    tokens: list[str]
    logprobs: list[float | None]
    top: list[dict[str, float] | None]


def request_fields(params: SamplingParams) -> dict[str, Any]:
    """The request fields that ask a server for ``params`` (see the module docstring)."""
    if params.grammar is not None:
        raise ConfigError("a grammar constrains local generation only; through a server use tools with tool_choice='required'")
    fields = {"max_tokens": params.max_new_tokens, "temperature": params.temperature}
    fields |= {name: getattr(params, name) for name, off in STANDARD_OFF.items() if getattr(params, name) != off}
    extra = {name: getattr(params, name) for name, off in EXTENSION_OFF.items() if getattr(params, name) != off}
    return fields | ({"extra_body": extra} if extra else {})


class OpenAIClient:
    """Chat with (and complete or score on) a model behind an OpenAI-compatible server.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: its bearer token (None: ``EMPTY``, for servers without one).
        model: the served model's name (None: the first one the server lists).
        retry: when and how often to retry.
        timeout_s: per-request timeout.
        hint: what the user should check when a request fails (e.g. the flags that set the URL and key).
        tokenizer: the served model's tokenizer, when known: :meth:`prompt_ids` counts prompt tokens with it.
        context_length: the model's window, reported (as ``context_length``) only with a tokenizer.
        http_client: an ``httpx2.Client`` for the ``openai`` client (tests pass one with a mock transport).
    """

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None, *, retry: RetryPolicy = RetryPolicy(),
                 timeout_s: float = 600.0, hint: str = "check the server's URL, the model name and the API key", tokenizer=None,
                 context_length: int | None = None, http_client=None):
        import openai

        if not base_url:
            raise ConfigError(f"no model server URL given (e.g. http://127.0.0.1:8000/v1); {hint}")
        self.base_url, self.retry, self.hint, self.tokenizer = base_url, retry, hint, tokenizer
        self._context_length = context_length
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=0,
                                     http_client=http_client)
        self.model = model or self._first_model()

    @property
    def context_length(self) -> int | None:
        return self._context_length if self.tokenizer is not None else None

    def prompt_ids(self, messages: Messages, tools: list[dict] | None = None) -> list[int]:
        """The conversation's prompt ids under the served model's template (needs ``tokenizer``)."""
        return self.tokenizer.render(messages, tools, add_generation_prompt=True).ids

    def _first_model(self) -> str:
        models = self._request("listing the models", lambda: self._client.models.list().data)
        if not models:
            raise ConfigError(f"the server at {self.base_url} serves no model; pass its name")
        return models[0].id

    def _request(self, what: str, send: Callable[[], T]) -> T:
        """``send()``, retried under :attr:`retry`; a lasting failure raises :class:`ClientError`."""
        import openai

        for attempt in itertools.count():
            try:
                return send()
            except openai.APIStatusError as exc:
                failure, status, headers = exc, exc.status_code, exc.response.headers
            except openai.APIConnectionError as exc:  # timeouts too
                failure, status, headers = exc, None, None
            except openai.OpenAIError as exc:
                raise self._error(what, exc) from None
            wait = self.retry.wait(attempt, status, headers)
            if wait is None:
                raise self._error(what, failure) from None
            log.info("%s at %s failed (%s); retry %d of %d in %.1f s", what, self.base_url, failure, attempt + 1,
                     self.retry.max_retries, wait)
            time.sleep(wait)

    def _error(self, what: str, exc: Exception) -> ClientError:
        """The :class:`ClientError` for ``exc`` (an ``openai`` error) raised while ``what``."""
        detail = getattr(exc, "message", None) or str(exc)
        if exc.__cause__ is not None:
            detail += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
        status = getattr(exc, "status_code", None)
        import openai

        if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
            return ClientError(f"cannot reach the model server at {self.base_url} ({what}): {detail}; {self.hint}", status, detail)
        return ClientError(f"{what} at {self.base_url} failed: {detail}; {self.hint}", status, detail)

    def chat(self, messages: Messages, params: SamplingParams, tools: list[dict] | None = None,
             tool_choice: str = "auto") -> ChatResult:
        extra: dict[str, Any] = {"tools": tools, "tool_choice": tool_choice} if tools else {}
        response = self._request(f"model {self.model}", lambda: self._client.chat.completions.create(
            model=self.model, messages=messages, **request_fields(params), **extra))
        choice = response.choices[0]
        calls = [ToolCall(c.function.name, c.function.arguments or "{}", c.id) for c in choice.message.tool_calls or []]
        text = choice.message.content or ""
        usage = response.usage
        return ChatResult(text, calls, text + "".join(json.dumps(c.to_openai()) for c in calls), finish_reason=choice.finish_reason,
                          prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0)

    def stream_chat(self, messages: Messages, params: SamplingParams) -> Iterator[str]:
        import openai

        what = f"model {self.model}"
        stream = self._request(what, lambda: self._client.chat.completions.create(
            model=self.model, messages=messages, stream=True, **request_fields(params)))
        try:
            with stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except openai.OpenAIError as exc:
            raise self._error(what, exc) from None

    def complete(self, prompt: str | list[int], params: SamplingParams) -> str:
        """The continuation of a raw prompt (text or token ids; no chat template), from ``/v1/completions``."""
        reply = self._request(f"model {self.model}", lambda: self._client.completions.create(
            model=self.model, prompt=prompt, **request_fields(params)))
        return reply.choices[0].text

    def score(self, prompt_ids: list[int]) -> PromptLogprobs:
        """The log-probability of every token of ``prompt_ids`` (``/v1/completions``, ``max_tokens=0``, ``echo``, ``logprobs=1``)."""
        reply = self._request(f"model {self.model}", lambda: self._client.completions.create(
            model=self.model, prompt=prompt_ids, max_tokens=0, echo=True, logprobs=1, temperature=0))
        logprobs = reply.choices[0].logprobs
        if logprobs is None or logprobs.token_logprobs is None:
            raise ConfigError(f"the server at {self.base_url} returned no prompt logprobs; it must support echo=True with "
                              "logprobs over token-id prompts (puyu serve and vLLM do)")
        tokens = list(logprobs.tokens or [])
        return PromptLogprobs(tokens, list(logprobs.token_logprobs), list(logprobs.top_logprobs or [None] * len(tokens)))
