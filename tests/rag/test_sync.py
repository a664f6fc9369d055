"""Incremental builds: add, change, delete with exact chunk counts; crash and rerun; skipped files."""

from __future__ import annotations

import pytest

from puyu.errors import ConfigError
from puyu.rag import KnowledgeBase
from puyu.rag.splitter import Splitter
from puyu.rag.sync import sync


def write_docs(folder, count, sentences=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        body = "\n\n".join(f"File {i} paragraph {j} describes item {i * 100 + j} in plain words." for j in range(sentences))
        (folder / f"doc{i}.md").write_text(f"# Doc {i}\n\n{body}\n")


def expected_chunks(kb, folder):
    from puyu.rag.loaders import discover, load_file

    splitter = Splitter(kb.embedder, kb.settings["chunk_size"], kb.settings["chunk_overlap"])
    return sum(len(splitter.split(load_file(p))) for p in discover([folder]))


def assert_consistent(kb, chunks):
    everything = kb.store.collection.get(include=["metadatas"])
    keys = [(m["source"], m["index"]) for m in everything["metadatas"]]
    assert kb.store.count() == chunks and len(set(keys)) == len(keys) == chunks
    assert sum(row[2] for row in kb.store.files().values()) == chunks
    index, ids, _ = kb.store.bm25()
    assert sorted(ids) == sorted(everything["ids"])


def test_add_change_delete_keep_exact_counts(make_kb, tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 3)
    kb = make_kb(chunk_size=24, chunk_overlap=0)
    first = kb.build([docs])
    total = expected_chunks(kb, docs)
    assert len(first.added) == 3 and first.chunks_written == first.chunks_total == total and total > 3
    assert_consistent(kb, total)

    again = kb.build([docs])
    assert (again.added, again.changed, again.unchanged, again.chunks_written) == ([], [], 3, 0)

    (docs / "doc1.md").write_text("# Doc 1\n\nOnly one short line now.\n")
    write_docs(tmp_path / "more", 1)
    (tmp_path / "more" / "doc0.md").rename(docs / "doc9.md")
    (docs / "doc2.md").unlink()
    report = kb.build([docs])
    assert [p.rsplit("/", 1)[1] for p in report.changed + report.added + report.removed] == ["doc1.md", "doc9.md", "doc2.md"]
    assert report.unchanged == 1
    assert_consistent(kb, expected_chunks(kb, docs))
    assert {h.source.rsplit("/", 1)[1] for h in kb.search("item 201", k=20, mode="bm25")}.isdisjoint({"doc2.md"})


def test_crash_mid_build_is_completed_by_the_next_run(make_kb, tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 4)
    kb = make_kb(chunk_size=24, chunk_overlap=4)
    splitter = Splitter(kb.embedder, 24, 4)
    real_add, calls = kb.store.add, []

    def crash_on_second_flush(ids, embeddings, texts, metadatas):
        calls.append(len(ids))
        if len(calls) == 2:  # half of this file's chunks reach Chroma, then the process "dies"
            real_add(ids[: len(ids) // 2], embeddings[: len(ids) // 2], texts[: len(ids) // 2], metadatas[: len(ids) // 2])
            raise RuntimeError("simulated crash")
        real_add(ids, embeddings, texts, metadatas)

    kb.store.add = crash_on_second_flush
    with pytest.raises(RuntimeError, match="simulated crash"):
        sync(kb.store, splitter, kb.embedder, [docs], batch_chunks=1)
    kb.store.add = real_add
    assert kb.stats()["pending_files"]  # the interrupted file is known to be incomplete

    report = kb.build([docs])
    assert not kb.stats()["pending_files"] and report.unchanged == 1
    assert_consistent(kb, expected_chunks(kb, docs))


def test_corrupt_file_is_skipped_reported_and_retried(make_kb, tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 2)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "empty.txt").write_bytes(b"")
    kb = make_kb()
    progress = []
    report = kb.build([docs], on_progress=lambda done, total: progress.append((done, total)))
    assert progress[0] == (0, 4) and progress[-1] == (4, 4) and progress == sorted(progress)  # the skipped file counts too
    assert [p.rsplit("/", 1)[1] for p, _ in report.skipped] == ["broken.pdf"] and "broken.pdf" in report.skipped[0][1]
    assert len(report.added) == 3 and kb.store.files()[str(docs / "empty.txt")][2] == 0
    assert kb.build([docs]).skipped  # not recorded, so the next build tries it again
    assert_consistent(kb, expected_chunks(kb, docs / "doc0.md") + expected_chunks(kb, docs / "doc1.md"))


def test_settings_are_fixed_at_creation_and_kbs_are_listed(make_kb, kb_home, tmp_path):
    from puyu.rag import list_kbs, remove_kb

    make_kb("one", chunk_size=64)
    make_kb("two")
    assert list_kbs() == ["one", "two"]
    with pytest.raises(ConfigError, match="chunk size 64"):
        make_kb("one", chunk_size=100)
    with pytest.raises(ConfigError, match="embedder"):
        KnowledgeBase.open("two", embedder=str(tmp_path))
    with pytest.raises(ConfigError, match="no knowledge base named 'three'"):
        KnowledgeBase.open("three")
    with pytest.raises(ConfigError, match="name"):
        make_kb("../escape")
    remove_kb("one")
    assert list_kbs() == ["two"]


def test_bm25_terms_are_stored_once_and_recomputed_for_an_older_store(make_kb, tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 2)
    kb = make_kb(chunk_size=24, chunk_overlap=0)
    kb.build([docs])
    stored = dict(kb.store.db.execute("SELECT id, tokens FROM keywords"))
    assert sorted(stored) == sorted(kb.store.collection.get(include=[])["ids"]) and "item" in stored[sorted(stored)[0]].split()
    with kb.store.db:  # a store written before the keywords table existed
        kb.store.db.execute("DELETE FROM keywords")
        kb.store.db.execute("DELETE FROM meta WHERE key = 'keywords'")
        kb.store.db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
    assert kb.search("item 101", k=1, mode="bm25")[0].source.endswith("doc1.md")
    assert dict(kb.store.db.execute("SELECT id, tokens FROM keywords")) == stored
