"""What a generated sequence produces: text deltas, step events, stop handling and the finished completion.

:class:`SequenceOutput` turns sampled token ids into final text for one
sequence: incremental detokenization, stop tokens, stop strings (cut from the
text; text that might start a stop string is held back while streaming), the
loop guard (``SamplingParams.loop_guard``: a reply that repeats itself ends
with ``stop``) and the token budget.  The single-batch generator and the serving engine both use it,
so both stop and stream identically.  :class:`StepEvent` is what the engine
reports per request and step; :class:`Completion` is the one collector of
deltas and events into a finished choice (generator, engine and server alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from puyu.generation.loop_guard import LoopGuard
from puyu.generation.sampling import SamplingParams, SequenceState
from puyu.tokenizer import StreamDecoder, Tokenizer


@dataclass
class Delta:
    """One generated token of sequence ``index``: its final new text (may be empty while a
    character or a possible stop string is incomplete) and ids; ``finish_reason``
    (``stop`` or ``length``) is set on the sequence's last delta."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class TokenLogprob:
    """Log-probability of a token under the model (before sampling controls), with the top alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class StepEvent:
    """What one engine step produced for one request."""

    request_id: str
    delta: Delta | None
    logprob: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # with the final event, when asked for
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None  # seconds from arrival to first token, on the first token's event
    error: str | None = None


@dataclass
class Completion:
    """One choice, collected from its deltas (:meth:`add_delta`) or engine events (:meth:`add`).

    Attributes:
        text: the final text (stop strings cut).
        token_ids: the generated ids (a stop token is not included).
        finish_reason: ``stop`` or ``length`` once finished (None before).
        prompt_tokens: length of the prompt.
        logprobs: one entry per generated token, when asked for.
        prompt_logprobs: one entry per prompt token (None for the first), when asked for.
        error: why generation failed, if it did.
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    error: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def add_delta(self, delta: Delta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason

    def add(self, event: StepEvent) -> None:
        if event.delta is not None:
            self.add_delta(event.delta)
        if event.logprob is not None:
            self.logprobs.append(event.logprob)
        self.prompt_tokens = event.prompt_tokens
        if event.finished:
            self.finish_reason, self.error, self.prompt_logprobs = event.finish_reason, event.error, event.prompt_logprobs


class SequenceOutput:
    """One generated sequence: sampling state, detokenization, stop detection, streaming hold-back."""

    def __init__(self, index, prompt: list[int], params: SamplingParams, tokenizer: Tokenizer, vocab_size: int,
                 device: torch.device, stop_ids: set[int]):
        self.index, self.params = index, params
        self.state = SequenceState(params, prompt, vocab_size, device, tokenizer)
        self.decoder = StreamDecoder(tokenizer, params.skip_special_tokens)
        self.stop_ids = set() if params.ignore_eos else stop_ids | set(params.stop_token_ids)
        self.guard = LoopGuard(params.loop_guard) if params.loop_guard else None
        self.text = ""  # decoded so far
        self.sent = 0  # characters of text already yielded
        self.ids: list[int] = []
        self.finish: str | None = None

    def _stop_cut(self) -> int | None:
        hits = [i for s in self.params.stop if (i := self.text.find(s)) >= 0]
        return min(hits) if hits else None

    def _holdback(self) -> int:
        """Characters at the end of ``text`` that could be the start of a stop string."""
        best = 0
        for s in self.params.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def add(self, token: int, budget_left: bool) -> Delta:
        new_ids = [token]
        if token in self.stop_ids:
            self.finish, new_ids = "stop", []
            self.text += self.decoder.flush()
        else:
            self.ids.append(token)
            self.state.record(token)
            self.text += self.decoder.push(token)
            if not budget_left:
                self.finish = "length"
                self.text += self.decoder.flush()
            elif self.guard is not None and self.guard.looping(self.text):
                self.finish = "stop"
                self.text += self.decoder.flush()
        cut = self._stop_cut()
        if cut is not None:
            self.text, self.finish = self.text[:cut], "stop"
        end = len(self.text) if self.finish else len(self.text) - self._holdback()
        delta = Delta(self.index, self.text[self.sent : end], new_ids, self.finish)
        self.sent = max(self.sent, end)
        return delta
