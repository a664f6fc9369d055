"""Answers with numbered, checked citations: generated, extracted, or generated with an extractive fallback.

Contract: :func:`answer_stream` turns a question and retrieved hits into an
:class:`AnswerStream`: iterate it for the reply's text pieces, then read
``.answer`` for the checked :class:`Answer`.
Steps: keep the hits whose cosine similarity reaches ``min_similarity``; when
none does, reply that the knowledge base has nothing relevant (no
generation, ``refused=True``).  Otherwise answer by ``mode``:

- ``generative``: number the hits [1]..[n] in a prompt built from ``template``
  (``{context}`` and ``{question}``), drop the last hits while the prompt does
  not fit the model's window (when the client knows it: ``context_length`` and
  ``prompt_ids``), and stream the reply with ``client.stream_chat(messages,
  params=...)`` as the model writes it.  Answers always run with the loop guard
  (:mod:`puyu.generation.loop_guard`; ``ANSWER_LOOP_GUARD`` words unless
  ``params.loop_guard`` sets another length); a reply that looped is cut after
  its first copy of the repeated run and marked ``looped``.
- ``extractive``: the best supporting sentences of the sources, verbatim, each
  with its source's number (:mod:`puyu.rag.extractive`); no model is called.
- ``auto``: generate, and fall back to the extractive answer when the reply
  looped, cites no source or cites a number that names none (``fallback``
  says which); the text comes as one piece once it is decided.

Finally every ``[n]`` / ``[n, m]`` in the reply is checked: numbers that name
a hit become :class:`Citation` objects; others are out of range and are flagged
(``[7?]``) or dropped; a reply with no valid citation has ``uncited=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from puyu.client import ChatClient
from puyu.errors import ConfigError, ContextLengthError
from puyu.generation import SamplingParams
from puyu.generation.loop_guard import find_loop, trim_loop
from puyu.model.embedder import Embedder
from puyu.rag.extractive import extract_answer, format_extract
from puyu.rag.retrieval import Hit

# For small models: the question before and after the sources (a 135M model loses it behind 1,000 tokens of
# context), one short sentence, one citation.  On 30 NQ questions with the built-in model (k = 5) this template beat
# the earlier "sources first, one or two sentences, say you do not know" one (gold answer contained 0.30 vs 0.27,
# 4.1 vs 14.9 s per answer) and one with an example answer (0.20: the model copied the example's form).
DEFAULT_TEMPLATE = (
    "Question: {question}\n\nSources:\n{context}\n\nAnswer the question in one short sentence using the sources. "
    "Put the source number in brackets after it, like [1].\n\nQuestion: {question}"
)
MODES = ("generative", "extractive", "auto")
DEFAULT_MODE = "auto"
ANSWER_LOOP_GUARD = 8  # words per run; see puyu.generation.loop_guard
ANSWER_TOKENS = 160  # one or two cited sentences, with room for a short command
ANSWER_PARAMS = SamplingParams(max_new_tokens=ANSWER_TOKENS, temperature=0.0, loop_guard=ANSWER_LOOP_GUARD)
NOTHING_RELEVANT = "I found nothing relevant to this question in the knowledge base, so I cannot answer it from its sources."
CITATION = re.compile(r"( ?)\[(\d+(?:\s*,\s*\d+)*)\]")
POLICIES = ("flag", "drop")


@dataclass
class Citation:
    """A citation number in the answer and the hit it points at."""

    number: int
    hit: Hit


@dataclass
class Answer:
    """A checked answer.

    Attributes:
        question: the question asked.
        text: the reply, with out-of-range citations flagged or dropped.
        sources: the hits given to the model, numbered from 1.
        citations: the distinct valid citations, in order of first use.
        invalid: citation numbers that pointed at no source.
        refused: True when retrieval found nothing relevant and nothing was generated.
        mode: how the text was made: ``generative`` or ``extractive`` (meaningless for a refusal).
        looped: the generated reply repeated itself (the loop guard stopped it; the text keeps one copy).
        fallback: why ``auto`` replaced the generated reply with the extractive answer (None when it did not).
    """

    question: str
    text: str
    sources: list[Hit] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)
    refused: bool = False
    mode: str = "generative"
    looped: bool = False
    fallback: str | None = None

    @property
    def uncited(self) -> bool:
        """An answer was generated but cites no source."""
        return not self.refused and not self.citations

    def references(self) -> str:
        """One line per cited source: ``[n] location``."""
        return "\n".join(f"[{c.number}] {c.hit.location()}" for c in self.citations)


def format_context(hits: list[Hit]) -> str:
    """The numbered sources of the prompt; short labels (file name, headings, page) keep tokens for the text."""
    return "\n\n".join(f"[{n}] ({hit.label()})\n{hit.text}" for n, hit in enumerate(hits, 1))


def check_citations(text: str, sources: list[Hit], policy: str = "flag") -> tuple[str, list[Citation], list[int]]:
    """Map ``[n]`` citations in ``text`` to ``sources``; flag (``[n?]``) or drop the numbers that name none.

    Returns:
        ``(checked text, valid citations in order of first use, invalid numbers)``.
    """
    if policy not in POLICIES:
        raise ConfigError(f"citation policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    cited: dict[int, Citation] = {}
    invalid: list[int] = []

    def replace(match: re.Match) -> str:
        kept = []
        for number in (int(n) for n in match.group(2).split(",")):
            if 1 <= number <= len(sources):
                cited.setdefault(number, Citation(number, sources[number - 1]))
                kept.append(f"[{number}]")
            else:
                invalid.append(number)
                kept.append(f"[{number}?]" if policy == "flag" else "")
        return match.group(1) + "".join(kept) if any(kept) else ""  # a dropped citation takes its leading space along

    return CITATION.sub(replace, text), list(cited.values()), invalid


class AnswerStream:
    """The reply's text pieces (as generated, or all at once for ``extractive`` and ``auto``); ``.answer`` once the iteration is over.

    Args:
        question: the question.
        sources: the numbered hits the reply may cite.
        pieces: the generated text, piece by piece (nothing for ``extractive``).
        policy: what to do with out-of-range citations (``flag`` or ``drop``).
        mode: ``generative``, ``extractive`` or ``auto``.
        extract: the extractive answer's ``(source number, sentence)`` parts, for ``extractive`` and ``auto``'s fallback.
        loop_guard: words per repeated run that count as a loop.
    """

    def __init__(self, question: str, sources: list[Hit], pieces: Iterator[str], policy: str, mode: str = "generative",
                 extract: Callable[[], list[tuple[int, str]]] | None = None, loop_guard: int = ANSWER_LOOP_GUARD):
        self.question, self.sources, self._pieces, self.policy = question, sources, pieces, policy
        self.mode, self._extract, self.loop_guard = mode, extract, loop_guard
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        parts = []
        for piece in self._pieces:
            parts.append(piece)
            if self.mode == "generative":
                yield piece
        self.answer = self._finish("".join(parts))
        if self.mode != "generative":
            yield self.answer.text

    def _finish(self, raw: str) -> Answer:
        if not self.sources:
            return Answer(self.question, raw, refused=True)
        if self.mode == "extractive":
            return self._extracted()
        looped = find_loop(raw, self.loop_guard) is not None
        text, citations, invalid = check_citations(trim_loop(raw, self.loop_guard), self.sources, self.policy)
        answer = Answer(self.question, text, self.sources, citations, invalid, looped=looped)
        reason = degenerate(answer)
        if self.mode == "auto" and reason:
            return replace(self._extracted(), looped=looped, fallback=reason)
        return answer

    def _extracted(self) -> Answer:
        """The extractive answer: its citations are the numbers appended to the quotes, not any bracket inside them."""
        parts = self._extract()
        cited = {number: Citation(number, self.sources[number - 1]) for number, _ in sorted(parts)}
        return Answer(self.question, format_extract(parts), self.sources, list(cited.values()), mode="extractive")

    def result(self) -> Answer:
        """Consume what is left and return the checked answer."""
        for _ in self:
            pass
        return self.answer


def degenerate(answer: Answer) -> str | None:
    """Why a generated answer cannot be trusted as it is (None when it can): it looped, cites nothing, or cites no source."""
    if answer.refused:
        return None
    if answer.looped:
        return "the reply repeated itself"
    if answer.invalid:
        return f"the reply cited {sorted(set(answer.invalid))}, which name no source"
    if not answer.citations:
        return "the reply cited no source"
    return None


def build_messages(question: str, hits: list[Hit], template: str, system: str | None = None) -> list[dict[str, str]]:
    if "{context}" not in template or "{question}" not in template:
        raise ConfigError("the prompt template must contain {context} and {question}")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": template.replace("{context}", format_context(hits)).replace("{question}", question)}]


def answer_stream(question: str, hits: list[Hit], client: ChatClient | None, params: SamplingParams | None = None, *,
                  min_similarity: float = 0.25, template: str = DEFAULT_TEMPLATE, system: str | None = None,
                  policy: str = "flag", mode: str = "generative", embedder: Embedder | None = None) -> AnswerStream:
    """A cited answer from ``hits`` (see the module docstring).

    Args:
        client: the chat model (not used, and may be None, for ``extractive``).
        params: sampling for the generated reply (default ``ANSWER_PARAMS``: greedy, 160 tokens, loop guard on).
        mode: ``generative``, ``extractive`` or ``auto``.
        embedder: scores sentences for ``extractive`` and ``auto`` (the knowledge base's embedder).
    """
    if mode not in MODES:
        raise ConfigError(f"answer mode must be one of {', '.join(MODES)}, got {mode!r}")
    if policy not in POLICIES:
        raise ConfigError(f"citation policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if mode != "generative" and embedder is None:
        raise ConfigError(f"the {mode} answer mode needs the knowledge base's embedder to pick sentences")
    if mode != "extractive" and client is None:
        raise ConfigError(f"the {mode} answer mode needs a chat model; use mode='extractive' to answer without one")
    params = params or ANSWER_PARAMS
    if not params.loop_guard:
        params = replace(params, loop_guard=ANSWER_LOOP_GUARD)
    sources = [hit for hit in hits if hit.similarity >= min_similarity]
    if not sources:
        return AnswerStream(question, [], iter([NOTHING_RELEVANT]), policy, mode)

    def extract() -> list[tuple[int, str]]:  # over the sources the prompt kept, so that the numbers match
        return extract_answer(question, sources, embedder)

    if mode == "extractive":
        return AnswerStream(question, sources, iter([]), policy, mode, extract)
    messages = build_messages(question, sources, template, system)
    window = getattr(client, "context_length", None)
    if window is not None:  # drop the weakest sources until the prompt and the reply fit
        budget = window - params.max_new_tokens
        while len(sources) > 1 and len(client.prompt_ids(messages)) > budget:
            sources = sources[:-1]
            messages = build_messages(question, sources, template, system)
        if len(client.prompt_ids(messages)) > budget:
            raise ContextLengthError(f"the question with even one source does not fit the model's {window}-token window "
                                     "with room for the reply; build the knowledge base with smaller chunks or lower max_new_tokens")
    return AnswerStream(question, sources, client.stream_chat(messages, params=params), policy, mode, extract, params.loop_guard)
