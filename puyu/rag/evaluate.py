"""Retrieval and answer quality of a knowledge base on a QA file.

Contract: :func:`load_qa` reads a JSONL file of questions; :func:`evaluate`
searches each question and reports recall@k (a gold chunk among the first
``k``) and MRR@``mrr_k`` (1 / rank of the first gold chunk, 0 past ``mrr_k``);
with answer modes (``generative``, ``extractive``, ``auto``; see
:mod:`puyu.rag.answer`) it also answers each question with an answer in each
mode and reports, per mode: SQuAD-style exact match and token F1 and
``contains`` (the normalized gold answer or an alias occurs in the normalized
reply), all with citation marks removed; ``cited`` (share of answers with at
least one valid citation); ``degenerate`` (share that looped or cited a number
naming no source); ``fallback`` (share where ``auto`` used the extractive
answer) and ``seconds`` (mean time per answer).  ``auto`` reuses the
generative answer of the same question, so comparing modes costs one
generation per question.

A QA line is ``{"question", "answer"?, "aliases"?, "gold_passage_id"?, "source"?, "section"?}``.
A retrieved chunk is gold, by the first rule the line allows:
``gold_passage_id`` equals the chunk's JSONL record id; else ``source`` is a
suffix of the chunk's path (and ``section``, when given, is in its heading
path); else the chunk's text contains the answer or an alias
(case-insensitive).
"""

from __future__ import annotations

import collections
import re
import string
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from puyu.data.jsonl import read_jsonl
from puyu.errors import ConfigError
from puyu.rag.answer import CITATION, MODES, Answer, degenerate
from puyu.rag.retrieval import Hit


@dataclass
class QAItem:
    question: str
    answers: list[str] = field(default_factory=list)
    gold_id: str | None = None
    source: str | None = None
    section: str | None = None

    def is_gold(self, hit: Hit) -> bool:
        if self.gold_id is not None:
            return hit.record_id == self.gold_id
        if self.source is not None:
            return hit.source.replace("\\", "/").endswith(self.source) and (self.section is None or self.section in hit.headings)
        text = hit.text.lower()
        return any(a.lower() in text for a in self.answers if a)


def load_qa(path: str | Path) -> list[QAItem]:
    """The questions of a QA file (see the module docstring).

    Raises:
        DatasetError: a missing file or a line that is not a JSON object.
        ConfigError: a line without a question or without anything to score it by.
    """
    items = []
    for number, row in read_jsonl(Path(path)):
        try:
            answers = [row["answer"]] if row.get("answer") else []
            items.append(QAItem(row["question"], answers + list(row.get("aliases") or []), row.get("gold_passage_id"),
                                row.get("source"), row.get("section")))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: expected a JSON object with a 'question' ({exc})") from exc
        if not (items[-1].answers or items[-1].gold_id or items[-1].source):
            raise ConfigError(f"{path}:{number}: a question needs 'answer', 'gold_passage_id' or 'source' to be scored")
    return items


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, golds: Iterable[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Iterable[str]) -> float:
    """Best token-overlap F1 of ``prediction`` against any gold answer."""
    best = 0.0
    predicted = normalize_answer(prediction).split()
    for gold in golds:
        expected = normalize_answer(gold).split()
        common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def retrieval_scores(ranked: list[list[Hit]], items: list[QAItem], k: int, mrr_k: int) -> dict[str, float]:
    """recall@k and MRR@mrr_k of ranked hit lists against their QA items."""
    recall = reciprocal = 0.0
    for hits, item in zip(ranked, items):
        ranks = [rank for rank, hit in enumerate(hits, 1) if item.is_gold(hit)]
        recall += bool(ranks) and ranks[0] <= k
        reciprocal += 1 / ranks[0] if ranks and ranks[0] <= mrr_k else 0.0
    n = max(len(items), 1)
    return {f"recall@{k}": recall / n, f"mrr@{mrr_k}": reciprocal / n}


def contains(prediction: str, golds: Iterable[str]) -> float:
    """1.0 when a normalized gold answer occurs in the normalized prediction (as whole words)."""
    text = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in text for g in golds))


def answer_modes(kb, question: str, client, modes: Iterable[str], k: int, search: dict[str, Any] | None,
                 **options: Any) -> dict[str, tuple[Answer, float]]:
    """``mode -> (answer, seconds)`` for ``question``; ``auto`` is derived from the generative and extractive answers."""
    modes, found = list(modes), {}
    if {"generative", "auto"} & set(modes):
        start = time.perf_counter()
        found["generative"] = (kb.ask(question, client, k=k, search=search, answer="generative", **options), time.perf_counter() - start)
    reason = degenerate(found["generative"][0]) if "generative" in found else None
    if "extractive" in modes or reason:
        start = time.perf_counter()
        found["extractive"] = (kb.ask(question, None, k=k, search=search, answer="extractive", **options), time.perf_counter() - start)
    if "auto" in modes:
        (generated, seconds), extracted = found["generative"], found.get("extractive")
        fallback = (replace(extracted[0], looped=generated.looped, fallback=reason), seconds + extracted[1]) if reason else None
        found["auto"] = fallback or found["generative"]
    return {mode: found[mode] for mode in modes}


def answer_scores(answers: list[tuple[Answer, float]], golds: list[list[str]]) -> dict[str, float]:
    """The answer metrics of the module docstring over ``(answer, seconds)`` pairs and their gold answers."""
    n = max(len(answers), 1)
    plain = [CITATION.sub("", answer.text) for answer, _ in answers]
    return {"exact_match": sum(exact_match(p, g) for p, g in zip(plain, golds)) / n,
            "f1": sum(token_f1(p, g) for p, g in zip(plain, golds)) / n,
            "contains": sum(contains(p, g) for p, g in zip(plain, golds)) / n,
            "cited": sum(bool(a.citations) for a, _ in answers) / n,
            "degenerate": sum((a.looped and a.mode == "generative") or bool(a.invalid) for a, _ in answers) / n,
            "fallback": sum(a.fallback is not None for a, _ in answers) / n,
            "seconds": sum(s for _, s in answers) / n}


def evaluate(kb, items: list[QAItem], *, k: int = 5, mrr_k: int = 10, generator=None, answers: Iterable[str] = (),
             show_progress: bool = False, search: dict[str, Any] | None = None, **answer_options: Any) -> dict[str, Any]:
    """Scores of ``kb`` on ``items``: retrieval, and answers in each mode of ``answers`` (keywords go to ``KnowledgeBase.ask``).

    ``generator`` is the chat client; ``generative`` and ``auto`` need it.
    """
    from tqdm import tqdm

    answers = list(answers)
    if unknown := [m for m in answers if m not in MODES]:
        raise ConfigError(f"answer modes must be among {', '.join(MODES)}, got {unknown}")
    if generator is None and {"generative", "auto"} & set(answers):
        raise ConfigError("scoring generative or auto answers needs a chat model; extractive answers do not")
    ranked, replies, golds = [], {mode: [] for mode in answers}, []
    for item in tqdm(items, desc="questions", unit="q", disable=not show_progress):
        ranked.append(kb.search(item.question, max(k, mrr_k), **(search or {})))
        if answers and item.answers:
            golds.append(item.answers)
            for mode, reply in answer_modes(kb, item.question, generator, answers, k, search, **answer_options).items():
                replies[mode].append(reply)
    scores: dict[str, Any] = {"questions": len(items), **retrieval_scores(ranked, items, k, mrr_k)}
    if answers:
        scores["answered"] = len(golds)
        scores["answers"] = {mode: answer_scores(replies[mode], golds) for mode in answers}
    return scores
