"""Retrieval and answer quality of a knowledge base on a QA file.

Contract: :func:`load_qa` reads a JSONL file of questions; :func:`evaluate`
searches each question and reports recall@k (a gold chunk among the first
``k``) and MRR@``mrr_k`` (1 / rank of the first gold chunk, 0 past ``mrr_k``);
with a generator it also answers each question and reports SQuAD-style exact
match and token F1 against the answer and its aliases.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from puyu.data.jsonl import read_jsonl
from puyu.errors import ConfigError
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


def evaluate(kb, items: list[QAItem], *, k: int = 5, mrr_k: int = 10, generator=None, show_progress: bool = False,
             search: dict[str, Any] | None = None, **answer_options: Any) -> dict[str, Any]:
    """Scores of ``kb`` on ``items``; answers too when ``generator`` is given (keywords go to ``KnowledgeBase.ask``)."""
    from tqdm import tqdm

    ranked, em, f1 = [], 0.0, 0.0
    answered = 0
    for item in tqdm(items, desc="questions", unit="q", disable=not show_progress):
        ranked.append(kb.search(item.question, max(k, mrr_k), **(search or {})))
        if generator is not None and item.answers:
            reply = kb.ask(item.question, generator, k=k, search=search, **answer_options).text
            em += exact_match(reply, item.answers)
            f1 += token_f1(reply, item.answers)
            answered += 1
    scores: dict[str, Any] = {"questions": len(items), **retrieval_scores(ranked, items, k, mrr_k)}
    if generator is not None:
        scores.update({"answered": answered, "exact_match": em / max(answered, 1), "f1": f1 / max(answered, 1)})
    return scores
