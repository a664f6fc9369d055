"""Answer extraction, per-example metrics and their aggregation.

Extraction rules (a task's ``extract:``): ``none`` (the stripped text),
``regex`` (first match of ``pattern``, its first non-empty group; ``[invalid]``
when nothing matches), ``numeric`` (``pattern`` first, else the last number in
the text; commas, ``$`` and a trailing ``.0`` are dropped, as GSM8K scoring
does), ``choice`` (the option letter: "answer is (B)", "答案是B", else the
first standalone letter among ``letters``).

Metrics: ``acc``/``acc_norm`` (argmax of the loglikelihoods, raw and divided by
the choice's length in characters, as lm-eval), ``mc2`` (TruthfulQA: the
normalized probability of the true answers), ``exact_match``, ``pass@1``,
``perplexity`` (``exp(-mean ll)``, LAMBADA), ``word_perplexity``,
``byte_perplexity`` and ``bits_per_byte`` (rolling); the judge metrics
``judge_score``, ``judge_score_turnN``, ``judged`` and ``judge_failed`` (MT-Bench,
see :func:`puyu.eval.judge.judge_metric`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from puyu.errors import ConfigError
from puyu.eval.judge import JUDGE_METRIC, judge_metric

INVALID = "[invalid]"
NUMBER = re.compile(r"-?[$0-9.,]*[0-9](?:\.[0-9]+)?")
CORPUS_METRICS = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}


def normalize_number(text: str) -> str:
    """``"$1,234.00"`` -> ``"1234"``; non-numbers come back stripped."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def extract(text: str, rule: dict[str, Any]) -> str:
    """Apply extraction ``rule`` (see the module docstring) to a generated ``text``."""
    kind = rule.get("type", "none")
    if kind == "none":
        return text.strip()
    if kind == "regex":
        match = re.search(rule["pattern"], text, flags=re.DOTALL)
        if not match:
            return INVALID
        groups = [g for g in match.groups() if g] or [match.group(0)]
        return groups[0].strip().strip(rule.get("strip", ""))
    if kind == "numeric":
        if rule.get("pattern"):
            match = re.search(rule["pattern"], text)
            if match:
                return normalize_number(next(g for g in match.groups() if g))
        numbers = NUMBER.findall(text)
        return normalize_number(numbers[-1]) if numbers else INVALID
    if kind == "choice":
        letters = rule.get("letters", "ABCD")
        for pattern in (rf"(?:answer is|答案是|答案为|答案：|答案:)\s*\(?([{letters}])\b", rf"^\s*\(?([{letters}])\b",
                        rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])"):
            match = re.search(pattern, text, flags=re.IGNORECASE if "answer" in pattern else 0)
            if match:
                return match.group(1).upper()
        return INVALID
    raise ConfigError(f"unknown extraction type {kind!r}; use none, regex, numeric or choice")


def answers_match(prediction: str, gold: str, rule: dict[str, Any]) -> bool:
    if rule.get("type") == "numeric":
        return prediction == normalize_number(gold)
    if rule.get("ignore_case"):
        return prediction.strip().lower() == gold.strip().lower()
    return prediction.strip() == gold.strip()


def choice_metrics(lls: list[float], choices: list[str], gold: int, labels: list[int] | None = None) -> dict[str, float]:
    """``acc``, ``acc_norm`` and (with TruthfulQA ``labels``, 1 = true answer) ``mc2`` of one example."""
    best = max(range(len(lls)), key=lambda i: lls[i])
    normed = [ll / max(len(c), 1) for ll, c in zip(lls, choices)]
    best_norm = max(range(len(lls)), key=lambda i: normed[i])
    out = {"acc": float(best == gold), "acc_norm": float(best_norm == gold), "pred": best}
    if labels is not None:
        top = max(lls)
        probs = [math.exp(ll - top) for ll in lls]
        out["mc2"] = sum(p for p, lab in zip(probs, labels) if lab) / sum(probs)
    return out


def rolling_counts(text: str) -> dict[str, int]:
    return {"words": len(re.split(r"\s+", text.strip())), "bytes": len(text.encode("utf-8"))}


def aggregate(records: list[dict[str, Any]], metric: str) -> float:
    """The task-level value of ``metric`` over scored records (means, or corpus-level perplexities)."""
    if not records:
        return float("nan")
    if metric == "perplexity":
        return math.exp(-sum(r["loglikelihood"] for r in records) / len(records))
    if metric in CORPUS_METRICS:
        ll = sum(r["loglikelihood"] for r in records)
        if metric == "word_perplexity":
            return math.exp(-ll / sum(r["words"] for r in records))
        if metric == "byte_perplexity":
            return math.exp(-ll / sum(r["bytes"] for r in records))
        return -ll / sum(r["bytes"] for r in records) / math.log(2)
    if JUDGE_METRIC.fullmatch(metric):
        return judge_metric(records, metric)
    values = [r["metrics"][metric] for r in records if metric in r.get("metrics", {})]
    if not values:
        raise ConfigError(f"metric {metric!r} was not computed for any example; check the task's metrics")
    return sum(values) / len(values)


def is_percentage(metric: str) -> bool:
    """Whether a metric is a rate shown as a percentage in summaries (accuracies, pass rates)."""
    return metric not in CORPUS_METRICS and not JUDGE_METRIC.fullmatch(metric)
