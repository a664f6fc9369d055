"""Any OpenAI-compatible server behind the backend contract (``puyu serve``, vLLM, LMDeploy, ...).

All requests go through one :class:`~puyu.client.OpenAIClient` (its retry policy, its errors).
Loglikelihood uses the legacy completions "echo" contract that lm-eval's
``local-completions`` relies on (:meth:`~puyu.client.OpenAIClient.score`):
``POST /v1/completions`` with the prompt as token ids (context + continuation,
tokenized here exactly as the local backend does), ``max_tokens=0, echo=True,
logprobs=1, temperature=0``; the prompt's log-probabilities (the first is
``null``) give the continuation's sum, and the top alternatives whether each
continuation token was the greedy one.  Generation uses ``chat`` for chat
prompts (message lists) and ``complete`` (``/v1/completions``) for plain text,
greedy, with the stop strings (the server gets the first four, the rest are cut
here).  Requests run concurrently on a small thread pool.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from puyu.client import OpenAIClient
from puyu.errors import ConfigError
from puyu.eval.backends.base import Backend, GenRequest, cut_at_stop
from puyu.generation import SamplingParams

log = logging.getLogger(__name__)


class OpenAIBackend(Backend):
    """A model on an OpenAI-compatible server.

    Args:
        model: the model name the server knows.
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        tokenizer: a registered name, HF folder or .gguf whose tokenizer matches the served model
            (needed to send token ids); the model itself is not loaded.
        api_key: sent as the bearer token (``EMPTY`` for local servers).
        max_length: tokens per scored prompt (default: the model config's context window minus one, since a
            server keeps room for one generated token even with ``max_tokens=0``; else 2047).
        concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        http_client: an ``httpx2.Client`` to use (tests pass one with a mock transport).
    """

    def __init__(self, model: str, base_url: str, tokenizer: str, api_key: str = "EMPTY", max_length: int | None = None,
                 concurrency: int = 4, timeout_s: float = 600.0, http_client=None):
        from puyu.eval.backends import model_folder
        from puyu.tokenizer import Tokenizer

        if not base_url:
            raise ConfigError("the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1")
        folder = model_folder(tokenizer)
        self.name, self.model = model, model
        self.tokenizer = Tokenizer.from_folder(folder)
        self._max_length = max_length or _context_from_config(folder) - 1
        self.concurrency = concurrency
        self.client = OpenAIClient(base_url, api_key, model, timeout_s=timeout_s, http_client=http_client,
                                   hint="check --base-url, --model and --api-key")

    @property
    def max_length(self) -> int:
        return self._max_length

    def _map(self, fn, items: list) -> list:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def _score(self, pair: tuple[list[int], list[int]]) -> tuple[float, bool]:
        context, continuation = pair
        scored = self.client.score(context + continuation)
        n = len(continuation)
        values = scored.logprobs[-n:]
        if len(scored.logprobs) != len(context) + n or any(v is None for v in values):
            raise ConfigError(f"the server at {self.client.base_url} returned {len(scored.logprobs)} prompt logprobs for "
                              f"{len(context) + n} tokens; it must support echo=True with logprobs over token-id prompts")
        greedy = all(top is not None and max(top, key=top.get) == tok for tok, top in zip(scored.tokens[-n:], scored.top[-n:]))
        return float(sum(values)), greedy

    def loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        return self._map(self._score, pairs)

    def _generate(self, request: GenRequest) -> str:
        context, until, max_new = request
        params = SamplingParams(max_new_tokens=max_new, temperature=0, top_p=1.0, stop=list(until)[:4])
        text = self.client.chat(context, params).text if isinstance(context, list) else self.client.complete(context, params)
        return cut_at_stop(text, list(until))

    def generate_until(self, requests: list[GenRequest]) -> list[str]:
        return self._map(self._generate, requests)


def _context_from_config(folder) -> int:
    import json

    config = folder / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_position_embeddings", 2048))
    return 2048
