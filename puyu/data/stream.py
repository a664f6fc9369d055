"""The pre-training sample stream: a weighted mixture of shard sources, shuffled, packed with document boundaries.

Contract of :class:`PretrainData` (the train loop reads it like
:class:`~puyu.data.TrainData`: ``micro_batches(step, ...)``, ``val_batches``,
``fingerprint``, ``steps_per_epoch``; plus ``state_dict``/``load_state_dict``):

- Shuffling: each source visits its documents in a permutation seeded by
  ``(seed, source name, epoch)``; epochs follow each other without a gap, so a
  source is an endless token stream.
- Mixture: training row ``k`` (counted over the whole run) comes from the
  source picked by a hash of ``(seed, k)`` against the normalized weights, so
  weights are shares of training tokens and the choice needs no state.
- Packing: a row is the next ``seq_len + 1`` tokens of its source's stream
  (rows overlap by one token: inputs ``[0, L)``, targets ``[1, L]``), cut into
  segments at document boundaries.  Positions restart at 0 in every segment,
  the attention mask is block-diagonal (:func:`puyu.data.packing.collate`), and
  the target that would cross a boundary (after each ``<|endoftext|>``) is
  ``-100``; a document longer than a row continues in that source's next row.
- Resuming: the state (rows consumed, each source's epoch/document/offset
  cursor) is a small dict saved in the checkpoint; loading it continues with
  exactly the sample that came next.  Steps must be read in order.
- Several processes: every rank walks the whole global batch (index arithmetic
  only, the same on every rank) and reads the tokens of its own rows, as
  :meth:`TrainData.micro_batches` splits them, so N processes see the rows of
  one process with the same global batch.
- Validation: the first rows of each source's ``val`` split in file order,
  ``val_rows`` in all, shared by weight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from puyu.data.packing import IGNORE, Batch, Row, collate
from puyu.data.shards import SourceShards, read_meta
from puyu.errors import ConfigError

log = logging.getLogger(__name__)
Span = tuple[int, int, int]  # (document, start, stop) of one segment of a row


def _uniform(seed: int, k: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass
class _Cursor:
    """Where a source's token stream stands: ``offset`` tokens into document ``order(epoch)[pos]``."""

    epoch: int = 0
    pos: int = 0
    offset: int = 0


class _Source:
    """One source's shards, its per-epoch document order and its cursor."""

    def __init__(self, shards: SourceShards, seed: int, shuffle: bool = True):
        self.shards, self.seed, self.shuffle = shards, seed, shuffle
        self.key = zlib.crc32(shards.name.encode())
        self.cursor = _Cursor()
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            n = len(self.shards)
            rng = np.random.default_rng([self.seed, self.key, epoch])
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._orders[epoch]

    def next_spans(self, seq_len: int, wrap: bool = True) -> list[Span]:
        """The spans of the next row (``seq_len + 1`` tokens; fewer at the end when not ``wrap``); moves the cursor ``seq_len``."""
        c = self.cursor
        epoch, pos, offset = c.epoch, c.pos, c.offset
        spans: list[Span] = []
        need, taken, after = seq_len + 1, 0, None
        while need > 0:
            if pos == len(self.shards):
                if not wrap:
                    break
                epoch, pos = epoch + 1, 0
            doc = int(self.order(epoch)[pos])
            length = int(self.shards.lengths[doc])
            take = min(length - offset, need)
            spans.append((doc, offset, offset + take))
            if after is None and taken + take >= seq_len:
                after = _Cursor(epoch, pos, offset + seq_len - taken)
            taken, need, offset = taken + take, need - take, offset + take
            if offset == length:
                pos, offset = pos + 1, 0
        if after is None:  # the stream ended inside this row
            after = _Cursor(epoch, pos, offset)
        elif after.offset == int(self.shards.lengths[int(self.order(after.epoch)[after.pos])]):
            after = _Cursor(after.epoch, after.pos + 1, 0)
        self.cursor = after
        return spans

    def row(self, spans: list[Span]) -> Row:
        """The training row of ``spans``: inputs all tokens but the last, targets within each segment only."""
        ids: list[int] = []
        targets: list[int] = []
        positions: list[int] = []
        segments: list[int] = []
        for segment, (doc, start, stop) in enumerate(spans):
            tokens = self.shards.tokens(doc, start, stop).tolist()
            ids += tokens
            targets += tokens[1:] + [IGNORE]
            positions += range(len(tokens))
            segments += [segment] * len(tokens)
        return Row(ids[:-1], targets[:-1], positions[:-1], segments[:-1])


def trained_tokens(spans: list[Span]) -> int:
    """Targets of a row: each segment predicts all its tokens after the first (see the module docstring)."""
    return sum(stop - start - 1 for _, start, stop in spans)


class PretrainData:
    """Training and validation rows streamed from a shard folder (see the module docstring).

    Args:
        root: the shard folder (from ``puyu tokenizer shards``).
        seq_len: tokens per row.
        mixture: source -> weight (share of training tokens); empty = every source, weighted by its token count.
        seed: seeds the document orders and the source choice.
        val_rows: validation rows (0 = no validation).
        pad_id: the id padding short validation rows.
    """

    def __init__(self, root: str | Path, seq_len: int, mixture: dict[str, float] | None = None, seed: int = 0,
                 val_rows: int = 0, pad_id: int = 0):
        self.root, self.seq_len, self.seed, self.pad_id = Path(root), seq_len, seed, pad_id
        self.meta = read_meta(self.root)
        available = self.meta["sources"]
        mixture = dict(mixture or {name: float(s["train"]["tokens"]) for name, s in available.items()})
        unknown = sorted(set(mixture) - set(available))
        if unknown:
            raise ConfigError(f"pretrain.mixture names {unknown}, which {self.root} does not hold; it has: {', '.join(available)}")
        if any(w < 0 for w in mixture.values()) or sum(mixture.values()) <= 0:
            raise ConfigError(f"pretrain.mixture weights must be >= 0 and not all 0, got {mixture}")
        self.names = sorted(n for n, w in mixture.items() if w > 0)
        total = sum(mixture[n] for n in self.names)
        self.weights = np.array([mixture[n] / total for n in self.names])
        self.sources = [_Source(SourceShards.open(self.root, n), seed) for n in self.names]
        self.rows_done, self.next_step = 0, 0
        self.val_rows = self._val_rows(val_rows)
        log.info("pre-training mixture: %s", ", ".join(f"{n} {w:.1%}" for n, w in zip(self.names, self.weights)))

    @property
    def train_tokens(self) -> int:
        return sum(s.shards.num_tokens for s in self.sources)

    @property
    def fingerprint(self) -> str:
        """A hash of what decides the stream: tokenizer, shards, mixture, row length and seed."""
        parts = {"tokenizer": self.meta["tokenizer_hash"], "seq_len": self.seq_len, "seed": self.seed,
                 "sources": {n: [self.meta["sources"][n]["train"]["tokens"], float(w)] for n, w in zip(self.names, self.weights)}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (f"{self.train_tokens:,} training tokens in {len(self.names)} sources ({', '.join(self.names)}), "
                f"rows of {self.seq_len} tokens")

    def steps_per_epoch(self, global_batch: int) -> int:
        """Optimizer steps that read as many tokens as the mixture's sources hold."""
        return max(1, -(-self.train_tokens // (global_batch * self.seq_len)))

    def _source_of(self, k: int) -> _Source:
        index = int(np.searchsorted(np.cumsum(self.weights), _uniform(self.seed, k), side="right"))
        return self.sources[min(index, len(self.sources) - 1)]

    def micro_batches(self, step: int, micro: int, accum: int, rank: int = 0, world: int = 1) -> tuple[list[Batch], int]:
        """This rank's ``accum`` micro-batches of ``step`` and the trained tokens of the whole global batch."""
        if step != self.next_step:
            raise ValueError(f"the pre-training stream is at step {self.next_step}, not {step}: read steps in order "
                             "(resume through load_state_dict)")
        width = micro * world
        owned: list[tuple[_Source, list[Span]]] = []
        total = 0
        for i in range(width * accum):
            source = self._source_of(self.rows_done + i)
            spans = source.next_spans(self.seq_len)
            total += trained_tokens(spans)
            if rank * micro <= i % width < (rank + 1) * micro:
                owned.append((source, spans))
        self.rows_done += width * accum
        self.next_step += 1
        rows = [source.row(spans) for source, spans in owned]
        return [collate(rows[m * micro : (m + 1) * micro], self.pad_id) for m in range(accum)], total

    def state_dict(self) -> dict:
        """The stream position after the steps read so far (JSON-able)."""
        return {"step": self.next_step, "rows": self.rows_done,
                "cursors": {s.shards.name: [s.cursor.epoch, s.cursor.pos, s.cursor.offset] for s in self.sources}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict` (of a stream over the same fingerprint)."""
        self.next_step, self.rows_done = int(state["step"]), int(state["rows"])
        for s in self.sources:
            s.cursor = _Cursor(*state["cursors"][s.shards.name])

    def _val_rows(self, count: int) -> list[Row]:
        """Up to ``count`` rows from the sources' val splits, in file order, shared by weight."""
        rows: list[Row] = []
        if count <= 0:
            return rows
        for name, weight in zip(self.names, self.weights):
            source = _Source(SourceShards.open(self.root, name, "val"), self.seed, shuffle=False)
            for _ in range(max(1, round(count * weight)) if len(source.shards) else 0):
                spans = source.next_spans(self.seq_len, wrap=False)
                if trained_tokens(spans) <= 0:
                    break
                rows.append(source.row(spans))
        if not rows:
            log.warning("no validation rows: the shards have no val split (tokenize with a val fraction)")
        return rows

    def val_batches(self, micro: int) -> list[Batch]:
        return [collate(self.val_rows[i : i + micro], self.pad_id) for i in range(0, len(self.val_rows), micro)]
