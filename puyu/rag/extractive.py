"""Extractive answers: the sentences of the retrieved sources that best answer the question, cited.

Contract: :func:`extract_answer` splits each numbered source into sentences
(:func:`~puyu.rag.splitter.sentence_spans`: paragraph sentences, a fenced code
block as one), scores each against the question and returns the best one or
two as ``(source number, sentence)``, each exactly as it appears in its source;
:func:`format_extract` writes them as ``sentence [n]``.  Nothing is generated,
so every sentence exists verbatim in the chunk it cites and every citation is
valid; it needs no language model at all.  (A quoted sentence may hold
bracketed numbers of its own, e.g. Wikipedia footnotes; the answer's citations
are the appended numbers, never those.)

Score of a sentence: cosine similarity of its embedding to the question's
(weighted by :func:`~puyu.rag.retrieval.embedding_weight`: 0 when the embedder
cannot read the question's language, so keywords decide), plus ``KEYWORD_WEIGHT`` times the share of the question's keywords
(:func:`~puyu.rag.store.keyword_tokens`) it contains, plus a small bonus for a
better-ranked source.  A second sentence is added when it scores within
``SECOND_WITHIN`` of the best one.  Sentences of fewer than three words
(list markers, stray labels) are not candidates.
"""

from __future__ import annotations

import re

import numpy as np

from puyu.model.embedder import Embedder
from puyu.rag.retrieval import Hit, embedding_weight
from puyu.rag.splitter import sentence_spans
from puyu.rag.store import keyword_tokens

KEYWORD_WEIGHT = 0.3
RANK_BONUS = 0.02  # per place above the last source
SECOND_WITHIN = 0.05
MAX_SENTENCES = 2
MIN_WORDS = 3
WORD = re.compile(r"\w+")
CJK_RUN = re.compile(r"[\u3400-\u9fff]{6}")  # Chinese has no spaces: six characters make a sentence worth quoting


def candidates(sources: list[Hit]) -> list[tuple[int, str]]:
    """``(source number, sentence)`` for every candidate sentence of the numbered sources (all sentences when none is long
    enough); a sentence that recurs (overlapping chunks, boilerplate) is kept once, at its first source."""
    every = {}
    for number, hit in enumerate(sources, 1):
        for start, end in sentence_spans(hit.text):
            every.setdefault(hit.text[start:end], number)
    long_enough = [(n, s) for s, n in every.items() if len(WORD.findall(s)) >= MIN_WORDS or CJK_RUN.search(s)]
    return long_enough or [(n, s) for s, n in every.items()]


def extract_answer(question: str, sources: list[Hit], embedder: Embedder, max_sentences: int = MAX_SENTENCES) -> list[tuple[int, str]]:
    """The best supporting sentences of ``sources`` for ``question`` as ``(source number, sentence)``, in reading order
    (see the module docstring); empty only when the sources hold no text."""
    found = candidates(sources)
    if not found:
        return []
    vectors = embedder.embed([question] + [sentence for _, sentence in found])
    keywords = set(keyword_tokens(question))
    scores = embedding_weight(embedder, question) * (vectors[1:] @ vectors[0])
    for i, (number, sentence) in enumerate(found):
        if keywords:
            scores[i] += KEYWORD_WEIGHT * len(keywords & set(keyword_tokens(sentence))) / len(keywords)
        scores[i] += RANK_BONUS * (len(sources) - number)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    chosen = [order[0]] + [i for i in order[1:max_sentences] if scores[i] >= scores[order[0]] - SECOND_WITHIN]
    return [found[i] for i in sorted(chosen)]


def format_extract(parts: list[tuple[int, str]]) -> str:
    """``sentence [n]`` for each part, joined by a space (by a blank line when a part spans lines, e.g. code)."""
    texts = [f"{sentence} [{number}]" for number, sentence in parts]
    return ("\n\n" if any("\n" in text for text in texts) else " ").join(texts)
