"""Incremental sync of a knowledge base with files on disk.

Contract: :func:`sync` makes the store hold exactly the chunks of the supported
files under the given paths: new and changed files (by SHA-256 of their bytes)
are loaded, split, embedded and written; files the store knows under those
paths that are gone (or now excluded) are removed; unchanged files are not
touched.  Files left ``pending`` by a crashed run count as changed.  Unreadable
files (a corrupt PDF ...) are skipped with a warning naming them and listed in
the report; the build goes on.  All files to (re)index are read and split
first, then their chunks are embedded in large batches across files
(sentence-transformers sorts each batch by length, so large batches pad
little) and written to Chroma batch by batch; a file is marked done only once
all its chunks are stored.  The progress bar counts chunks (chunks/s).  The
report gives the embedder's token coverage of what was written
(:meth:`~puyu.model.embedder.Embedder.coverage`): well below 1 means the
documents are in a language its tokenizer does not know.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from puyu.model.embedder import Embedder
from puyu.rag.loaders import LoaderError, discover, load_file
from puyu.rag.splitter import Chunk, Splitter
from puyu.rag.store import ChunkStore, chunk_id, chunk_metadata

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    """What one build changed.

    Attributes:
        added: files new to the store.
        changed: files whose content changed (or were left pending by a crash).
        removed: files deleted from the store.
        unchanged: files already up to date.
        skipped: ``(path, reason)`` of files that could not be read.
        chunks_written: chunks embedded and stored.
        chunks_total: chunks in the store afterwards.
        seconds: wall time of the build.
        coverage: share of the written chunks' tokens the embedder's tokenizer knows (1.0 when nothing was written).
    """

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks_written: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    coverage: float = 1.0


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _under(source: str, roots: list[Path]) -> bool:
    path = Path(source)
    return any(path == root or root in path.parents for root in roots)


class _Batch:
    """Chunks of whole files waiting to be embedded and stored together."""

    def __init__(self, store: ChunkStore, embedder: Embedder, report: SyncReport, advance: Callable[[int, int], None]):
        self.store, self.embedder, self.report, self.advance = store, embedder, report, advance
        self.files: list[tuple[str, str, list[Chunk]]] = []
        self.known = self.tokens = 0.0

    def __len__(self) -> int:
        return sum(len(chunks) for _, _, chunks in self.files)

    def add(self, source: str, digest: str, chunks: list[Chunk]) -> None:
        self.store.begin_file(source, digest)
        self.files.append((source, digest, chunks))

    def flush(self) -> None:
        rows = [(source, digest, i, chunk) for source, digest, chunks in self.files for i, chunk in enumerate(chunks)]
        if rows:
            texts = [chunk.indexed_text() for *_, chunk in rows]
            vectors = self.embedder.embed(texts)
            self.store.add([chunk_id(s, d, i) for s, d, i, _ in rows], vectors, [c.text for *_, c in rows],
                           [chunk_metadata(c, d, i) for _, d, i, c in rows])
            tokens = sum(c.tokens for *_, c in rows)
            self.known += self.embedder.coverage(texts) * tokens
            self.tokens += tokens
            self.report.coverage = self.known / max(self.tokens, 1)
        for source, digest, chunks in self.files:
            self.store.finish_file(source, digest, len(chunks))
        self.report.chunks_written += len(rows)
        self.advance(len(self.files), len(rows))
        self.files = []


def sync(store: ChunkStore, splitter: Splitter, embedder: Embedder, paths: Iterable[str | Path],
         include: Iterable[str] = (), exclude: Iterable[str] = (), show_progress: bool = False,
         batch_chunks: int = 1024, on_progress: Callable[[int, int], None] | None = None) -> SyncReport:
    """Bring ``store`` in line with the files under ``paths`` (see the module docstring).

    ``on_progress(done, total)`` is called as files to (re)index are stored or skipped (``total`` counts
    only those), first with ``done = 0``.
    """
    from tqdm import tqdm

    start, report = time.perf_counter(), SyncReport()
    paths = list(paths)
    roots = [Path(p).expanduser().resolve() for p in paths]
    files = discover(paths, include, exclude)
    known = store.files()
    current = {str(f) for f in files}
    for source in sorted(s for s in known if _under(s, roots) and s not in current):
        store.remove_file(source)
        report.removed.append(source)

    todo = []
    for path in files:
        digest, entry = file_hash(path), known.get(str(path))
        if entry is not None and entry[0] == digest and entry[1] == "done":
            report.unchanged += 1
        else:
            todo.append((path, digest))
            (report.changed if entry is not None else report.added).append(str(path))

    done = 0

    def advance(files: int, chunks: int = 0) -> None:
        nonlocal done
        done += files
        bar.update(chunks)
        if on_progress is not None:
            on_progress(done, len(todo))

    if on_progress is not None:
        on_progress(0, len(todo))
    split = []
    for path, digest in tqdm(todo, unit="file", desc="reading", disable=not show_progress or len(todo) < 2, leave=False):
        try:
            split.append((path, digest, splitter.split(load_file(path))))
        except LoaderError as exc:
            log.warning("skipped %s", exc)
            report.skipped.append((str(path), str(exc)))
            if str(path) in known:
                store.remove_file(str(path))
            (report.changed if str(path) in known else report.added).remove(str(path))
    bar = tqdm(total=sum(len(chunks) for *_, chunks in split), unit="chunk", desc="embedding", disable=not show_progress or not todo)
    if len(split) < len(todo):
        advance(len(todo) - len(split))  # skipped files count as done
    batch = _Batch(store, embedder, report, advance)
    for path, digest, chunks in split:
        batch.add(str(path), digest, chunks)
        if len(batch) >= batch_chunks:
            batch.flush()
    batch.flush()
    bar.close()
    store.bm25()
    report.chunks_total = store.count()
    report.seconds = time.perf_counter() - start
    return report
