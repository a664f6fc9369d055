"""Hybrid retrieval: each side finds what the other misses; path filters, MMR, the reranker, Chinese keywords."""

from __future__ import annotations

from pathlib import Path

import pytest

from puyu.errors import ConfigError

DOCS = {
    "en/car.md": "Starting a car engine: insert the key and turn the ignition until it fires.",
    "en/ticket.md": "Ticket 88213 was closed by Okonkwo after the gasket swap.",
    "en/storage1.md": "Where are tools kept? Tools are stored in the garage cabinet near the door.",
    "en/storage2.md": "Spare parts are kept in labelled bins in the storeroom on the second floor.",
    "en/storage3.md": "Where to keep supplies: the warehouse keeps supplies on numbered shelves.",
    "en/bread.md": "Baking bread needs flour, water, salt and yeast, then a hot oven.",
    "fr/river.md": "The Nile is a long river in Africa that flows north into the Mediterranean Sea.",
    "fr/eiffel1.md": "The Eiffel Tower is a wrought-iron tower in Paris, France.",
    "fr/eiffel2.md": "The Eiffel Tower is a wrought iron tower located in Paris, France.",
    "fr/eiffel3.md": "Paris, France is home to the Eiffel Tower, a wrought-iron tower.",
    "fr/louvre.md": "The Louvre museum in Paris displays the Mona Lisa and ancient Egyptian art.",
    "zh/faq.md": "# 常见问题\n\n安装时出现找不到动态库的错误，请重新安装预编译的包。",
}


@pytest.fixture
def kb(make_kb, tmp_path):
    for name, text in DOCS.items():
        (tmp_path / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / name).write_text(text)
    kb = make_kb()
    kb.build([tmp_path / "docs"])
    return kb


def names(hits):
    return [Path(h.source).relative_to(Path(h.source).parents[1]).as_posix() for h in hits]


def test_hybrid_finds_a_keyword_match_that_dense_misses(kb):
    query = "Which spare parts storage holds item 88213?"
    assert "en/ticket.md" not in names(kb.search(query, 2, mode="dense"))
    assert "en/ticket.md" in names(kb.search(query, 2, mode="bm25"))
    assert "en/ticket.md" in names(kb.search(query, 2, mode="hybrid"))


def test_hybrid_finds_a_paraphrase_that_bm25_misses(kb):
    query = "How do I get the motor of my automobile running?"
    assert "en/car.md" not in names(kb.search(query, 2, mode="bm25"))
    assert names(kb.search(query, 2, mode="dense"))[0] == "en/car.md"
    assert names(kb.search(query, 2, mode="hybrid"))[0] == "en/car.md"


def test_hits_carry_citation_metadata_and_scores(kb):
    [hit] = kb.search("Who closed ticket 88213?", 1)
    assert hit.text == DOCS["en/ticket.md"] and (hit.line_start, hit.line_end) == (1, 1)
    assert hit.location().endswith("en/ticket.md, line 1") and 0.3 < hit.similarity <= 1 and hit.score > 0
    [chinese] = kb.search("找不到动态库", 1, mode="bm25")  # Chinese keywords match through character bigrams
    assert names([chinese]) == ["zh/faq.md"] and chinese.headings == ["常见问题"]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_path_filter_applies_inside_every_mode(kb, mode):
    hits = kb.search("Paris tower river", 10, mode=mode, paths=["fr/*"])
    assert hits and all(n.startswith("fr/") for n in names(hits))
    assert kb.search("Paris", 3, mode=mode, paths=["nowhere/*"]) == []


def test_mmr_trades_duplicates_for_diversity(kb):
    query = "Eiffel Tower in Paris"
    plain = names(kb.search(query, 3, mode="dense"))
    diverse = names(kb.search(query, 3, mode="dense", mmr=0.3))
    assert sum(n.startswith("fr/eiffel") for n in plain) == 3
    assert sum(n.startswith("fr/eiffel") for n in diverse) < 3 and diverse[0] == plain[0]


def test_cross_encoder_reranker_orders_by_its_scores(kb, embedder, tmp_path):
    import shutil

    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "tiny-cross-encoder"
    config = BertConfig(vocab_size=embedder.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
        shutil.copy(Path(embedder.model.tokenizer.name_or_path) / name, folder / name)
    hits = kb.search("Where are spare parts kept?", 5, reranker=str(folder), fetch_k=20)
    scores = CrossEncoder(str(folder), device="cpu").predict([("Where are spare parts kept?", h.text) for h in hits])
    assert [h.score for h in hits] == pytest.approx([float(s) for s in scores], abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with pytest.raises(ConfigError, match="cross-encoder"):
        kb.search("x", 2, reranker=str(tmp_path / "missing"))


def test_bad_options_are_named(kb):
    for options, message in [({"mode": "sparse"}, "mode"), ({"mmr": 2.0}, "mmr"), ({"k": 0}, "k must")]:
        with pytest.raises(ConfigError, match=message):
            kb.search("x", **{"k": 3} | options)


def test_stale_keyword_index_is_rebuilt_from_the_vectors(kb):
    kb.store.collection.delete(where={"source": kb.search("Nile river", 1, mode="dense")[0].source})
    kb.store.begin_file("/nowhere.md", "0")  # any change bumps the generation
    kb.store.remove_file("/nowhere.md")
    assert "fr/river.md" not in names(kb.search("Nile river Africa", 5, mode="bm25"))
