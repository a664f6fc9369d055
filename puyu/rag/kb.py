"""``KnowledgeBase``: the Python API of the knowledge-base assistant (also the agent's retrieval tool).

>>> from puyu import LLM
>>> from puyu.client import LocalClient
>>> from puyu.generation import SamplingParams
>>> from puyu.rag import KnowledgeBase
>>> kb = KnowledgeBase.create("lmdeploy")                      # under $PUYU_HOME/kb/lmdeploy
>>> kb.build(["docs/"], exclude=["zh_cn/*"])                     # incremental: rerun after edits
>>> for hit in kb.search("How do I install lmdeploy?", k=3):
...     print(hit.location(), hit.text[:80])
>>> answer = kb.ask("How do I install lmdeploy?", LocalClient(LLM()), params=SamplingParams(temperature=0))
>>> answer.text, answer.citations, answer.references()

A knowledge base is a folder (default ``home_subdir("kb")/<name>``) whose
settings (embedder, chunk size and overlap in embedder tokens) are fixed when
it is created; :mod:`puyu.rag.store` describes its layout.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from puyu.client import ChatClient
from puyu.errors import ConfigError
from puyu.generation import SamplingParams
from puyu.home import home_subdir
from puyu.model.embedder import Embedder, load_embedder
from puyu.rag.answer import DEFAULT_MODE, DEFAULT_TEMPLATE, Answer, AnswerStream, answer_stream
from puyu.rag.retrieval import Hit, Retriever, embedding_weight
from puyu.rag.splitter import Splitter
from puyu.rag.store import ChunkStore, read_settings, write_settings
from puyu.rag.sync import SyncReport, sync

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_CHUNK_SIZE = 200
DEFAULT_CHUNK_OVERLAP = 30


def kb_folder(name: str, home: Path | None = None) -> Path:
    if not NAME.match(name):
        raise ConfigError(f"knowledge base name {name!r}: use letters, digits, '.', '_' and '-'")
    return (home or home_subdir("kb")) / name


def list_kbs(home: Path | None = None) -> list[str]:
    """Names of the knowledge bases under ``home`` (default ``$PUYU_HOME/kb``)."""
    root = home or home_subdir("kb")
    return sorted(p.name for p in root.iterdir() if (p / "kb.json").is_file())


def remove_kb(name: str, home: Path | None = None) -> None:
    folder = kb_folder(name, home)
    read_settings(folder)  # refuse to delete a folder that is not a knowledge base
    shutil.rmtree(folder)


class KnowledgeBase:
    """One knowledge base: build it from files, search it, ask it.

    Use :meth:`create` (opens it when it exists) or :meth:`open`.
    """

    def __init__(self, folder: Path, settings: dict[str, Any], embedder: Embedder | str | None = None, device: str = "auto"):
        self.folder, self.name, self.settings = folder, folder.name, settings
        self._embedder_spec, self._device = embedder, device
        self._embedder: Embedder | None = None
        self._retriever: Retriever | None = None
        if embedder is not None:
            self._check(embedder.name if isinstance(embedder, Embedder) else str(Path(embedder).expanduser().resolve()))
        self.store = ChunkStore(folder)

    def _check(self, embedder_name: str) -> None:
        if embedder_name != self.settings["embedder"]:
            raise ConfigError(f"knowledge base {self.name} was built with embedder {self.settings['embedder']}, "
                              f"not {embedder_name}; use that one or build a new knowledge base")

    @property
    def embedder(self) -> Embedder:
        """The knowledge base's embedder, loaded on first use (listing and stats do not need it)."""
        if self._embedder is None:
            spec = self._embedder_spec
            if not isinstance(spec, Embedder):
                spec = load_embedder(spec or self.settings["embedder"], self._device)
            self._check(spec.name)
            self._embedder = spec
        return self._embedder

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = Retriever(self.store, self.embedder)
        return self._retriever

    @classmethod
    def create(cls, name: str, *, embedder: str | Embedder | None = None, chunk_size: int | None = None,
               chunk_overlap: int | None = None, home: Path | None = None, device: str = "auto") -> KnowledgeBase:
        """Open knowledge base ``name``, creating it with these settings if it does not exist.

        Args:
            name: the knowledge base's name (a folder under ``home``, default ``$PUYU_HOME/kb``).
            embedder: a local sentence-transformers folder, a loaded :class:`Embedder`, or None for all-MiniLM-L6-v2.
            chunk_size: most tokens (of the embedder's tokenizer) per chunk; default 200.
            chunk_overlap: tokens repeated between neighbouring chunks; default 30.
            home: the folder that holds knowledge bases.
            device: where the embedder runs when it is loaded here.
        """
        folder = kb_folder(name, home)
        if (folder / "kb.json").is_file():
            kb = cls.open(name, home=home, embedder=embedder, device=device)
            for key, value in (("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap)):
                if value is not None and value != kb.settings[key]:
                    raise ConfigError(f"knowledge base {name} uses {key.replace('_', ' ')} {kb.settings[key]}, not {value}; "
                                      f"`puyu kb rm {name}` and build it again to change it")
            return kb
        model = embedder if isinstance(embedder, Embedder) else load_embedder(embedder, device)
        settings = {"embedder": model.name, "dimension": model.dimension,
                    "chunk_size": chunk_size or DEFAULT_CHUNK_SIZE,
                    "chunk_overlap": DEFAULT_CHUNK_OVERLAP if chunk_overlap is None else chunk_overlap,
                    "token_counter": f"tokenizer of the embedder ({model.name})", "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        Splitter(model, settings["chunk_size"], settings["chunk_overlap"])  # validate before anything is written
        folder.mkdir(parents=True, exist_ok=True)
        write_settings(folder, settings)
        return cls(folder, settings, model, device)

    @classmethod
    def open(cls, name: str, *, home: Path | None = None, embedder: str | Embedder | None = None, device: str = "auto") -> KnowledgeBase:
        """Open an existing knowledge base (its embedder is loaded from its settings unless one is given)."""
        folder = kb_folder(name, home)
        if not (folder / "kb.json").is_file():
            raise ConfigError(f"no knowledge base named {name!r}: `puyu kb ls` lists them, `puyu kb build DOCS --kb {name}` makes it")
        return cls(folder, read_settings(folder), embedder, device)

    def build(self, paths: Iterable[str | Path], include: Iterable[str] = (), exclude: Iterable[str] = (),
              show_progress: bool = False, on_progress: Callable[[int, int], None] | None = None) -> SyncReport:
        """Add new and changed files under ``paths``, remove deleted ones (see :func:`puyu.rag.sync.sync`)."""
        splitter = Splitter(self.embedder, self.settings["chunk_size"], self.settings["chunk_overlap"])
        return sync(self.store, splitter, self.embedder, paths, include, exclude, show_progress=show_progress,
                    on_progress=on_progress)

    def search(self, query: str, k: int = 5, *, mode: str = "hybrid", paths: list[str] | None = None,
               mmr: float | None = None, reranker: str | None = None, fetch_k: int | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query``; see :class:`puyu.rag.retrieval.Retriever`."""
        return self.retriever.search(query, k, mode=mode, paths=paths, mmr=mmr, reranker=reranker, fetch_k=fetch_k)

    def ask_stream(self, question: str, client: ChatClient | None, *, params: SamplingParams | None = None, k: int = 5,
                   min_similarity: float = 0.25, template: str = DEFAULT_TEMPLATE, system: str | None = None, policy: str = "flag",
                   search: dict[str, Any] | None = None, answer: str = DEFAULT_MODE) -> AnswerStream:
        """Retrieve, then a cited answer: ``answer`` is ``generative`` (streamed from ``client`` sampled with ``params``),
        ``extractive`` (quoted sentences; ``client`` may be None) or ``auto`` (see :mod:`puyu.rag.answer`); ``search``
        holds extra :meth:`search` options."""
        hits = self.search(question, k, **(search or {}))
        if embedding_weight(self.embedder, question) == 0:
            min_similarity = -1.0  # the embedder cannot read the question, so its cosine says nothing: BM25 chose the hits
        return answer_stream(question, hits, client, params, min_similarity=min_similarity, template=template, system=system,
                             policy=policy, mode=answer, embedder=None if answer == "generative" else self.embedder)

    def ask(self, question: str, client: ChatClient | None, **options: Any) -> Answer:
        """Like :meth:`ask_stream`, returning the finished, checked :class:`~puyu.rag.answer.Answer`."""
        return self.ask_stream(question, client, **options).result()

    def stats(self) -> dict[str, Any]:
        """Files, chunks, files left pending by an interrupted build, size on disk and the settings."""
        files = self.store.files()
        size = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return {"name": self.name, "folder": str(self.folder), "files": len(files), "chunks": self.store.count(),
                "pending_files": sorted(s for s, row in files.items() if row[1] != "done"),
                "disk_mb": round(size / 2**20, 2), **self.settings}

    def close(self) -> None:
        self.store.close()
