"""Each cleaning step on real English and Chinese samples with the removals expected (puyu.corpus.filters)."""

from __future__ import annotations

import json

import pytest
from datatrove.data import Document

from puyu.corpus.filters import BadWordsFilter, LanguageID, LengthFilter, PIIScrubber, detect_language, heuristic_filter
from puyu.corpus.text import TOKENIZER
from puyu.errors import ConfigError
from tests.conftest import DATASETS

PRETRAIN = DATASETS / "pretrain"
KINDS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")


def c4(index: int) -> str:
    with open(PRETRAIN / "llamafactory_text" / "c4_demo.jsonl") as f:
        return json.loads(f.readlines()[index])["text"]


def classic(index: int) -> str:
    with open(PRETRAIN / "chinese_classics" / "chinese_classics.jsonl") as f:
        return json.loads(f.readlines()[index])["text"]


def verdict(step, text: str, language: str | None = None):
    """(kept, reason, text after the step) of one document."""
    doc = Document(text=text, id="x", metadata={"language": language} if language else {})
    result = step.filter(doc)
    kept, reason = (result, None) if isinstance(result, bool) else result
    return kept, reason, doc.text


def test_words_and_sentences_in_both_scripts():
    assert TOKENIZER.word_tokenize("It's 3.5 km, 我们去北京大学。") == ["It's", "3.5", "km", ",", "我们", "去", "北京大学", "。"]
    assert TOKENIZER.sent_tokenize("One. Two? 三。四！\nfive") == ["One.", "Two?", "三。", "四！", "five"]


def test_language_id_is_offline_and_reads_classical_chinese_as_chinese():
    assert detect_language(c4(0))[0] == "en"
    assert detect_language(classic(525))[0] == "zh"  # fastText alone says "ja": Han without kana is Chinese
    assert detect_language("Le chat dort sur le canapé depuis ce matin, et il ne veut pas bouger.")[0] == "fr"
    step = LanguageID(["en", "zh"])
    assert verdict(step, c4(0))[:2] == (True, None)
    assert verdict(step, "Le chat dort sur le canapé depuis ce matin, et il ne veut pas bouger du tout.")[:2] == (False, "other_language")


def test_length_counts_non_space_characters():
    step = LengthFilter(min_chars=10, max_chars=20)
    assert verdict(step, "a b c d e f g h i")[1] == "too_short"  # 9 characters and 8 spaces
    assert verdict(step, "黄河远上白云间，一片孤城万仞山。")[0]
    assert verdict(step, "x" * 21)[1] == "too_long"


@pytest.mark.parametrize("index", [0, 1, 2, 4])
def test_real_english_documents_pass_every_heuristic_unchanged(index):
    for kind in KINDS:
        assert verdict(heuristic_filter(kind, ["en", "zh"]), c4(index), "en") == (True, None, c4(index)), kind


def test_real_chinese_document_passes_with_chinese_thresholds_but_not_english_ones():
    text = classic(0)  # 离骚: long, classical, punctuated
    for kind in KINDS:
        assert verdict(heuristic_filter(kind, ["en", "zh"]), text, "zh")[:2] == (True, None), kind
    # English Gopher thresholds (words of 3-10 letters, English stop words) reject it: why Chinese has its own
    assert verdict(heuristic_filter("gopher_quality", ["en"]), text, "en")[:2] == (False, "gopher_below_avg_threshold")
    assert verdict(heuristic_filter("gopher_quality", ["en"]), text)[:2] == (True, None)  # unlabelled (--skip language): by script


def test_heuristics_drop_what_they_target():
    repetition, quality = heuristic_filter("gopher_repetition", ["en", "zh"]), heuristic_filter("gopher_quality", ["en", "zh"])
    c4_filter, fineweb = heuristic_filter("c4_quality", ["en", "zh"]), heuristic_filter("fineweb_quality", ["en", "zh"])
    repeated = "\n".join([c4(0).splitlines()[0]] * 6)
    assert verdict(repetition, repeated, "en")[:2] == (False, "dup_line_frac")
    assert verdict(repetition, "\n".join(["床前明月光，疑是地上霜。举头望明月，低头思故乡。"] * 6), "zh")[:2] == (False, "dup_line_frac")
    assert verdict(quality, "Buy now. Cheap. Best price.", "en")[:2] == (False, "gopher_short_doc")
    assert verdict(c4_filter, c4(0) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "en")[:2] == (False, "lorem_ipsum")
    assert verdict(c4_filter, c4(0) + "\nThe config is { a: 1 } in this case here.", "en")[:2] == (False, "curly_bracket")
    kept, _, text = verdict(c4_filter, c4(0) + "\nPlease enable Javascript to view this page.", "en")
    assert kept and "Javascript" not in text and text == c4(0)  # C4 drops the line, keeps the document
    menu = "\n".join(["Home", "About us", "Contact", "Products", "Login", "Cart"] * 3 + [c4(0).splitlines()[0]])
    assert verdict(fineweb, menu, "en")[:2] == (False, "line_punct_ratio")


def test_bad_words_match_english_words_and_chinese_substrings():
    step = BadWordsFilter(["darn", "坏词"])
    assert verdict(step, "what a darn shame")[:2] == (False, "bad_words")
    assert verdict(step, "the darning needle")[0]  # whole words only
    assert verdict(step, "这里有一个坏词。")[:2] == (False, "bad_words")
    with pytest.raises(ConfigError, match="empty"):
        BadWordsFilter([" ", ""])


def test_pii_scrubbing_of_emails_phones_and_public_ips():
    scrub = PIIScrubber()
    text = ("Mail jane.doe@example.com or call (555) 123-4567, +44 20 7946 0958 or 13812345678; 电话 010-62345678. "
            "Server 8.8.8.8, router 192.168.1.1. It costs $1,234.56 in 2024; order 12345.")
    assert scrub.format(text) == ("Mail <EMAIL> or call <PHONE>, <PHONE> or <PHONE>; 电话 <PHONE>. "
                                  "Server <IP>, router 192.168.1.1. It costs $1,234.56 in 2024; order 12345.")
    assert {k: v.total for k, v in scrub.stats.stats.items()} == {"scrubbed_email": 1, "scrubbed_ip": 1, "scrubbed_phone": 1}
