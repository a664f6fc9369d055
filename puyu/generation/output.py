"""What a generated sequence produces: text deltas, stop handling and the final completion.

:class:`SequenceOutput` turns sampled token ids into final text for one
sequence: incremental detokenization, stop tokens, stop strings (cut from the
text; text that might start a stop string is held back while streaming) and the
token budget.  The single-batch generator and the serving engine both use it,
so both stop and stream identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
class Completion:
    """A finished sequence: its text, generated ids and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class SequenceOutput:
    """One generated sequence: sampling state, detokenization, stop detection, streaming hold-back."""

    def __init__(self, index, prompt: list[int], params: SamplingParams, tokenizer: Tokenizer, vocab_size: int,
                 device: torch.device, stop_ids: set[int]):
        self.index, self.params = index, params
        self.state = SequenceState(params, prompt, vocab_size, device, tokenizer)
        self.decoder = StreamDecoder(tokenizer, params.skip_special_tokens)
        self.stop_ids = set() if params.ignore_eos else stop_ids | set(params.stop_token_ids)
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
        cut = self._stop_cut()
        if cut is not None:
            self.text, self.finish = self.text[:cut], "stop"
        end = len(self.text) if self.finish else len(self.text) - self._holdback()
        delta = Delta(self.index, self.text[self.sent : end], new_ids, self.finish)
        self.sent = max(self.sent, end)
        return delta
