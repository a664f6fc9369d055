"""Token shards: tokenized documents in memory-mapped files with an index, per source and split.

Layout of a shard folder (``root``)::

    meta.json                 format, dtype, vocab size, EOS id, tokenizer hash, and per source and split
                              the shard files with their document and token counts
    tokenizer/                the tokenizer the ids belong to (puyu's Tokenizer and transformers load it)
    <source>/train-00000.bin  token ids back to back (uint16 when the vocabulary fits, else uint32)
    <source>/train-00000.idx  int64 offsets (numpy .npy): document i is bin[idx[i]:idx[i+1]]
    <source>/val-00000.bin ...

Contract: :func:`write_source` tokenizes a stream of documents (EOS appended to
each, so a document ends with ``<|endoftext|>``) into ``root/<source>/``,
rolling to a new shard every ``shard_tokens`` tokens; a document goes to the
``val`` split when a keyed hash of its text falls under ``val_fraction`` (so
the split does not depend on order, and exact duplicates land on the same
side).  :class:`SourceShards` reads a source's split back: ``doc(i)`` is
exactly the ids written, read through a memory map (the OS pages in what is
read; nothing is loaded whole).  Writing a source again replaces it; sources
written with another tokenizer are refused.

Why not a library: ``datatrove``'s tokenizer step writes a similar format,
but its reader is tied to its own nanotron/``DatatroveFolderDataset`` loader
without document-boundary masks or a resumable mixture; the format here is a
few dozen lines and the stream (:mod:`puyu.data.stream`) is puyu's own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from puyu.errors import ConfigError, DatasetError
from puyu.tokenizer import Tokenizer

FORMAT = 1
SPLITS = ("train", "val")
ProgressHook = Callable[[int, int], None]  # (documents, tokens) done since the last call


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """A hash of the tokenizer's vocabulary and merges (ids mean the same thing when it matches)."""
    return hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()[:16]


def _is_val(text: str, val_fraction: float, seed: int) -> bool:
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def read_meta(root: Path) -> dict:
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise ConfigError(f"{root} is not a shard folder (no meta.json); make one with: puyu tokenizer shards")
    return json.loads(path.read_text())


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, ensure_ascii=False))
    partial.replace(path)


class _SplitWriter:
    """Appends documents to ``<dir>/<split>-NNNNN.bin/.idx``, starting a new shard every ``shard_tokens`` tokens."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.parts: list[np.ndarray] = []
        self.buffered = 0

    def add(self, ids: list[int]) -> None:
        self.parts.append(np.asarray(ids, dtype=self.dtype))
        self.buffered += len(ids)
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        name = f"{self.split}-{len(self.shards):05d}"
        offsets = np.zeros(len(self.parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in self.parts], out=offsets[1:])
        np.concatenate(self.parts).tofile(self.folder / f"{name}.bin")
        with open(self.folder / f"{name}.idx", "wb") as f:
            np.save(f, offsets)
        self.shards.append({"name": name, "docs": len(self.parts), "tokens": int(offsets[-1])})
        self.parts, self.buffered = [], 0

    def summary(self) -> dict:
        return {"shards": self.shards, "docs": sum(s["docs"] for s in self.shards), "tokens": sum(s["tokens"] for s in self.shards)}


def write_source(docs: Iterable[str], tokenizer: Tokenizer, root: str | Path, source: str, val_fraction: float = 0.0,
                 seed: int = 0, shard_tokens: int = 100_000_000, batch_docs: int = 512,
                 progress: ProgressHook | None = None) -> dict:
    """Tokenize ``docs`` into the shards of ``source`` under ``root`` (see the module docstring); returns its meta entry.

    Raises:
        ConfigError: a bad source name or fraction, a tokenizer without EOS, or ``root`` made with another tokenizer.
    """
    if not source or not source.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"source name {source!r} must be letters, digits, '-' or '_' (it names a folder and a mixture key)")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    eos = tokenizer.eos_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token to end documents with; train one with: puyu tokenizer train")
    root = Path(root)
    meta = _open_root(root, tokenizer)
    folder = root / source
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dtype = np.dtype(meta["dtype"])
    writers = {split: _SplitWriter(folder, split, dtype, shard_tokens) for split in SPLITS}

    def encode(batch: list[str]) -> None:
        encodings = tokenizer.backend.encode_batch(batch, add_special_tokens=False)
        tokens = 0
        for text, enc in zip(batch, encodings):
            ids = enc.ids + [eos]
            writers["val" if _is_val(text, val_fraction, seed) else "train"].add(ids)
            tokens += len(ids)
        if progress:
            progress(len(batch), tokens)

    batch: list[str] = []
    for text in docs:
        if text.strip():
            batch.append(text)
        if len(batch) >= batch_docs:
            encode(batch)
            batch = []
    if batch:
        encode(batch)
    for writer in writers.values():
        writer.flush()
    entry = {split: writers[split].summary() for split in SPLITS}
    if entry["train"]["docs"] == 0:
        raise DatasetError(f"source {source!r} gave no training documents (empty input, or val_fraction takes them all)")
    meta["sources"][source] = entry
    _write_json(root / "meta.json", meta)
    return entry


def _open_root(root: Path, tokenizer: Tokenizer) -> dict:
    """The meta of ``root``, created (with a copy of the tokenizer) when new; refuses another tokenizer."""
    digest = tokenizer_hash(tokenizer)
    if (root / "meta.json").exists():
        meta = read_meta(root)
        if meta["tokenizer_hash"] != digest:
            raise ConfigError(f"{root} holds shards of another tokenizer; write these to a new folder or re-tokenize all sources")
        return meta
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    tokenizer.save(root / "tokenizer")
    meta = {"format": FORMAT, "dtype": token_dtype(tokenizer.vocab_size).name, "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id, "tokenizer_hash": digest, "sources": {}}
    _write_json(root / "meta.json", meta)
    return meta


@dataclass
class SourceShards:
    """The documents of one source's split, memory-mapped.

    Attributes:
        name: the source.
        lengths: ``[docs]`` int64 token count of each document (EOS included).
    """

    name: str
    lengths: np.ndarray
    _bins: list[np.ndarray]
    _offsets: list[np.ndarray]
    _first: np.ndarray  # global index of each shard's first document

    @classmethod
    def open(cls, root: str | Path, source: str, split: str = "train") -> "SourceShards":
        root = Path(root)
        meta = read_meta(root)
        if source not in meta["sources"]:
            raise ConfigError(f"{root} has no source {source!r}; it has: {', '.join(meta['sources']) or 'none'}")
        dtype = np.dtype(meta["dtype"])
        shards = meta["sources"][source][split]["shards"]
        bins, offsets = [], []
        for shard in shards:
            base = root / source / shard["name"]
            try:
                bins.append(np.memmap(base.with_suffix(".bin"), dtype=dtype, mode="r"))
                offsets.append(np.load(base.with_suffix(".idx")))
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read shard {base}: {exc}; re-run puyu tokenizer shards for {source!r}") from None
            if offsets[-1][-1] != len(bins[-1]):
                raise DatasetError(f"shard {base}.bin holds {len(bins[-1])} tokens but its index says {offsets[-1][-1]}; re-tokenize")
        lengths = np.concatenate([np.diff(o) for o in offsets]) if offsets else np.zeros(0, dtype=np.int64)
        first = np.cumsum([0] + [len(o) - 1 for o in offsets])
        return cls(source, lengths, bins, offsets, first)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Ids ``[start:stop]`` of document ``doc`` (a view of the memory map)."""
        shard = int(np.searchsorted(self._first, doc, side="right")) - 1
        local = doc - int(self._first[shard])
        begin, end = int(self._offsets[shard][local]), int(self._offsets[shard][local + 1])
        stop = end - begin if stop is None else stop
        return self._bins[shard][begin + start : begin + stop]
