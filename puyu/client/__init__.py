"""One chat-client contract for every stage that talks to a model: a local one or any OpenAI-compatible server.

>>> from puyu import LLM
>>> from puyu.client import LocalClient, OpenAIClient
>>> from puyu.generation import SamplingParams
>>> client = LocalClient(LLM())                     # or OpenAIClient("http://127.0.0.1:8000/v1")
>>> client.chat([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0, max_new_tokens=32)).text

Contract (:class:`ChatClient`): ``chat(messages, params, tools=None, tool_choice="auto") -> ChatResult``
(text, tool calls as :class:`~puyu.tokenizer.tool_formats.ToolCall`, raw text, finish reason, token counts)
and ``stream_chat(messages, params)`` yielding the reply's text pieces.  Sampling is always a typed
:class:`~puyu.generation.SamplingParams`; keyword APIs convert once with ``SamplingParams.from_keywords``.

- :class:`LocalClient` wraps :class:`~puyu.api.LLM`: tools go through the model's own template, calls are
  parsed in its family's format, and a turn with tools can be generated under the tools' grammar.
- :class:`OpenAIClient` uses the official ``openai`` client; it maps ``SamplingParams`` to request fields
  (:func:`~puyu.client.openai_api.request_fields`), retries under one :class:`RetryPolicy`, and turns
  failures into :class:`ClientError` (a ConfigError).  It also continues raw prompts (``complete``) and
  scores prompts (``score``) for the eval API backend.

The RAG answerer, the agent's models, the LLM judge, the eval API backend and the web UI all talk to
models through these clients.  The package sits between :mod:`puyu.api` and the stages: it imports
``puyu.api``, ``puyu.generation``, ``puyu.tokenizer`` and ``puyu.errors``, never a stage.
"""

from puyu.client.base import ChatClient, ChatResult
from puyu.client.local import LocalClient
from puyu.client.openai_api import ClientError, OpenAIClient, PromptLogprobs
from puyu.client.retry import RetryPolicy

__all__ = ["ChatClient", "ChatResult", "ClientError", "LocalClient", "OpenAIClient", "PromptLogprobs", "RetryPolicy"]
