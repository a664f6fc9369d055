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
- Chats with images (image parts in their messages) need a :class:`ImageTokens`
  (a vision-language model's; :class:`~puyu.model.vlm.prompt.ImageInput` is one):
  each image's placeholder becomes the tokens that stand for it (loss never on
  them), the example keeps the image sources, and :func:`collate` makes their
  pixel tiles in the order of their tokens.  A chat whose truncation would cut
  an image is dropped (the model needs every token of an image).
- :func:`pack` fills rows of ``max_length`` first-fit (longest first);
  :func:`collate` pads rows into a :class:`Batch` whose ``positions`` restart
  at 0 for every packed sample and whose ``mask`` ``[B, 1, T, T]`` is causal and
  block-diagonal, so packed samples never see each other.
- ``pack(..., share_prefix=True)`` first puts examples that begin with the same
  untrained tokens (a system prompt with tool schemas, a few-shot preamble) into
  rows that hold that prefix once and then the rest of each example: every rest
  sees the prefix and itself (``Row.shares``) at the positions it had after the
  prefix, so each example's loss and gradients are those of training it alone,
  and the prefix is computed once per row instead of once per example.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from puyu.data.formats import Sample
from puyu.errors import DatasetError
from puyu.tokenizer import Tokenizer

log = logging.getLogger(__name__)
IGNORE = -100


class ImageTokens(Protocol):
    """What tokenizing and batching chats with images need from a vision-language model."""

    placeholder: str  # the text that marks an image in a rendered chat

    def template_messages(self, tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[Any]]:
        """The messages as the chat template renders them, the placeholder where each image goes, and the images in order."""

    def expansion(self, source: Any) -> str:
        """The prompt text that stands for one image (its tiles' tokens)."""

    def pixels(self, sources: list[Any]) -> torch.Tensor:
        """``[tiles, 3, S, S]``: every tile of the images, in order."""


@dataclass
class Example:
    """One tokenized sample: ``ids`` and next-token ``targets`` (``-100`` = no loss), same length, and its images."""

    ids: list[int]
    targets: list[int]
    origin: str = ""
    images: list[Any] = field(default_factory=list)

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
    """A training row: one or more examples back to back (``segments[i]`` numbers the example of token ``i``;
    ``shares[i]``, when given, is a further segment token ``i`` sees: the shared prefix, or -2 for none)."""

    ids: list[int]
    targets: list[int]
    positions: list[int]
    segments: list[int]
    images: list[Any] = field(default_factory=list)
    shares: list[int] = field(default_factory=list)


@dataclass
class Batch:
    """Tensors for one forward pass.

    Attributes:
        tokens: ``[B, T]`` input ids (right-padded).
        targets: ``[B, T]`` next-token ids, ``-100`` where no loss is taken.
        positions: ``[B, T]`` RoPE positions, restarting at 0 for each packed example.
        mask: ``[B, 1, T, T]`` bool (True = may attend) when rows hold several examples, else None (causal).
        real_tokens: tokens that are not padding.
        pixels: ``[tiles, 3, S, S]`` the tiles of the rows' images in the order of their tokens, or None.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor | None
    real_tokens: int = 0
    pixels: torch.Tensor | None = None

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device) -> "Batch":
        mask = self.mask.to(device) if self.mask is not None else None
        pixels = self.pixels.to(device) if self.pixels is not None else None
        return Batch(self.tokens.to(device), self.targets.to(device), self.positions.to(device), mask, self.real_tokens, pixels)


def _shift(ids: list[int], labels: list[int]) -> list[int]:
    return labels[1:] + [IGNORE] if ids else []


def _expand_images(sample: Sample, tokenizer: Tokenizer, images: ImageTokens | None,
                   train_on_prompt: bool) -> tuple[list[int], list[int], list[Any], int]:
    """Ids and labels of a chat with image parts, each image's placeholder token replaced by its image's tokens, the
    images, and the position after the last image token."""
    if images is None:
        raise DatasetError(f"{sample.origin}: the chat has images but the model reads text only; "
                           "train a vision-language model (LLaVA, InternVL, SmolVLM/Idefics3 folders) on it")
    shown, sources = images.template_messages(tokenizer, sample.messages, sample.tools)
    chat = tokenizer.render(shown, sample.tools)
    slot = tokenizer.encode(images.placeholder, add_special_tokens=False)
    if len(slot) != 1:
        raise DatasetError(f"the image placeholder {images.placeholder!r} is not one token of this tokenizer")
    ids, labels, found, end = [], [], iter(sources), 0
    for token, trained in zip(chat.ids, chat.loss_mask):
        if token == slot[0]:
            expanded = tokenizer.encode(images.expansion(next(found)), add_special_tokens=False)
            ids += expanded
            labels += [IGNORE] * len(expanded)
            end = len(ids)
        else:
            ids.append(token)
            labels.append(token if trained or train_on_prompt else IGNORE)
    return ids, labels, sources, end


def tokenize_samples(samples: list[Sample], tokenizer: Tokenizer, max_length: int, train_on_prompt: bool = False,
                     images: ImageTokens | None = None) -> tuple[list[Example], TokenizeReport]:
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
        sources: list[Any] = []
        images_end = 0
        if sample.has_images:
            ids, labels, sources, images_end = _expand_images(sample, tokenizer, images, train_on_prompt)
        else:
            chat = tokenizer.render(sample.messages, sample.tools)
            labels = list(chat.ids) if train_on_prompt else [i if m else IGNORE for i, m in zip(chat.ids, chat.loss_mask)]
            ids = list(chat.ids)
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            if images_end > max_length or all(t == IGNORE for t in labels[1:]):
                report.dropped.append(sample.origin)
                continue
            report.truncated.append(sample.origin)
        examples.append(Example(ids, _shift(ids, labels), sample.origin, sources))
    if report.truncated:
        log.warning("%d samples were longer than max_length=%d and lost the end of their reply (first: %s); "
                    "raise data.max_length to keep it",
                    len(report.truncated), max_length, report.truncated[0])
    if report.dropped:
        log.warning("%d samples were dropped: their assistant reply (or an image) ends after max_length=%d (first: %s); "
                    "raise data.max_length to train on them",
                    len(report.dropped), max_length, report.dropped[0])
    return examples, report


MIN_SHARED = 32  # tokens: a shorter common prefix is not worth grouping examples for


def pack(examples: list[Example], max_length: int, share_prefix: bool = False) -> list[Row]:
    """First-fit-decreasing packing into rows of at most ``max_length`` tokens (deterministic); with
    ``share_prefix``, examples that share a prefix first fill rows that hold it once (see the module docstring)."""
    rows: list[Row] = []
    if share_prefix:
        rows, examples = _share_prefixes(examples, max_length)
    return rows + [_row([examples[i] for i in members]) for members in _first_fit([len(e.ids) for e in examples], max_length)]


def _first_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``sizes`` in bins of ``capacity``, first-fit decreasing."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        slot = next((b for b, room in enumerate(free) if room >= sizes[i]), None)
        if slot is None:
            bins.append([i])
            free.append(capacity - sizes[i])
        else:
            bins[slot].append(i)
            free[slot] -= sizes[i]
    return bins


def _untrained_head(e: Example) -> int:
    """How many leading tokens of ``e`` have no target, which a shared prefix may cover (the prefix's last token
    predicts the first token after it, so that prediction must be untrained too)."""
    return next((i for i, t in enumerate(e.targets) if t != IGNORE), len(e.targets))


def _common_length(a: list[int], b: list[int], limit: int) -> int:
    return next((i for i in range(limit) if a[i] != b[i]), limit)


def _share_prefixes(examples: list[Example], max_length: int) -> tuple[list[Row], list[Example]]:
    """Rows of one shared prefix and several example rests, and the examples left for ordinary packing.

    Examples are sorted by their untrained heads, so that each sits next to those it shares most with, and grouped
    as :func:`_prefix_groups` says.  Each group's rests fill rows of ``max_length - prefix`` first-fit; a rest alone
    in its row goes back to ordinary packing.  Examples with images are never shared (their pixels follow their tokens).
    """
    heads = {i: _untrained_head(e) for i, e in enumerate(examples) if not e.images}
    order = sorted(heads, key=lambda i: (examples[i].ids[: heads[i]], i))
    common = [0] + [_common_length(examples[a].ids, examples[b].ids, min(heads[a], heads[b])) for a, b in zip(order, order[1:])]
    rows: list[Row] = []
    shared: set[int] = set()
    for length, members in _prefix_groups(order, common) if len(order) > 1 else []:
        for rest in _first_fit([len(examples[i].ids) - length for i in members], max_length - length):
            if len(rest) > 1:
                rows.append(_shared_row([examples[members[k]] for k in rest], length))
                shared.update(members[k] for k in rest)
    return rows, [e for i, e in enumerate(examples) if i not in shared]


def _prefix_groups(order: list[int], common: list[int]) -> list[tuple[int, list[int]]]:
    """(prefix length, members) groups of sorted examples; ``common[k]`` is what ``order[k - 1]`` and ``order[k]`` share.

    All of ``order`` share ``depth = min(common[1:])`` tokens.  Runs whose neighbours share at least
    :data:`MIN_SHARED` more are split off and grouped deeper first (the same tool schemas after a common
    preamble); the examples that are left share ``depth`` - a group when it is at least ``MIN_SHARED``.
    """
    depth = min(common[1:])
    groups: list[tuple[int, list[int]]] = []
    left: list[int] = []
    start = 0
    for k in range(1, len(order) + 1):
        if k == len(order) or common[k] < depth + MIN_SHARED:
            if k - start > 1:
                groups += _prefix_groups(order[start:k], [0] + common[start + 1 : k])
            else:
                left.append(order[start])
            start = k
    if len(left) > 1 and depth >= MIN_SHARED:
        groups.append((depth, left))
    return groups


def _shared_row(members: list[Example], length: int) -> Row:
    """The first ``length`` tokens of ``members`` once (segment 0), then each member's rest (segments 1, 2 ...),
    positions continuing after the prefix, every rest also seeing segment 0."""
    row = Row(members[0].ids[:length], [IGNORE] * length, list(range(length)), [0] * length, shares=[-2] * length)
    for segment, e in enumerate(members, start=1):
        n = len(e.ids) - length
        row.ids += e.ids[length:]
        row.targets += e.targets[length:]
        row.positions += range(length, len(e.ids))
        row.segments += [segment] * n
        row.shares += [0] * n
    return row


def single_rows(examples: list[Example]) -> list[Row]:
    """One example per row (no packing)."""
    return [_row([e]) for e in examples]


def _row(members: list[Example]) -> Row:
    row = Row([], [], [], [])
    for segment, e in enumerate(members):
        row.images += e.images
        row.ids += e.ids
        row.targets += e.targets
        row.positions += list(range(len(e.ids)))
        row.segments += [segment] * len(e.ids)
    return row


def collate(rows: list[Row], pad_id: int, images: ImageTokens | None = None) -> Batch:
    """Right-pad ``rows`` into a :class:`Batch`; a block-diagonal mask when any row is packed; the pixel tiles of the
    rows' images (made by ``images``) when they have any."""
    width = max(len(r.ids) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)  # padding: its own segment, so it attends to itself (no NaN)
    shares = torch.full((len(rows), width), -2, dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.ids)
        tokens[b, :n] = torch.tensor(r.ids)
        targets[b, :n] = torch.tensor(r.targets)
        positions[b, :n] = torch.tensor(r.positions)
        positions[b, n:] = torch.arange(width - n)
        segments[b, :n] = torch.tensor(r.segments)
        if r.shares:
            shares[b, :n] = torch.tensor(r.shares)
    mask = None
    if any(r.segments and r.segments[-1] > 0 for r in rows):
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = ((segments[:, :, None] == segments[:, None, :]) | (shares[:, :, None] == segments[:, None, :])) & causal
        mask = mask[:, None]
    sources = [source for r in rows for source in r.images]
    pixels = images.pixels(sources) if sources and images is not None else None
    return Batch(tokens, targets, positions, mask, sum(len(r.ids) for r in rows), pixels)
