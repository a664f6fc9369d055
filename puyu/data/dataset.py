"""Training data from a recipe's ``data`` section, in a fixed order that a step number locates.

Contract: ``TrainData.build(DataConfig, tokenizer, seed)`` reads, tokenizes and
packs the files once.  The rows of global step ``s`` are a pure function of
``(seed, s)``: epoch ``e`` visits the rows in a permutation seeded by
``seed + e``, repeated cyclically up to a whole number of global batches.
That is what makes resuming exact (the data position is the step number) and
what lets ``N`` processes split a global batch so that the result equals one
process: :meth:`TrainData.micro_batches` gives rank ``r`` of ``world`` its
share of each of the ``accum`` micro-steps, and the count of trained tokens in
the whole global batch, by which every rank normalizes its loss.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from puyu.data.formats import FORMATS, Sample, read_samples
from puyu.data.packing import Batch, ImageTokens, Row, TokenizeReport, collate, pack, single_rows, tokenize_samples
from puyu.errors import ConfigError
from puyu.home import data_dir
from puyu.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """The ``data`` section of a recipe.

    Attributes:
        train: data files (.json, .jsonl, .txt); a relative path is taken from the working directory when it exists there,
            else looked up in ``data_dir``.
        format: row format: auto, alpaca, openai, sharegpt, xtuner or text.
        val: validation files (same formats); empty = none unless ``val_fraction`` is set.
        val_fraction: share of the training samples held out for validation (0 = none).
        max_length: tokens per training row (packed rows and truncated samples).
        pack: pack several samples into each row (block-diagonal attention, positions restart).
        share_prefix: with pack, samples that begin with the same untrained tokens (a system prompt with tool
            schemas) share rows that hold that prefix once; each sample's loss and gradients stay its own.
        train_on_prompt: take the loss on every token, not only the assistant's.
        replace: fill ``{{key}}`` placeholders in the data with these values.
        system: a system prompt added to chats that have none.
        limit: use the first ``limit`` samples of each file (0 = all).
        data_dir: folder for relative data paths that do not exist from the working directory (default: $PUYU_DATA_DIR).
        image_dir: folder for the relative ``image`` paths of LLaVA-format rows (default: each data file's folder).
    """

    train: list[str] = field(default_factory=list)
    format: str = "auto"
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    max_length: int = 512
    pack: bool = True
    share_prefix: bool = False
    train_on_prompt: bool = False
    replace: dict[str, str] = field(default_factory=dict)
    system: str | None = None
    limit: int = 0
    data_dir: str | None = None
    image_dir: str | None = None

    def __post_init__(self) -> None:
        self.train = [self.train] if isinstance(self.train, str) else list(self.train)
        self.val = [self.val] if isinstance(self.val, str) else list(self.val or [])
        if self.format not in FORMATS:
            raise ConfigError(f"data.format {self.format!r} is unknown; use one of {', '.join(FORMATS)}")
        if self.max_length < 8:
            raise ConfigError(f"data.max_length must be at least 8, got {self.max_length}")
        if self.share_prefix and not self.pack:
            raise ConfigError("data.share_prefix puts several samples into a row: it needs data.pack=true")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")

    def resolve(self, path: str) -> Path:
        """A data path: absolute or found from the working directory as given, else in the data dir.

        Raises:
            ConfigError: the path must be looked up in the data dir and none is set (see :func:`puyu.home.data_dir`).
        """
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or candidate.exists():
            return candidate
        return data_dir(self.data_dir, "data.data_dir=DIR") / path


def _load(config: DataConfig, files: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    for name in files:
        found = read_samples(config.resolve(name), config.format, config.replace, config.image_dir)
        samples += found[: config.limit] if config.limit else found
    if config.system:
        for s in samples:
            if s.messages and s.messages[0]["role"] != "system":
                s.messages.insert(0, {"role": "system", "content": config.system})
    return samples


class TrainData:
    """Packed training rows (and validation rows) in a step-addressable order; ``images`` makes the pixels of rows
    with images (a vision-language model's :class:`~puyu.data.packing.ImageTokens`)."""

    def __init__(self, rows: list[Row], val_rows: list[Row], pad_id: int, seed: int, report: TokenizeReport,
                 images: ImageTokens | None = None):
        if not rows:
            raise ConfigError("the training data gave no rows (every sample was dropped or the files are empty)")
        self.rows, self.val_rows, self.pad_id, self.seed, self.report = rows, val_rows, pad_id, seed, report
        self.images = images

    @classmethod
    def build(cls, config: DataConfig, tokenizer: Tokenizer, seed: int, images: ImageTokens | None = None) -> "TrainData":
        samples = _load(config, config.train)
        val_samples = _load(config, config.val) if config.val else []
        if config.val_fraction and not val_samples:
            order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
            cut = max(1, int(len(samples) * config.val_fraction))
            val_samples = [samples[i] for i in sorted(order[:cut])]
            samples = [samples[i] for i in sorted(order[cut:])]
        arrange = (lambda ex: pack(ex, config.max_length, config.share_prefix)) if config.pack else single_rows
        examples, report = tokenize_samples(samples, tokenizer, config.max_length, config.train_on_prompt, images)
        val_examples, _ = tokenize_samples(val_samples, tokenizer, config.max_length, config.train_on_prompt, images)
        pad = tokenizer.token_id(tokenizer.pad_token) or tokenizer.eos_id or 0
        rows = arrange(examples)
        log.info("data: %d samples -> %d rows of <= %d tokens; %d validation samples",
                 len(examples), len(rows), config.max_length, len(val_examples))
        return cls(rows, arrange(val_examples), pad, seed, report, images)

    @property
    def fingerprint(self) -> str:
        """A hash of the rows, to refuse resuming on different data."""
        digest = hashlib.sha256()
        for r in self.rows:
            digest.update(torch.tensor(r.ids + r.targets).numpy().tobytes())
            digest.update(repr([str(i) for i in r.images]).encode())
        return digest.hexdigest()[:16]

    def steps_per_epoch(self, global_batch: int) -> int:
        return -(-len(self.rows) // global_batch)

    def global_rows(self, step: int, global_batch: int) -> list[Row]:
        """The rows of global step ``step`` (0-based)."""
        per_epoch = self.steps_per_epoch(global_batch)
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        cyclic = [order[i % len(order)] for i in range(index * global_batch, (index + 1) * global_batch)]
        return [self.rows[i] for i in cyclic]

    def micro_batches(self, step: int, micro: int, accum: int, rank: int = 0, world: int = 1) -> tuple[list[Batch], int]:
        """This rank's ``accum`` micro-batches of step ``step`` and the trained tokens of the whole global batch."""
        rows = self.global_rows(step, micro * accum * world)
        total = sum(sum(t != -100 for t in r.targets) for r in rows)
        batches = []
        for m in range(accum):
            chunk = rows[m * micro * world : (m + 1) * micro * world]
            batches.append(collate(chunk[rank * micro : (rank + 1) * micro], self.pad_id, self.images))
        return batches, total

    def val_batches(self, micro: int) -> list[Batch]:
        return [collate(self.val_rows[i : i + micro], self.pad_id, self.images) for i in range(0, len(self.val_rows), micro)]
