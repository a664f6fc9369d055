"""Samples -> token rows: tokenize through the one render function, truncate, pack, collate.

Contract:

- :func:`tokenize_samples` renders chats with ``Tokenizer.render`` (loss on
  assistant tokens only, or on every token with ``train_on_prompt``) and
  encodes raw text (+ EOS, loss everywhere, long documents cut into
  ``max_length`` chunks - nothing is lost).  Each :class:`Example` carries
  ``targets``: ``targets[i]`` is the token to predict at position ``i`` (the
  next token when it is trained, else ``-100``), so the shift happens *inside*
  a sample and a packed neighbour is never a target.
- A chat longer than ``max_length`` is cut at the end; if that leaves no
  trained token, the sample is dropped.  Both are counted in
  :class:`TokenizeReport` and logged as warnings - never silently.
- :func:`pack` fills rows of ``max_length`` first-fit (longest first);
  :func:`collate` pads rows into a :class:`Batch` whose ``positions`` restart
  at 0 for every packed sample and whose ``mask`` ``[B, 1, T, T]`` is causal and
  block-diagonal, so packed samples never see each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from puyu.data.formats import Sample
from puyu.tokenizer import Tokenizer

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class Example:
    """One tokenized sample: ``ids`` and next-token ``targets`` (``-100`` = no loss), same length."""

    ids: list[int]
    targets: list[int]
    origin: str = ""

    @property
    def trained_tokens(self) -> int:
        return sum(t != IGNORE for t in self.targets)


@dataclass
class TokenizeReport:
    """What truncation did: samples cut short and samples dropped (their reply began past ``max_length``)."""

    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass
class Row:
    """A training row: one or more examples back to back (``segments[i]`` numbers the example of token ``i``)."""

    ids: list[int]
    targets: list[int]
    positions: list[int]
    segments: list[int]


@dataclass
class Batch:
    """Tensors for one forward pass.

    Attributes:
        tokens: ``[B, T]`` input ids (right-padded).
        targets: ``[B, T]`` next-token ids, ``-100`` where no loss is taken.
        positions: ``[B, T]`` RoPE positions, restarting at 0 for each packed example.
        mask: ``[B, 1, T, T]`` bool (True = may attend) when rows hold several examples, else None (causal).
        real_tokens: tokens that are not padding.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor | None
    real_tokens: int = 0

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device) -> "Batch":
        mask = self.mask.to(device) if self.mask is not None else None
        return Batch(self.tokens.to(device), self.targets.to(device), self.positions.to(device), mask, self.real_tokens)


def _shift(ids: list[int], labels: list[int]) -> list[int]:
    return labels[1:] + [IGNORE] if ids else []


def tokenize_samples(samples: list[Sample], tokenizer: Tokenizer, max_length: int,
                     train_on_prompt: bool = False) -> tuple[list[Example], TokenizeReport]:
    """Tokenize samples (see the module docstring); returns the examples and the truncation report."""
    examples: list[Example] = []
    report = TokenizeReport()
    eos = tokenizer.eos_id
    for sample in samples:
        if sample.text is not None:
            ids = tokenizer.encode(sample.text) + ([eos] if eos is not None else [])
            for start in range(0, len(ids), max_length):
                chunk = ids[start : start + max_length]
                if len(chunk) > 1:
                    examples.append(Example(chunk, _shift(chunk, chunk), sample.origin))
            continue
        chat = tokenizer.render(sample.messages, sample.tools)
        labels = list(chat.ids) if train_on_prompt else [i if m else IGNORE for i, m in zip(chat.ids, chat.loss_mask)]
        ids = list(chat.ids)
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            if all(t == IGNORE for t in labels[1:]):
                report.dropped.append(sample.origin)
                continue
            report.truncated.append(sample.origin)
        examples.append(Example(ids, _shift(ids, labels), sample.origin))
    if report.truncated:
        log.warning("%d samples were longer than max_length=%d and lost the end of their reply (first: %s); "
                    "raise data.max_length to keep it",
                    len(report.truncated), max_length, report.truncated[0])
    if report.dropped:
        log.warning("%d samples were dropped: their assistant reply starts after max_length=%d (first: %s); "
                    "raise data.max_length to train on them",
                    len(report.dropped), max_length, report.dropped[0])
    return examples, report


def pack(examples: list[Example], max_length: int) -> list[Row]:
    """First-fit-decreasing packing into rows of at most ``max_length`` tokens (deterministic)."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].ids), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        size = len(examples[i].ids)
        slot = next((b for b, room in enumerate(free) if room >= size), None)
        if slot is None:
            bins.append([i])
            free.append(max_length - size)
        else:
            bins[slot].append(i)
            free[slot] -= size
    return [_row([examples[i] for i in members]) for members in bins]


def single_rows(examples: list[Example]) -> list[Row]:
    """One example per row (no packing)."""
    return [_row([e]) for e in examples]


def _row(members: list[Example]) -> Row:
    row = Row([], [], [], [])
    for segment, e in enumerate(members):
        row.ids += e.ids
        row.targets += e.targets
        row.positions += list(range(len(e.ids)))
        row.segments += [segment] * len(e.ids)
    return row


def collate(rows: list[Row], pad_id: int) -> Batch:
    """Right-pad ``rows`` into a :class:`Batch`; a block-diagonal mask when any row is packed."""
    width = max(len(r.ids) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)  # padding: its own segment, so it attends to itself (no NaN)
    for b, r in enumerate(rows):
        n = len(r.ids)
        tokens[b, :n] = torch.tensor(r.ids)
        targets[b, :n] = torch.tensor(r.targets)
        positions[b, :n] = torch.tensor(r.positions)
        positions[b, n:] = torch.arange(width - n)
        segments[b, :n] = torch.tensor(r.segments)
    mask = None
    if any(r.segments and r.segments[-1] > 0 for r in rows):
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (segments[:, :, None] == segments[:, None, :]) & causal
        mask = mask[:, None]
    return Batch(tokens, targets, positions, mask, sum(len(r.ids) for r in rows))
