"""Answers with numbered, checked citations.

Contract: :func:`answer_stream` turns a question and retrieved hits into an
:class:`AnswerStream`: iterate it for the reply's text pieces (as the model
writes them), then read ``.answer`` for the checked :class:`Answer`.
Steps: keep the hits whose cosine similarity reaches ``min_similarity``; when
none does, reply that the knowledge base has nothing relevant (no
generation, ``refused=True``).  Otherwise number the hits [1]..[n] in a prompt
built from ``template`` (``{context}`` and ``{question}``), drop the last hits
while the prompt does not fit the model's window (when the client knows it:
``context_length`` and ``prompt_ids``), and stream the reply with
``client.stream_chat(messages, params=...)`` (a :class:`~puyu.client.ChatClient`:
:class:`~puyu.client.LocalClient` or :class:`~puyu.client.OpenAIClient`).  Finally every ``[n]`` / ``[n, m]`` in the reply is
checked: numbers that name a hit become :class:`Citation` objects; others are
out of range and are flagged (``[7?]``) or dropped; a reply with no valid
citation has ``uncited=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from puyu.client import ChatClient
from puyu.errors import ConfigError, ContextLengthError
from puyu.generation import SamplingParams
from puyu.rag.retrieval import Hit

DEFAULT_TEMPLATE = (
    "Sources:\n{context}\n\nUsing only these sources, answer the question in one or two sentences. End each sentence "
    "with the number of its source in square brackets, like [1]. If the sources do not say, answer that you do not "
    "know.\n\nQuestion: {question}"
)
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
    """

    question: str
    text: str
    sources: list[Hit] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)
    refused: bool = False

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
    """The reply's text pieces as they are generated; ``.answer`` once the iteration is over."""

    def __init__(self, question: str, sources: list[Hit], pieces: Iterator[str], policy: str):
        self.question, self.sources, self._pieces, self.policy = question, sources, pieces, policy
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        parts = []
        for piece in self._pieces:
            parts.append(piece)
            yield piece
        self.answer = self._finish("".join(parts))

    def _finish(self, raw: str) -> Answer:
        if not self.sources:
            return Answer(self.question, raw, refused=True)
        text, citations, invalid = check_citations(raw, self.sources, self.policy)
        return Answer(self.question, text, self.sources, citations, invalid)

    def result(self) -> Answer:
        """Consume what is left and return the checked answer."""
        for _ in self:
            pass
        return self.answer


def build_messages(question: str, hits: list[Hit], template: str, system: str | None = None) -> list[dict[str, str]]:
    if "{context}" not in template or "{question}" not in template:
        raise ConfigError("the prompt template must contain {context} and {question}")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": template.replace("{context}", format_context(hits)).replace("{question}", question)}]


def answer_stream(question: str, hits: list[Hit], client: ChatClient, params: SamplingParams | None = None, *,
                  min_similarity: float = 0.25, template: str = DEFAULT_TEMPLATE, system: str | None = None,
                  policy: str = "flag") -> AnswerStream:
    """Generate a cited answer from ``hits`` with ``params`` (default :class:`SamplingParams`); see the module docstring."""
    params = params or SamplingParams()
    sources = [hit for hit in hits if hit.similarity >= min_similarity]
    if not sources:
        return AnswerStream(question, [], iter([NOTHING_RELEVANT]), policy)
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
    return AnswerStream(question, sources, client.stream_chat(messages, params=params), policy)
