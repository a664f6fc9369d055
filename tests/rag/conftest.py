"""RAG fixtures: the real embedder (all-MiniLM-L6-v2 from its package), loaded once per session; fresh knowledge bases."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedder():
    from puyu.model.embedder import Embedder

    return Embedder(device="cpu")


@pytest.fixture
def kb_home(tmp_path, monkeypatch):
    """A fresh ``$PUYU_HOME`` for tests that write knowledge bases."""
    home = tmp_path / "home"
    monkeypatch.setenv("PUYU_HOME", str(home))
    return home / "kb"


@pytest.fixture
def make_kb(kb_home, embedder):
    """``make_kb(name, **settings)``: a new knowledge base with the session's embedder."""
    from puyu.rag import KnowledgeBase

    opened = []

    def make(name: str = "test", **settings):
        kb = KnowledgeBase.create(name, embedder=embedder, **settings)
        opened.append(kb)
        return kb

    yield make
    for kb in opened:
        kb.close()
