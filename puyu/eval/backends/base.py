"""The model contract every backend meets, and the token handling they all share.

Three methods, as in lm-evaluation-harness:

- ``loglikelihood([(context, continuation)]) -> [(logprob, is_greedy)]``:
  the summed log-probability of the continuation's tokens after the context,
  and whether greedy decoding would have produced exactly them;
- ``loglikelihood_rolling([text]) -> [logprob]``: of a whole text, in windows
  of the context length (each window predicts ``max_length - 1`` new tokens after
  one token of context, the first after the BOS/EOS prefix token);
- ``generate_until([(context, until, max_new_tokens)]) -> [text]``: greedy text
  cut at the first stop string; ``context`` is a text prompt or a list of chat
  messages, which the backend renders with the model's chat template.

Context and continuation are tokenized the lm-eval way so every backend sends
the same ids: trailing spaces of the context move to the continuation, the
continuation's ids are ``encode(context + continuation)[len(encode(context)):]``
with no special tokens, an empty context becomes the prefix token, and a pair
longer than the context window loses its oldest tokens (:meth:`Backend.fit_window`).
Backends implement ``loglikelihood_tokens`` on such id pairs and ``generate_until``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from puyu.tokenizer import Tokenizer

LLRequest = tuple[str, str]
GenRequest = tuple[str | list[dict], list[str], int]  # a text prompt, or chat messages


class Backend(ABC):
    """A model behind the three-method contract (see the module docstring)."""

    name: str = "model"
    tokenizer: Tokenizer

    def loglikelihood(self, requests: list[LLRequest]) -> list[tuple[float, bool]]:
        """Summed log-probability of each continuation after its context, and whether it is the greedy one."""
        return self.loglikelihood_tokens([self.fit_window(*self.encode_pair(c, x)) for c, x in requests])

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        """Log-probability of each whole text, window by window."""
        windows = [self.rolling_windows(t) for t in texts]
        scores = self.loglikelihood_tokens([w for ws in windows for w in ws])
        out, i = [], 0
        for ws in windows:
            out.append(sum(s for s, _ in scores[i:i + len(ws)]))
            i += len(ws)
        return out

    @abstractmethod
    def loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """:meth:`loglikelihood` on tokenized ``(context_ids, continuation_ids)`` pairs."""

    @abstractmethod
    def generate_until(self, requests: list[GenRequest]) -> list[str]:
        """Greedy text for each ``(context, until, max_new_tokens)``, cut at the first stop string."""

    @property
    @abstractmethod
    def max_length(self) -> int:
        """The context window in tokens."""

    def render_chat(self, messages: list[dict]) -> str:
        """A conversation through the model's chat template, ready for the reply."""
        return self.tokenizer.render_text(messages, add_generation_prompt=True)

    # ---- shared token handling ----------------------------------------------------------
    @property
    def prefix_id(self) -> int:
        ident = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
        return 0 if ident is None else ident

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, tokenized together the lm-eval way."""
        if not context:
            return [self.prefix_id], self.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids):]

    def fit_window(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[list[int], list[int]]:
        """Drop the oldest tokens so context + continuation fit in ``max_length`` (at least one context token stays).

        lm-eval keeps ``max_length + 1`` tokens because the last one is only a target;
        keeping ``max_length`` lets a server, which scores its whole prompt, see the same ids.
        """
        continuation_ids = continuation_ids[-(self.max_length - 1):]
        return context_ids[-(self.max_length - len(continuation_ids)):], continuation_ids

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """``(context_ids, continuation_ids)`` windows that together predict every token of ``text`` once."""
        ids = self.encode(text)
        windows, start = [], 0
        while start < len(ids):
            end = min(start + self.max_length - 1, len(ids))
            windows.append((([self.prefix_id] + ids[:start])[-1:], ids[start:end]))
            start = end
        return windows


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = min((text.find(s) for s in until if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]
