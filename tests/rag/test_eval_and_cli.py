"""Retrieval metrics, answer EM/F1, the `puyu kb` commands, and a real-data check on NQ passages."""

from __future__ import annotations

import json

import pytest

from puyu.cli import main
from puyu.errors import ConfigError
from puyu.rag.evaluate import QAItem, exact_match, load_qa, retrieval_scores, token_f1
from puyu.rag.retrieval import Hit
from tests.conftest import DATASETS


def test_recall_and_mrr_by_id_source_and_answer():
    by_id = QAItem("q", gold_id="p2")
    by_source = QAItem("q", source="docs/en/faq.md", section="Libs")
    by_answer = QAItem("q", answers=["George Harrison"])
    ranked = [
        [Hit("x", "/c/p.jsonl", record_id="p1", id="a"), Hit("y", "/c/p.jsonl", record_id="p2", id="b")],
        [Hit("z", "/d/docs/en/faq.md", ["FAQ", "Install"], id="c"), Hit("w", "/d/docs/en/faq.md", ["FAQ", "Libs"], id="d")],
        [Hit("Written by george harrison in 1973.", "/x.md", id="e")],
    ]
    scores = retrieval_scores(ranked + [[Hit("nothing", "/y.md", id="f")]], [by_id, by_source, by_answer, by_answer], k=1, mrr_k=10)
    assert scores == {"recall@1": pytest.approx(1 / 4), "mrr@10": pytest.approx((0.5 + 0.5 + 1 + 0) / 4)}


def test_exact_match_and_f1_follow_squad_normalization():
    assert exact_match("The Beatles!", ["beatles"]) == 1.0 and exact_match("Beatles band", ["beatles"]) == 0.0
    assert token_f1("george harrison wrote it", ["George Harrison"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("nothing", ["George Harrison"]) == 0.0


def test_qa_lines_need_something_to_score(tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "no gold"}\n')
    with pytest.raises(ConfigError, match="qa.jsonl:2"):
        load_qa(tmp_path / "qa.jsonl")


def test_kb_commands_end_to_end(embedder, kb_home, tmp_path, tiny_model_dir, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "serve.md").write_text("# Serving\n\nThe API server listens on port 23333 by default.\n")
    (docs / "bad.pdf").write_bytes(b"%PDF-1.4 broken")
    assert main(["kb", "build", str(docs), "--kb", "demo", "--chunk-size", "64"]) == 0
    captured = capsys.readouterr()
    assert "1 added" in captured.out and "1 skipped" in captured.out and "bad.pdf" in captured.err
    assert main(["kb", "ls"]) == 0 and capsys.readouterr().out.startswith("demo\t1 files\t1 chunks")
    assert main(["kb", "stats", "demo"]) == 0 and json.loads(capsys.readouterr().out)["chunk_size"] == 64

    assert main(["kb", "search", "demo", "which port", "--json"]) == 0
    [hit] = json.loads(capsys.readouterr().out)
    assert hit["headings"] == ["Serving"] and hit["line_start"] == 3

    (tmp_path / "qa.jsonl").write_text('{"question": "Which port does the server use?", "answer": "23333"}\n')
    assert main(["kb", "eval", "demo", "--qa", str(tmp_path / "qa.jsonl"), "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@1"] == 1.0

    (tmp_path / "short.txt").write_text("{context}\nQ: {question}")  # the tiny model has a 256-token window
    assert main(["kb", "ask", "demo", "Which port does the server use?", str(tiny_model_dir), "--show-context",
                 "--template", str(tmp_path / "short.txt"), "--max-new-tokens", "4", "--temperature", "0", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Retrieved context:\n\n[1] ") and "port 23333" in out
    assert main(["kb", "ask", "demo", "Who painted the Mona Lisa?", str(tiny_model_dir), "--min-similarity", "0.9"]) == 0
    assert "found nothing relevant" in capsys.readouterr().out

    assert main(["kb", "ask", "demo", "Which port does the server use?", "--answer", "extractive"]) == 0  # no model is loaded
    assert capsys.readouterr().out.startswith("The API server listens on port 23333 by default. [1]\n\nSources:\n[1] ")
    assert main(["kb", "eval", "demo", "--qa", str(tmp_path / "qa.jsonl"), "-k", "1", "--answers", "extractive"]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]["extractive"]
    assert answers["contains"] == answers["cited"] == 1.0 and answers["degenerate"] == 0.0

    assert main(["kb", "rm", "demo"]) == 0 and main(["kb", "ls"]) == 0
    assert capsys.readouterr().out == "removed knowledge base demo\n"
    assert main(["kb", "stats", "demo"]) == 2 and "no knowledge base named 'demo'" in capsys.readouterr().err


@pytest.mark.skipif(not (DATASETS / "rag" / "nq_openbook" / "passages.jsonl").is_file(), reason="needs ../shared/datasets")
def test_nq_passages_are_retrieved_for_their_questions(make_kb, tmp_path):
    """A real-data check: 40 NQ passages; most questions must find their gold passage in the top 5."""
    from puyu.rag.evaluate import evaluate

    folder = DATASETS / "rag" / "nq_openbook"
    lines = (folder / "passages.jsonl").read_text().splitlines()[:40]
    (tmp_path / "nq").mkdir()
    (tmp_path / "nq" / "passages.jsonl").write_text("\n".join(lines) + "\n")
    ids = {json.loads(line)["id"] for line in lines}
    items = [item for item in load_qa(folder / "qa.jsonl") if item.gold_id in ids]
    kb = make_kb("nq")
    kb.build([tmp_path / "nq"])
    scores = {mode: evaluate(kb, items, k=5, search={"mode": mode}) for mode in ("dense", "bm25", "hybrid")}
    assert len(items) >= 35
    assert all(s["recall@5"] > 0.7 for s in scores.values()), scores
    assert scores["hybrid"]["mrr@10"] >= min(scores["dense"]["mrr@10"], scores["bm25"]["mrr@10"]), scores


def test_kb_ask_help_shows_the_answer_defaults_it_uses(capsys):
    from puyu.rag.answer import ANSWER_PARAMS

    with pytest.raises(SystemExit):
        main(["kb", "ask", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {ANSWER_PARAMS.max_new_tokens})" in help_text and ANSWER_PARAMS.max_new_tokens != 512
