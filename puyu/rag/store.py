"""The on-disk store of one knowledge base: Chroma vectors, a file manifest, a BM25 index.

Layout of a knowledge-base folder::

    kb.json            settings: embedder, dimension, chunk size and overlap
    chroma/            a persistent Chroma database, collection "chunks" (cosine space);
                       our own embeddings are always passed (``embedding_function=None``)
    manifest.sqlite3   files(source, hash, state, chunks) and meta(generation)
    bm25/              a bm25s index over the same chunks, tagged with the generation it was built at

Crash safety: before a file's chunks change, its manifest row is set to
``pending`` (committed); only after its chunks are in Chroma is it set to
``done`` with the content hash.  Chunk ids are deterministic and a file's old
chunks are deleted by their ``source`` metadata before new ones are written, so
rerunning after a crash redoes the pending files without duplicates.  Every
change bumps ``generation``; a BM25 index built at another generation is
rebuilt from Chroma when opened, so it never disagrees with the vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from puyu.errors import ConfigError
from puyu.rag.splitter import Chunk

log = logging.getLogger(__name__)

WORDS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\u3400-\u9fff\uf900-\ufaff]+")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
PAGE = 5000  # rows per Chroma read, below its max batch size


def keyword_tokens(text: str) -> list[str]:
    """BM25 terms: lowercased words minus English stop words; CJK text as characters plus character bigrams.

    bm25s's own tokenizer keeps a whole run of Chinese as one word, so Chinese
    queries would never match; character unigrams + bigrams are the usual fix.
    """
    from bm25s.stopwords import STOPWORDS_EN

    lowered = text.lower()
    tokens, previous_cjk = [], None
    for match in WORDS.finditer(lowered):
        word = match.group()
        if CJK.fullmatch(word):
            tokens.append(word)
            if previous_cjk is not None and previous_cjk == match.start() - 1:
                tokens.append(lowered[previous_cjk] + word)
            previous_cjk = match.start()
        elif word not in STOPWORDS_EN:
            tokens.append(word)
    return tokens


def chunk_id(source: str, file_hash: str, index: int) -> str:
    """Deterministic id of the ``index``-th chunk of a file's version."""
    return f"{hashlib.sha1(source.encode()).hexdigest()[:16]}-{file_hash[:12]}-{index}"


def chunk_metadata(chunk: Chunk, file_hash: str, index: int) -> dict[str, Any]:
    meta = {"source": chunk.source, "headings": json.dumps(chunk.headings, ensure_ascii=False), "tokens": chunk.tokens,
            "index": index, "file_hash": file_hash, "line_start": chunk.line_start, "line_end": chunk.line_end,
            "page": chunk.page, "record_id": chunk.record_id}
    return {key: value for key, value in meta.items() if value is not None}


# chromadb caches one system per path and its creation is not thread-safe: two threads opening the same
# store at once (the web UI's document list during a sync) can leave a half-started system that fails both.
_OPENING = threading.Lock()


class ChunkStore:
    """Chroma collection + manifest + BM25 index of one knowledge-base folder.

    Args:
        folder: the knowledge base's folder (must exist).
    """

    def __init__(self, folder: Path):
        import chromadb
        from chromadb.config import Settings

        self.folder = folder
        with _OPENING:
            self.client = chromadb.PersistentClient(path=str(folder / "chroma"), settings=Settings(anonymized_telemetry=False))
            self.collection = self.client.get_or_create_collection("chunks", embedding_function=None,
                                                                   configuration={"hnsw": {"space": "cosine"}})
        self.db = sqlite3.connect(folder / "manifest.sqlite3")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS files (source TEXT PRIMARY KEY, hash TEXT, state TEXT, chunks INTEGER);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
        """)
        self._bm25 = None

    # manifest ---------------------------------------------------------------------------------
    def files(self) -> dict[str, tuple[str, str, int]]:
        """``source -> (hash, state, chunks)`` for every file the store knows."""
        return {row[0]: tuple(row[1:]) for row in self.db.execute("SELECT source, hash, state, chunks FROM files")}

    def generation(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def _bump(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(self.generation() + 1),))

    def begin_file(self, source: str, file_hash: str) -> None:
        """Mark ``source`` as being rewritten and delete its old chunks (committed before any chunk changes)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, 'pending', 0)", (source, file_hash))
            self._bump()
        self.collection.delete(where={"source": source})

    def finish_file(self, source: str, file_hash: str, chunks: int) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, 'done', ?)", (source, file_hash, chunks))

    def remove_file(self, source: str) -> None:
        """Delete a file's chunks, then its manifest row."""
        with self.db:
            self.db.execute("UPDATE files SET state = 'pending' WHERE source = ?", (source,))
            self._bump()
        self.collection.delete(where={"source": source})
        with self.db:
            self.db.execute("DELETE FROM files WHERE source = ?", (source,))

    # chunks -----------------------------------------------------------------------------------
    def add(self, ids: list[str], embeddings: np.ndarray, texts: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Upsert chunks (``embeddings``: float32 ``[N, D]``) in batches Chroma accepts."""
        step = min(self.client.get_max_batch_size(), PAGE)
        for i in range(0, len(ids), step):
            self.collection.upsert(ids=ids[i:i + step], embeddings=embeddings[i:i + step],
                                   documents=texts[i:i + step], metadatas=metadatas[i:i + step])

    def count(self) -> int:
        return self.collection.count()

    def get(self, ids: list[str], embeddings: bool = False) -> dict[str, Any]:
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        return self.collection.get(ids=ids, include=include)

    def iter_all(self, include: list[str]):
        """Every chunk in pages: yields Chroma ``get`` results."""
        total = self.count()
        for offset in range(0, total, PAGE):
            yield self.collection.get(limit=PAGE, offset=offset, include=include)

    # keyword index ----------------------------------------------------------------------------
    def bm25(self):
        """``(bm25s.BM25 or None when empty, chunk ids, sources)`` for the current generation, rebuilt if stale."""
        import bm25s

        generation, folder = self.generation(), self.folder / "bm25"
        if self._bm25 is not None and self._bm25[0] == generation:
            return self._bm25[1:]
        stamp = folder / "rows.json"
        rows = json.loads(stamp.read_text()) if stamp.is_file() else {}
        if rows.get("generation") == generation:
            index = bm25s.BM25.load(str(folder)) if rows["ids"] else None
        else:
            index, rows = self._rebuild_bm25(folder, generation)
        self._bm25 = (generation, index, rows["ids"], rows["sources"])
        return self._bm25[1:]

    def _rebuild_bm25(self, folder: Path, generation: int):
        import bm25s

        ids, sources, corpus = [], [], []
        for page in self.iter_all(["documents", "metadatas"]):
            for chunk_id_, text, meta in zip(page["ids"], page["documents"], page["metadatas"]):
                ids.append(chunk_id_)
                sources.append(meta["source"])
                corpus.append(keyword_tokens(" ".join(json.loads(meta.get("headings", "[]")) + [text])))
        index = None
        folder.mkdir(exist_ok=True)
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG, which floods the CLI
        if ids:
            index = bm25s.BM25()
            index.index(corpus, show_progress=False)
            index.save(str(folder))
        rows = {"generation": generation, "ids": ids, "sources": sources}
        tmp = folder / "rows.json.tmp"
        tmp.write_text(json.dumps(rows))
        tmp.replace(folder / "rows.json")
        log.info("rebuilt the BM25 index: %d chunks", len(ids))
        return index, rows

    def close(self) -> None:
        self.db.close()


def read_settings(folder: Path) -> dict[str, Any]:
    path = folder / "kb.json"
    if not path.is_file():
        raise ConfigError(f"{folder} is not a knowledge base (no kb.json); `puyu kb ls` lists them")
    return json.loads(path.read_text())


def write_settings(folder: Path, settings: dict[str, Any]) -> None:
    tmp = folder / "kb.json.tmp"
    tmp.write_text(json.dumps(settings, indent=2))
    tmp.replace(folder / "kb.json")
