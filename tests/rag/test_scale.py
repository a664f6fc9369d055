"""100,000 chunks: a build, hybrid queries, and a sync after one file changed that touches only that file's chunks.

Embedding 100k chunks with a real model takes most of an hour on a CPU, so the corpus is embedded by a hashing
embedder (a word's vector is fixed by its hash; a text's vector is the normalized sum): real Chroma, real BM25,
real splitting and sync, only the neural network left out.
"""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np

from puyu.model.embedder import Embedder
from puyu.rag import KnowledgeBase

WORDS = re.compile(r"\w+")
FILES, PARAGRAPHS = 400, 250  # 100,000 chunks: a paragraph has 12-14 words, so one paragraph per chunk at chunk size 20


class HashingEmbedder(Embedder):
    """The embedder interface the knowledge base uses, with bag-of-hashed-words vectors; records what it embedded."""

    def __init__(self):  # no model to load
        self.name, self.dimension, self.max_tokens = "hashing-64", 64, 256
        self.embedded: list[str] = []
        self.vectors: dict[str, np.ndarray] = {}

    def _vector(self, word: str) -> np.ndarray:
        if word not in self.vectors:
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            self.vectors[word] = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        return self.vectors[word]

    def embed(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        vectors = np.stack([sum((self._vector(w) for w in WORDS.findall(t.lower())), np.zeros(self.dimension, np.float32))
                            for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)

    def count(self, texts: list[str]) -> list[int]:
        return [len(WORDS.findall(t)) for t in texts]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in WORDS.finditer(text)]

    def coverage(self, texts: list[str]) -> float:
        return 1.0


def write_corpus(folder, rng: random.Random) -> None:
    topics = ["tensor parallel", "kv cache", "quantization", "api server", "prefix caching", "vision model", "turbomind"]
    verbs = ["configures", "speeds up", "reduces", "explains", "limits", "enables"]
    folder.mkdir()
    for f in range(FILES):
        paragraphs = [f"Section {f}.{p} {rng.choice(verbs)} the {rng.choice(topics)} of engine {rng.randrange(50)} "
                      f"with setting s{f}x{p}." for p in range(PARAGRAPHS)]
        (folder / f"doc{f:03}.md").write_text("\n\n".join(paragraphs) + "\n")


def test_100k_chunks_build_query_and_sync_only_what_changed(kb_home, tmp_path):
    write_corpus(tmp_path / "docs", random.Random(0))
    embedder = HashingEmbedder()
    kb = KnowledgeBase.create("big", embedder=embedder, chunk_size=20, chunk_overlap=0)
    report = kb.build([tmp_path / "docs"])
    assert report.chunks_total == FILES * PARAGRAPHS == 100_000 and len(embedder.embedded) == 100_000
    hit = kb.search("which setting is s123x45", k=1, mode="bm25")[0]
    assert hit.source.endswith("doc123.md") and "s123x45" in hit.text
    paragraph = (tmp_path / "docs" / "doc007.md").read_text().split("\n\n")[9].strip()
    assert kb.search(paragraph, k=1, mode="dense")[0].text == paragraph  # HNSW finds the chunk's own vector among 100k
    # Hybrid: a chunk first in both lists is first after fusion.  (Not the keyword query above: a chunk only BM25
    # finds scores 1/61, below any chunk that both lists rank in their top 20, and which those are depends on HNSW.)
    assert kb.search(paragraph, k=1, mode="hybrid")[0].text == paragraph

    before = set(kb.store.collection.get(include=[])["ids"])
    (tmp_path / "docs" / "doc200.md").write_text("Section new explains the brand new sentinel feature.\n")
    embedder.embedded.clear()
    again = kb.build([tmp_path / "docs"])
    assert again.changed == [str(tmp_path / "docs" / "doc200.md")] and again.unchanged == FILES - 1
    assert embedder.embedded == ["Section new explains the brand new sentinel feature."]  # only the changed file was embedded
    after = set(kb.store.collection.get(include=[])["ids"])
    assert len(before - after) == PARAGRAPHS and len(after - before) == 1  # only its chunks left and came
    assert kb.search("sentinel feature", k=1, mode="bm25")[0].source.endswith("doc200.md")
    kb.close()
