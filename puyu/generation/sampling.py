"""Sampling parameters and next-token selection for a batch of sequences.

Each sequence has its own :class:`SamplingParams` and :class:`SequenceState`
(its token counts for penalties and its seeded RNG); :func:`sample_next` takes
logits ``[B, vocab]`` and returns the chosen ids ``[B]``.  Order of operations
(as in vLLM): repetition penalty (HF-style, over prompt and output), presence
and frequency penalties (OpenAI-style, over the output), then greedy when
``temperature == 0``, else temperature, top-k, top-p, min-p and a draw.
A sequence with a ``grammar`` (see :mod:`puyu.generation.constraints`) has its
disallowed tokens masked after the penalties and its matcher advanced with the
chosen token.

When a user sets no sampling, the model's own recommendation applies
(:func:`recommended_sampling`, from its ``generation_config.json``), over
:class:`SamplingParams`' defaults; what the user sets wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from puyu.errors import ConfigError
from puyu.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# The one table of allowed values, in pydantic's Field terms (ge/gt/le): SamplingParams checks it, and the
# HTTP schemas (serve, web) build their fields from it, so a bound is written once.  Temperature stops at 2 as in OpenAI's API.
LIMITS: dict[str, dict[str, float]] = {
    "max_new_tokens": {"ge": 0}, "temperature": {"ge": 0, "le": 2}, "top_p": {"gt": 0, "le": 1}, "top_k": {"ge": 0},
    "min_p": {"ge": 0, "le": 1}, "repetition_penalty": {"gt": 0}, "presence_penalty": {"ge": -2, "le": 2},
    "frequency_penalty": {"ge": -2, "le": 2}, "loop_guard": {"ge": 0},
}
HINTS = {"max_new_tokens": "0 only scores the prompt", "temperature": "0 is greedy", "top_k": "0 turns it off",
         "repetition_penalty": "1 turns it off", "loop_guard": "0 turns it off; 6-10 catches loops of short sentences"}


def limit_rule(name: str) -> str:
    """``name``'s allowed values in words, e.g. ``must be in (0, 1]`` or ``must be >= 0 (0 turns it off)``."""
    bound = LIMITS[name]
    low = ("[", bound["ge"]) if "ge" in bound else ("(", bound["gt"]) if "gt" in bound else None
    if low and "le" in bound:
        rule = f"must be in {low[0]}{low[1]:g}, {bound['le']:g}]"
    else:
        rule = f"must be {'>=' if low[0] == '[' else '>'} {low[1]:g}"
    return f"{rule} ({HINTS[name]})" if name in HINTS else rule


def within_limits(name: str, value: float) -> bool:
    bound = LIMITS[name]
    return (value >= bound.get("ge", value) and value <= bound.get("le", value)
            and ("gt" not in bound or value > bound["gt"]))


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    Attributes:
        max_new_tokens: most tokens to generate (capped by the context window; 0 only scores the prompt).
        temperature: 0 is greedy; higher is more random (at most 2).
        top_p: keep the smallest set of tokens whose probability reaches ``top_p`` (1 = off).
        top_k: keep the ``top_k`` most likely tokens (0 = off).
        min_p: drop tokens less likely than ``min_p`` times the top token (0 = off).
        repetition_penalty: >1 discourages tokens already in prompt or output (1 = off).
        presence_penalty: subtracted once from tokens already generated (OpenAI, -2..2).
        frequency_penalty: subtracted per occurrence in the output (OpenAI, -2..2).
        seed: makes sampling reproducible per request.
        stop: strings that end the reply (not included in it).
        stop_token_ids: extra ids that end the reply (the template's are always used).
        ignore_eos: keep going past stop tokens (benchmarks).
        skip_special_tokens: leave special tokens out of the text.
        grammar: constrain the output to this llguidance grammar (Lark text or
            JSON; build one with puyu.generation.constraints).
        loop_guard: end the reply once any run of this many words (numbers count as
            one word, so "[5]" and "[6]" match) occurs for the third time; 0 = off
            (see puyu.generation.loop_guard).
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    grammar: str | None = None
    loop_guard: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        for name in LIMITS:
            if not within_limits(name, getattr(self, name)):
                raise ConfigError(f"sampling: {name} {limit_rule(name)}, got {getattr(self, name)}")
        if self.loop_guard == 1:
            raise ConfigError("sampling: loop_guard counts words per repeated run; use 0 (off) or at least 2, got 1")

    @classmethod
    def from_keywords(cls, keywords: dict[str, Any], **defaults: Any) -> "SamplingParams":
        """From keyword arguments of the keyword APIs (``LLM.chat(..., temperature=0)``) over ``defaults``.

        Raises:
            ConfigError: an unknown name, naming the known ones (``max_tokens`` gets a hint: here it is ``max_new_tokens``).
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(keywords) - set(known))
        if unknown:
            hint = "; the token limit is max_new_tokens" if "max_tokens" in unknown else ""
            raise ConfigError(f"unknown sampling option(s) {unknown}{hint}; known: {', '.join(known)}")
        return cls(**{**defaults, **keywords})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def recommended_sampling(tokenizer: Tokenizer) -> dict[str, float]:
    """The model's recommended sampling values that are within :data:`LIMITS` (an out-of-range one is logged and left
    out, so a bad ``generation_config.json`` never blocks generation)."""
    usable = {}
    for name, value in tokenizer.sampling_defaults.items():
        if within_limits(name, value):
            usable[name] = value
        else:
            log.warning("ignoring the model's recommended %s=%s: it %s", name, value, limit_rule(name))
    return usable


class SequenceState:
    """Per-sequence sampling state: output token counts, prompt tokens, RNG."""

    def __init__(self, params: SamplingParams, prompt: list[int], vocab_size: int, device: torch.device, tokenizer=None):
        self.params = params
        self.vocab_size = vocab_size
        needs_counts = params.repetition_penalty != 1 or params.presence_penalty or params.frequency_penalty
        self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device) if needs_counts else None
        self.prompt_seen = None
        if params.repetition_penalty != 1:
            self.prompt_seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.prompt_seen[torch.tensor([t for t in prompt if t < vocab_size], dtype=torch.long, device=device)] = True
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)
        self.matcher = None
        if params.grammar is not None:
            from puyu.generation.constraints import GrammarMatcher

            if tokenizer is None:
                raise ConfigError("sampling: a grammar needs the tokenizer; use generate/stream or the engine")
            self.matcher = GrammarMatcher(params.grammar, tokenizer, vocab_size)

    def record(self, token: int) -> None:
        if self.counts is not None and token < self.vocab_size:
            self.counts[token] += 1


def _penalize(logits: torch.Tensor, state: SequenceState) -> torch.Tensor:
    p = state.params
    if state.counts is None:
        return logits
    if p.repetition_penalty != 1:
        seen = state.prompt_seen | (state.counts > 0)
        logits = torch.where(seen & (logits > 0), logits / p.repetition_penalty, torch.where(seen, logits * p.repetition_penalty, logits))
    if p.presence_penalty or p.frequency_penalty:
        logits = logits - p.presence_penalty * (state.counts > 0) - p.frequency_penalty * state.counts
    return logits


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Mask (``-inf``) tokens outside top-k, the top-p nucleus, and below min-p; ``logits`` ``[V]``."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p; the top token always stays.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), float("-inf"))
    if min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, states: list[SequenceState]) -> list[int]:
    """Choose one token per row of ``logits`` ``[B, vocab]`` for the sequences ``states``."""
    logits = logits.float()
    if all(s.params.greedy and s.counts is None and s.matcher is None for s in states):
        return logits.argmax(-1).tolist()
    chosen = []
    for row, state in zip(logits, states):
        row = _penalize(row[: state.vocab_size], state)
        if state.matcher is not None:
            row = state.matcher.mask(row)
        p = state.params
        if p.greedy:
            chosen.append(int(row.argmax()))
        else:
            row = filter_logits(row / p.temperature, p.top_k, p.top_p, p.min_p)
            chosen.append(int(torch.multinomial(row.softmax(-1), 1, generator=state.generator)))
        if state.matcher is not None:
            state.matcher.advance(chosen[-1])
    return chosen
