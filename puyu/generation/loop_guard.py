"""Loop guard: notice that a reply has started to repeat itself, so generation can stop.

Small models fall into loops ("The server is [5]. The server is [6]. ..."):
the same run of words over and over, often with a changing number in it.
Contract: the text is read as *units* (words, numbers and punctuation marks,
lowercased), with every number replaced by one placeholder, so ``[5]`` and
``[6]`` are the same unit and a loop of citations with changing numbers is
caught like any other.  :func:`find_loop` returns where a text first holds
the same ``ngram`` units for the ``repeats``-th time; :class:`LoopGuard`
answers the same question incrementally over a growing text (one call per
generated token), counting only units that are complete.

``SamplingParams.loop_guard = n`` turns it on for any generation (local,
engine, server): the reply ends (finish reason ``stop``) as soon as any run of
``n`` units occurs for the third time.  Periods up to ``n`` units are caught
after about ``n + 2 * period`` units; a loop with a longer period needs a
larger ``n``.
"""

from __future__ import annotations

import re
from collections import Counter, deque

CJK = "\u3400-\u9fff\uf900-\ufaff"
UNIT = re.compile(rf"[{CJK}]|\d+|[^\W\d_{CJK}]+|_+|[^\w\s]")  # a Chinese character is a unit of its own
NUMBER = "<n>"
SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s)|[。！？]|\n")  # "3." opens a list item, it ends nothing
REPEATS = 3


def _unit(match: re.Match) -> str:
    return NUMBER if match.group()[0].isdigit() else match.group().lower()


def units(text: str) -> list[tuple[str, int]]:
    """``(unit, start offset)`` of each unit of ``text`` (numbers as one placeholder)."""
    return [(_unit(m), m.start()) for m in UNIT.finditer(text)]


def find_loop(text: str, ngram: int, repeats: int = REPEATS) -> int | None:
    """Offset in ``text`` where a run of ``ngram`` units starts for the ``repeats``-th time; None when none does.

    Cutting ``text`` at the start of the run's *second* occurrence keeps one copy: see :func:`trim_loop`.
    """
    found = _scan(units(text), ngram, repeats)
    return None if found is None else found[1]


def trim_loop(text: str, ngram: int, repeats: int = REPEATS) -> str:
    """``text`` without its loop: cut before the second occurrence of the looping run, at the last sentence end before
    that when there is one (unchanged when it has no loop)."""
    found = _scan(units(text), ngram, repeats)
    if found is None:
        return text
    ends = [m.end() for m in SENTENCE_END.finditer(text, 0, found[0])]
    return text[: ends[-1] if ends else found[0]].rstrip()


def _scan(items: list[tuple[str, int]], ngram: int, repeats: int) -> tuple[int, int] | None:
    """``(offset of the 2nd occurrence, offset of the repeats-th occurrence)`` of the first looping run."""
    seen: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(items) - ngram + 1):
        starts = seen.setdefault(tuple(u for u, _ in items[i:i + ngram]), [])
        starts.append(items[i][1])
        if len(starts) == repeats:
            return starts[1], starts[-1]
    return None


class LoopGuard:
    """Incremental :func:`find_loop` over a growing text.

    Args:
        ngram: units per run (at least 2).
        repeats: occurrences of one run that make a loop.
    """

    def __init__(self, ngram: int, repeats: int = REPEATS):
        self.ngram, self.repeats = ngram, repeats
        self.window: deque[str] = deque(maxlen=ngram)
        self.counts: Counter[tuple[str, ...]] = Counter()
        self.read = 0  # characters of the text whose units have been counted

    def looping(self, text: str) -> bool:
        """Count the units of ``text`` (the whole reply so far) not counted yet; True once a run occurred ``repeats`` times.

        A unit that reaches the end of ``text`` waits for the next call: it may still grow ("serv" -> "server").
        """
        found = list(UNIT.finditer(text, self.read))
        if found and found[-1].end() == len(text):
            found.pop()
        for match in found:
            self.read = match.end()
            self.window.append(_unit(match))
            if len(self.window) == self.ngram:
                key = tuple(self.window)
                self.counts[key] += 1
                if self.counts[key] >= self.repeats:
                    return True
        return False
