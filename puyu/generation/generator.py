"""Batched generation on the model core, streamed token by token.

:func:`stream` runs a batch of tokenized prompts (left-padded, one static KV
cache) and yields a :class:`Delta` whenever a sequence has new final text or
finishes; :func:`generate` collects them into :class:`Completion` objects.
Stopping: the template's stop tokens (plus ``stop_token_ids``), stop strings
(cut from the text; text that might start a stop string is held back while
streaming), ``max_new_tokens``, and the context window.

This is the single-batch path used by ``puyu chat`` and the Python API; the
serving engine adds continuous batching and a paged cache on top of the same
sampling code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from puyu.errors import ContextLengthError
from puyu.generation.sampling import SamplingParams, SequenceState, sample_next
from puyu.model.transformer import Transformer
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


class _Sequence:
    """One row of the batch: decoding, stop detection and streaming hold-back."""

    def __init__(self, index: int, prompt: list[int], params: SamplingParams, tokenizer: Tokenizer, model: Transformer, stop_ids: set[int]):
        self.index, self.params = index, params
        self.state = SequenceState(params, prompt, model.config.vocab_size, model.device)
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


@torch.inference_mode()
def stream(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams] | None = None,
) -> Iterator[Delta]:
    """Generate for each tokenized prompt; yields :class:`Delta` events (see the module docstring).

    Raises:
        ContextLengthError: a prompt leaves no room in the context window.
    """
    params = params or SamplingParams()
    plist = params if isinstance(params, list) else [params] * len(prompts)
    context = model.config.max_position_embeddings
    longest = max(len(p) for p in prompts)
    for i, p in enumerate(prompts):
        if not p:
            raise ContextLengthError(f"prompt {i} is empty; give at least one token")
        if len(p) >= context:
            raise ContextLengthError(f"prompt {i} has {len(p)} tokens but the context window is {context}; shorten it")
    max_new = min(max(p.max_new_tokens for p in plist), context - longest)
    stop_ids = set(tokenizer.stop_token_ids)
    seqs = [_Sequence(i, p, plist[i], tokenizer, model, stop_ids) for i, p in enumerate(prompts)]
    budgets = [min(plist[i].max_new_tokens, context - len(p)) for i, p in enumerate(prompts)]

    device = model.device
    tokens = torch.zeros(len(prompts), longest, dtype=torch.long)
    real = torch.zeros(len(prompts), longest, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p) :] = torch.tensor(p)
        real[i, longest - len(p) :] = True
    tokens, real = tokens.to(device), real.to(device)
    cache = model.new_cache(len(prompts), longest + max_new)
    if not bool(real.all()):
        cache.set_padding(real)
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    logits = model(tokens, positions, cache=cache, logits_to_keep=1)[:, -1]
    next_pos = positions[:, -1:] + 1
    for step in range(max_new):
        chosen = sample_next(logits, [s.state for s in seqs])
        for seq, token, budget in zip(seqs, chosen, budgets):
            if seq.finish is None:
                yield seq.add(token, step + 1 < budget)
        if all(s.finish for s in seqs):
            return
        if cache.key_padding is not None:
            cache.set_padding(torch.ones(len(prompts), 1, dtype=torch.bool, device=device))
        logits = model(torch.tensor(chosen, device=device)[:, None], next_pos, cache=cache)[:, -1]
        next_pos = next_pos + 1


def generate(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams] | None = None,
) -> list[Completion]:
    """Run :func:`stream` to the end; one :class:`Completion` per prompt, in order."""
    texts = [""] * len(prompts)
    ids: list[list[int]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    for delta in stream(model, tokenizer, prompts, params):
        texts[delta.index] += delta.text
        ids[delta.index] += delta.token_ids
        if delta.finish_reason:
            reasons[delta.index] = delta.finish_reason
    return [Completion(t, i, r, len(p)) for t, i, r, p in zip(texts, ids, reasons, prompts)]
