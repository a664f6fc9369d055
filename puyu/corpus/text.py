"""Words and sentences of English and Chinese text, for the quality filters and MinHash shingles.

Contract: :class:`BilingualWordTokenizer` is a datatrove ``WordTokenizer``
that every datatrove step taking ``language=`` accepts in place of a language
code.  Runs of Chinese characters are cut into words by jieba; everything else
is split into words (letters/digits, inner apostrophes and hyphens kept) and
single punctuation marks, as spaCy's rule-based tokenizer does for English.
Sentences end at ``. ! ? 。 ！ ？ …`` (plus closing quotes) or a line break.

Why by hand: datatrove assigns English and Chinese to spaCy tokenizers
(``spacy.blank``, with jieba inside for Chinese), which would add spaCy and its
dependency chain (~100 MB) for what is rule-based splitting; one tokenizer for
both scripts also lets a mixed English/Chinese document be measured in one
unit.  jieba is already a puyu dependency (the knowledge base's BM25).
"""

from __future__ import annotations

import functools
import logging
import re

from datatrove.utils.word_tokenizers import WordTokenizer

CJK = "\u3400-\u9fff\uf900-\ufaff"  # as puyu.generation.loop_guard's; importing it would load torch in every worker
WORD = re.compile(rf"(?P<zh>[{CJK}]+)|\d+(?:[.,:]\d+)+|[^\W{CJK}]+(?:['’\-][^\W{CJK}]+)*|[^\w\s]")
SENTENCE = re.compile(r"[^\n]*?(?:[.!?。！？…]+[\"'”’」』）)]*(?=\s|$|[^.!?。！？…])|\n|$)")
HAN = re.compile(rf"[{CJK}]")
KANA = re.compile(r"[\u3040-\u30ff]")


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it announces loading its dictionary on stderr otherwise
    jieba.initialize()
    return jieba


class BilingualWordTokenizer(WordTokenizer):
    """English words and punctuation by rule, Chinese words by jieba (see the module docstring)."""

    def __init__(self):
        super().__init__("en+zh")

    def word_tokenize(self, text: str) -> list[str]:
        words = []
        for match in WORD.finditer(text):
            if match.group("zh"):
                words.extend(_jieba().lcut(match.group("zh"), HMM=False))
            else:
                words.append(match.group())
        return words

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for match in SENTENCE.finditer(text):
            start, end = match.span()
            while start < end and text[start].isspace():
                start += 1
            stop = end
            while stop > start and text[stop - 1].isspace():
                stop -= 1
            if stop > start:
                spans.append((start, stop))
        return spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.span_tokenize(text)]

    def __reduce__(self):  # jieba stays out of pickles (datatrove ships steps to worker processes and Ray)
        return (BilingualWordTokenizer, ())

    def __eq__(self, other):
        return isinstance(other, BilingualWordTokenizer)

    def __hash__(self):
        return hash(BilingualWordTokenizer)


TOKENIZER = BilingualWordTokenizer()


def han_ratio(text: str) -> float:
    """Share of Chinese characters among the non-space characters (0 for an empty text)."""
    chars = len(text) - sum(c.isspace() for c in text)
    return len(HAN.findall(text)) / chars if chars else 0.0


def has_kana(text: str) -> bool:
    """True when the text holds Japanese kana (written Japanese always does; Chinese never)."""
    return KANA.search(text) is not None
