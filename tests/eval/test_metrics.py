"""Extraction rules and metrics on hand-made cases."""

from __future__ import annotations

import math

import pytest

from puyu.errors import ConfigError
from puyu.eval.metrics import INVALID, aggregate, answers_match, choice_metrics, extract, normalize_number

GSM8K = {"type": "numeric", "pattern": r"#### (\-?[0-9.,]+)|[Tt]he answer is \$?(\-?[0-9.,]+)"}


@pytest.mark.parametrize("text, expected", [
    ("He pays 3 * 4 = 12 dollars.\n#### 1,200", "1200"),
    ("So the answer is $45.00.", "45"),
    ("First 3 apples, then 5 more, so 8", "8"),
    ("Total: -2.5 degrees", "-2.5"),
    ("no digits here", INVALID),
])
def test_numeric_extraction(text, expected):
    assert extract(text, GSM8K) == expected


def test_numeric_match_normalizes_gold():
    assert answers_match("1200", "1,200", GSM8K)
    assert not answers_match("12", "1,200", GSM8K)
    assert normalize_number("$3.0") == "3" and normalize_number("abc") == "abc"


@pytest.mark.parametrize("text, expected", [
    (" B", "B"), ("The answer is (C).", "C"), ("答案是D", "D"), ("I think A is right", "A"), ("none", INVALID),
])
def test_choice_extraction(text, expected):
    assert extract(text, {"type": "choice", "letters": "ABCD"}) == expected


def test_regex_extraction_bbh_style():
    rule = {"type": "regex", "pattern": r"[Tt]he answer is (.*?)(?:\.\s*$|\.\n|$)", "strip": "."}
    assert extract("Let's see. So the answer is (B).", rule) == "(B)"
    assert extract("... So the answer is } ] >.", rule) == "} ] >"
    assert extract("no conclusion", rule) == INVALID


def test_unknown_extraction_type_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown extraction type"):
        extract("x", {"type": "magic"})


def test_acc_and_acc_norm_differ_on_length():
    # choice 1 has the best raw loglikelihood; choice 0 is best per character
    metrics = choice_metrics([-10.0, -6.0], ["a much longer answer", "short"], gold=0)
    assert metrics["acc"] == 0.0 and metrics["acc_norm"] == 1.0 and metrics["pred"] == 1


def test_mc2_is_the_true_answers_share_of_probability():
    lls = [math.log(0.5), math.log(0.3), math.log(0.2)]
    metrics = choice_metrics(lls, ["a", "b", "c"], gold=0, labels=[1, 1, 0])
    assert metrics["mc2"] == pytest.approx(0.8)


def test_corpus_level_aggregations():
    records = [{"loglikelihood": -10.0, "words": 5, "bytes": 20}, {"loglikelihood": -6.0, "words": 3, "bytes": 12}]
    assert aggregate(records, "word_perplexity") == pytest.approx(math.exp(16 / 8))
    assert aggregate(records, "byte_perplexity") == pytest.approx(math.exp(16 / 32))
    assert aggregate(records, "bits_per_byte") == pytest.approx(16 / 32 / math.log(2))
    assert aggregate(records, "perplexity") == pytest.approx(math.exp(8))
    assert aggregate([{"metrics": {"acc": 1.0}}, {"metrics": {"acc": 0.0}}], "acc") == 0.5
