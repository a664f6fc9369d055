"""The on-disk store of one knowledge base: Chroma vectors, a file manifest, a BM25 index.

Layout of a knowledge-base folder::

    kb.json            settings: embedder, dimension, chunk size and overlap
    chroma/            a persistent Chroma database, collection "chunks" (cosine space);
                       our own embeddings are always passed (``embedding_function=None``)
    manifest.sqlite3   files(source, hash, state, chunks), meta(generation, keywords) and keywords(id,
                       source, tokens): each chunk's BM25 terms, written with the chunk, so that
                       rebuilding the BM25 index reads terms instead of reading and tokenizing every chunk
    bm25/              a bm25s index over the same chunks, tagged with the generation it was built at
                       and the keyword scheme (``KEYWORDS``) it was built with

Crash safety: before a file's chunks change, its manifest row is set to
``pending`` (committed); only after its chunks are in Chroma is it set to
``done`` with the content hash.  Chunk ids are deterministic and a file's old
chunks are deleted by their ``source`` metadata before new ones are written, so
rerunning after a crash redoes the pending files without duplicates.  Every
change bumps ``generation``; a BM25 index built at another generation is
rebuilt from the stored terms when opened (bm25s cannot update an index in
place), so it never disagrees with the vectors; searches between changes reuse
the loaded index.  Terms of a store written before the keywords table existed,
or under another ``KEYWORDS`` scheme, are recomputed from Chroma once.
"""

from __future__ import annotations

import functools
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

CJK = "\u3400-\u9fff\uf900-\ufaff"
WORDS = re.compile(rf"[{CJK}]+|[^\W{CJK}]+")
PAGE = 5000  # rows per Chroma read, below its max batch size
KEYWORDS = "jieba-search-1"  # names keyword_tokens' scheme; a BM25 index built under another one is rebuilt
STOPWORDS_ZH = frozenset("的 了 是 在 和 与 或 及 有 我 你 他 她 它 们 这 那 吗 呢 吧 啊 就 都 也 还 把 被 让 对 从 到 为 以 之 其 而 "
                         "如何 怎么 什么 哪些 哪个 为什么 可以 能 会 要 一个 请问".split())


def keyword_tokens(text: str) -> list[str]:
    """BM25 terms: lowercased words minus English stop words; Chinese cut into words by jieba's search mode.

    A run of Chinese characters has no spaces, so bm25s's own tokenizer would keep
    it as one "word" and Chinese queries would never match.  jieba's search mode
    gives the words and, for long words, their shorter words too
    (中华人民共和国 → 中华, 人民, 共和国, ...), so a query matches a passage that
    words it a little differently; common function words are dropped.
    """
    from bm25s.stopwords import STOPWORDS_EN

    tokens = []
    for match in WORDS.finditer(text.lower()):
        word = match.group()
        if "\u3400" <= word[0] <= "\u9fff" or "\uf900" <= word[0] <= "\ufaff":
            tokens.extend(w for w in _jieba().cut_for_search(word) if w not in STOPWORDS_ZH)
        elif word not in STOPWORDS_EN:
            tokens.append(word)
    return tokens


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it announces loading its dictionary on stderr otherwise
    jieba.initialize()
    return jieba


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
        # searches may come from other threads (LangChain runs retrievers in a pool); builds stay in one thread
        self.db = sqlite3.connect(folder / "manifest.sqlite3", check_same_thread=False)
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS files (source TEXT PRIMARY KEY, hash TEXT, state TEXT, chunks INTEGER);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS keywords (id TEXT PRIMARY KEY, source TEXT, tokens TEXT);
            CREATE INDEX IF NOT EXISTS keywords_by_source ON keywords (source);
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
            self.db.execute("DELETE FROM keywords WHERE source = ?", (source,))
        self.collection.delete(where={"source": source})

    def finish_file(self, source: str, file_hash: str, chunks: int) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, 'done', ?)", (source, file_hash, chunks))

    def remove_file(self, source: str) -> None:
        """Delete a file's chunks, then its manifest row."""
        with self.db:
            self.db.execute("UPDATE files SET state = 'pending' WHERE source = ?", (source,))
            self._bump()
            self.db.execute("DELETE FROM keywords WHERE source = ?", (source,))
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
        self._store_keywords(ids, texts, metadatas)

    def _store_keywords(self, ids: list[str], texts: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Save each chunk's BM25 terms: its heading path and text through :func:`keyword_tokens`."""
        rows = [(chunk_id_, meta["source"], " ".join(keyword_tokens(" ".join(json.loads(meta.get("headings", "[]")) + [text]))))
                for chunk_id_, text, meta in zip(ids, texts, metadatas)]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO keywords VALUES (?, ?, ?)", rows)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('keywords', ?)", (KEYWORDS,))  # a new store: the current scheme

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
        if rows.get("generation") == generation and rows.get("keywords") == KEYWORDS:
            index = bm25s.BM25.load(str(folder)) if rows["ids"] else None
        else:
            index, rows = self._rebuild_bm25(folder, generation)
        self._bm25 = (generation, index, rows["ids"], rows["sources"])
        return self._bm25[1:]

    def _rebuild_bm25(self, folder: Path, generation: int):
        import bm25s

        scheme = self.db.execute("SELECT value FROM meta WHERE key = 'keywords'").fetchone()
        if scheme != (KEYWORDS,) or self.db.execute("SELECT COUNT(*) FROM keywords").fetchone()[0] != self.count():
            log.info("computing the BM25 terms of every chunk (once)")
            with self.db:
                self.db.execute("DELETE FROM keywords")
            for page in self.iter_all(["documents", "metadatas"]):
                self._store_keywords(page["ids"], page["documents"], page["metadatas"])
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('keywords', ?)", (KEYWORDS,))
        ids, sources, corpus = [], [], []
        for chunk_id_, source, tokens in self.db.execute("SELECT id, source, tokens FROM keywords ORDER BY id"):
            ids.append(chunk_id_)
            sources.append(source)
            corpus.append(tokens.split())
        index = None
        folder.mkdir(exist_ok=True)
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG, which floods the CLI
        if ids:
            index = bm25s.BM25()
            index.index(corpus, show_progress=False)
            index.save(str(folder))
        rows = {"generation": generation, "keywords": KEYWORDS, "ids": ids, "sources": sources}
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
