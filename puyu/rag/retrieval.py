"""Retrieval: dense + BM25 hybrid with reciprocal rank fusion, MMR, path filters and a reranker.

Contract: ``Retriever(store, embedder).search(query, k)`` returns up to ``k``
:class:`Hit` objects, best first, each with its text, its citation metadata and
its scores.  Modes: ``dense`` (Chroma HNSW, cosine), ``bm25`` (bm25s over
:func:`~puyu.rag.store.keyword_tokens`) and ``hybrid`` (both lists, ``fetch_k``
deep, fused by reciprocal rank fusion: score = Σ 1 / (60 + rank), Cormack et
al. 2009), each list weighted by what its retriever can do on the query: BM25
by 1, dense by the embedder's :meth:`~puyu.model.embedder.Embedder.coverage` of
the query, so a Chinese query with an English-only embedder (whose tokenizer
maps Chinese to ``[UNK]``) is answered by BM25 instead of by noise.  Options, applied in this order to the fused candidates: ``paths``
(globs on the source path, applied inside both searches), ``reranker`` (a local
sentence-transformers cross-encoder folder re-orders the candidates),
``mmr`` (maximal marginal relevance with that λ picks ``k`` diverse hits;
relevance is the cosine similarity to the query).  Every hit carries
``similarity``, its cosine to the query, which the answerer thresholds on.
RRF and MMR are a few lines of arithmetic over our own candidate lists, so
they are written here rather than taken from a framework.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from puyu.errors import ConfigError
from puyu.model.embedder import Embedder
from puyu.rag.splitter import Passage
from puyu.rag.store import ChunkStore, keyword_tokens

log = logging.getLogger(__name__)

RRF_K = 60
MODES = ("hybrid", "dense", "bm25")
MIN_COVERAGE = 0.2  # below this share of known query tokens, the dense list is noise


@dataclass(kw_only=True)
class Hit(Passage):
    """One retrieved chunk: its text and citation fields (see :class:`~puyu.rag.splitter.Passage`) and its scores.

    Attributes:
        id: the chunk id in the store.
        score: the ranking score (RRF for hybrid, cosine for dense, BM25 for bm25, cross-encoder when reranked).
        similarity: cosine similarity between the query and the chunk.
    """

    id: str
    score: float = 0.0
    similarity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """``id``, the passage fields, the scores and ``location``."""
        return {"id": self.id} | asdict(self) | {"location": self.location()}


def _hit(chunk_id: str, text: str, meta: dict[str, Any]) -> Hit:
    return Hit(text, meta["source"], json.loads(meta.get("headings", "[]")), meta.get("line_start"), meta.get("line_end"),
               meta.get("page"), meta.get("record_id"), id=chunk_id)


def embedding_weight(embedder: Embedder, text: str) -> float:
    """How far the embedder's cosine to ``text`` can be trusted: its token coverage of ``text``, 0 below ``MIN_COVERAGE``."""
    coverage = embedder.coverage([text])
    return coverage if coverage >= MIN_COVERAGE else 0.0


def path_filter(sources: list[str], patterns: list[str]) -> list[str]:
    """Sources matching any glob, tried on the absolute path and as a path suffix (``docs/en/*``)."""
    return [s for s in sources if any(fnmatch.fnmatch(s, p) or fnmatch.fnmatch(s, "*/" + p.lstrip("/")) for p in patterns)]


def mmr_select(query: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of ``k`` rows of ``vectors`` [N, D] by maximal marginal relevance to ``query`` [D] (unit vectors)."""
    relevance = vectors @ query
    chosen: list[int] = []
    while len(chosen) < min(k, len(vectors)):
        redundancy = (vectors @ vectors[chosen].T).max(axis=1) if chosen else np.zeros(len(vectors))
        value = lam * relevance - (1 - lam) * redundancy
        value[chosen] = -np.inf
        chosen.append(int(value.argmax()))
    return chosen


class Retriever:
    """Searches one store.

    Args:
        store: the knowledge base's :class:`~puyu.rag.store.ChunkStore`.
        embedder: the embedder the store was built with.
    """

    def __init__(self, store: ChunkStore, embedder: Embedder):
        self.store, self.embedder = store, embedder
        self._rerankers: dict[str, Any] = {}
        self._warned = False  # about a query in a language the embedder does not know: once per retriever

    def search(self, query: str, k: int = 5, mode: str = "hybrid", paths: list[str] | None = None, mmr: float | None = None,
               reranker: str | None = None, fetch_k: int | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (see the module docstring for the options)."""
        if mode not in MODES:
            raise ConfigError(f"retrieval mode must be one of {', '.join(MODES)}, got {mode!r}")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if mmr is not None and not 0 <= mmr <= 1:
            raise ConfigError(f"mmr lambda must be in [0, 1], got {mmr}")
        fetch_k = max(fetch_k or 4 * k, k, 20)
        allowed = None
        if paths:
            allowed = path_filter(sorted(self.store.files()), paths)
            if not allowed:
                return []
        query_vector = self.embedder.embed([query])[0]
        ranked: dict[str, float] = {}
        hits: dict[str, Hit] = {}
        if mode in ("dense", "hybrid"):
            weight = self.dense_weight(query) if mode == "hybrid" else 1.0
            for rank, hit in enumerate(self._dense(query_vector, fetch_k, allowed) if weight > 0 else []):
                hits[hit.id] = hit
                ranked[hit.id] = ranked.get(hit.id, 0.0) + (weight / (RRF_K + rank + 1) if mode == "hybrid" else hit.similarity)
        if mode in ("bm25", "hybrid"):
            for rank, (chunk_id, score) in enumerate(self._keyword(query, fetch_k, allowed)):
                ranked[chunk_id] = ranked.get(chunk_id, 0.0) + (1 / (RRF_K + rank + 1) if mode == "hybrid" else score)
        order = sorted(ranked, key=ranked.get, reverse=True)
        vectors = self._complete(order, hits, query_vector)
        for chunk_id in order:
            hits[chunk_id].score = float(ranked[chunk_id])
        if reranker:
            order = self._rerank(reranker, query, order, hits)
        if mmr is not None and order:
            picked = mmr_select(query_vector, np.stack([vectors[i] for i in order]), k, mmr)
            order = [order[i] for i in picked]
        return [hits[i] for i in order[:k]]

    def dense_weight(self, query: str) -> float:
        """The dense list's weight in hybrid fusion (:func:`embedding_weight`), with a warning when it is 0."""
        weight = embedding_weight(self.embedder, query)
        if weight == 0:
            (log.info if self._warned else log.warning)(
                "the embedder knows less than %.0f%% of this query's tokens (a language it was not trained on?); hybrid search "
                "relies on BM25 for it; a multilingual --embedder (bge-m3, multilingual-e5) would search it densely too",
                100 * MIN_COVERAGE)
            self._warned = True
        return weight

    def _dense(self, query_vector: np.ndarray, n: int, allowed: list[str] | None) -> list[Hit]:
        # no count() first: it scans the collection (13 ms at 100k chunks), and Chroma returns fewer than n when it holds fewer
        where = {"source": {"$in": allowed}} if allowed is not None else None
        result = self.store.collection.query(query_embeddings=[query_vector], n_results=n, where=where,
                                             include=["documents", "metadatas", "distances"])
        hits = []
        for chunk_id, text, meta, distance in zip(result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0]):
            hit = _hit(chunk_id, text, meta)
            hit.similarity = 1.0 - float(distance)
            hits.append(hit)
        return hits

    def _keyword(self, query: str, n: int, allowed: list[str] | None) -> list[tuple[str, float]]:
        index, ids, sources = self.store.bm25()
        tokens = keyword_tokens(query)
        if index is None or not tokens:
            return []
        mask = None
        if allowed is not None:
            allowed_set = set(allowed)
            mask = np.array([s in allowed_set for s in sources], dtype=np.float32)
        rows, scores = index.retrieve([tokens], k=min(n, len(ids)), show_progress=False, weight_mask=mask)
        return [(ids[int(r)], float(s)) for r, s in zip(rows[0], scores[0]) if s > 0]

    def _complete(self, order: list[str], hits: dict[str, Hit], query_vector: np.ndarray) -> dict[str, np.ndarray]:
        """Fetch text, metadata and embeddings of the candidates; set every hit's cosine similarity."""
        if not order:
            return {}
        result = self.store.get(order, embeddings=True)
        vectors = {}
        for chunk_id, text, meta, vector in zip(result["ids"], result["documents"], result["metadatas"], result["embeddings"]):
            vectors[chunk_id] = np.asarray(vector, dtype=np.float32)
            hit = hits.setdefault(chunk_id, _hit(chunk_id, text, meta))
            hit.similarity = float(vectors[chunk_id] @ query_vector)
        return vectors

    def _rerank(self, folder: str, query: str, order: list[str], hits: dict[str, Hit]) -> list[str]:
        if folder not in self._rerankers:
            if not os.path.isdir(folder):
                raise ConfigError(f"reranker {folder}: not a local cross-encoder folder; models are never downloaded")
            os.environ["HF_HUB_OFFLINE"] = "1"
            from sentence_transformers import CrossEncoder

            self._rerankers[folder] = CrossEncoder(folder, device=self.embedder.model.device.type)
        scores = self._rerankers[folder].predict([(query, hits[i].text) for i in order], show_progress_bar=False)
        for chunk_id, score in zip(order, scores):
            hits[chunk_id].score = float(score)
        return sorted(order, key=lambda i: hits[i].score, reverse=True)
