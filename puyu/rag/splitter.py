"""Structure-aware splitting of documents into chunks sized in tokens.

Contract: ``Splitter(counter, chunk_size, chunk_overlap).split(documents)`` returns
:class:`Chunk` objects, each an exact slice of its document's text with the
source path, the Markdown heading path above it, and its line range (when the
document's lines are the file's) or page: the citation fields of
:class:`Passage`, which retrieved hits share.  No chunk exceeds ``chunk_size`` tokens.

How it cuts, coarse to fine (each level only where the previous one is too big):
Markdown sections at ATX headings (``#`` .. ``######``, not inside code fences;
the heading lines themselves go into the heading path, not the text) are hard
boundaries: no chunk spans two sections.  Inside a section the pieces are the
sentences of each paragraph (after ``. ! ?`` + space, or ``。！？；…`` and a closing quote; see
:func:`sentence_spans`, which the extractive answerer shares) and whole
fenced code blocks; a piece still over ``chunk_size`` tokens is cut into token
windows, between words where it can.  Pieces are packed greedily into chunks;
a new chunk in the same section starts with the last pieces of the previous
one, up to ``chunk_overlap`` tokens, so the overlap works at sentence grain.

Tokens are counted with the embedder's tokenizer (WordPiece for all-MiniLM-L6-v2),
so a chunk fits the embedder's window.  WordPiece pre-splits on whitespace and
punctuation, so the token count of pieces joined by whitespace is the sum of
their counts; packing relies on that.  Written by hand because library
splitters (LangChain's and others) do not keep the line ranges and heading paths
our citations need.
"""

from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from puyu.errors import ConfigError
from puyu.rag.loaders import Document

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
FENCE = re.compile(r"^\s*(```|~~~)")
# After . ! ? and whitespace; after Chinese 。！？；… (with any closing quote or bracket that follows them).
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；…])(?![”’」』）\)。！？；…])|(?<=[。！？；…][”’」』）\)])")


class TokenCounter(Protocol):
    """What the splitter needs from a tokenizer."""

    def count(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` (no special tokens)."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of each token of ``text``."""


@dataclass
class Passage:
    """A piece of a source file and where it is: the text and what a citation needs.

    Attributes:
        text: the text, an exact slice of the document.
        source: absolute path of the file.
        headings: Markdown heading path above the text, outermost first.
        line_start: first file line (None for PDF pages, JSONL records and converted formats, whose lines are not the file's).
        line_end: last file line.
        page: 1-based PDF page.
        record_id: JSONL record id.
    """

    text: str
    source: str
    headings: list[str] = field(default_factory=list)
    line_start: int | None = None
    line_end: int | None = None
    page: int | None = None
    record_id: str | None = None

    def location(self) -> str:
        """Where the text is, e.g. ``docs/en/faq.md § FAQ > Libs, lines 10-14`` (path relative to the cwd when inside it)."""
        try:
            path = os.path.relpath(self.source)
            path = self.source if path.startswith("..") else path
        except ValueError:
            path = self.source
        parts = [path + (f"#{self.record_id}" if self.record_id else "")]
        if self.headings:
            parts[0] += " § " + " > ".join(self.headings)
        if self.page is not None:
            parts.append(f"page {self.page}")
        if self.line_start is not None:
            parts.append(f"line {self.line_start}" if self.line_start == self.line_end else f"lines {self.line_start}-{self.line_end}")
        return ", ".join(parts)

    def label(self) -> str:
        """A short name for prompts: ``faq.md § FAQ > Libs``, ``report.pdf, page 3``, ``passages.jsonl#p7``."""
        label = os.path.basename(self.source) + (f"#{self.record_id}" if self.record_id else "")
        label += " § " + " > ".join(self.headings) if self.headings else ""
        return label + (f", page {self.page}" if self.page is not None else "")


@dataclass
class Chunk(Passage):
    """A :class:`Passage` of a document, ready to embed and cite.

    Attributes:
        tokens: token count of ``text``.
    """

    tokens: int = 0

    def indexed_text(self) -> str:
        """What gets embedded and keyword-indexed: the heading path, then the text."""
        return "\n".join([" > ".join(self.headings), self.text]) if self.headings else self.text


@dataclass
class _Piece:
    start: int
    end: int
    tokens: int


def _sections(text: str, markdown: bool) -> list[tuple[list[str], int, int]]:
    """``(heading path, start, end)`` character ranges of the text under each heading."""
    if not markdown:
        return [([], 0, len(text))]
    sections, stack, start, offset, in_fence = [], [], 0, 0, False  # stack: titles by level, "" where a level is skipped
    for line in text.splitlines(keepends=True):
        if FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else HEADING.match(line.rstrip("\r\n"))
        if match:
            sections.append(([title for title in stack if title], start, offset))
            level = len(match.group(1))
            stack = stack[: level - 1] + [""] * max(0, level - 1 - len(stack)) + [match.group(2).strip()]
            start = offset + len(line)
        offset += len(line)
    sections.append(([title for title in stack if title], start, len(text)))
    return [s for s in sections if text[s[1]:s[2]].strip()]


def _blocks(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Paragraph spans in ``text[start:end]``: runs of non-blank lines; a fenced code block stays whole."""
    blocks, block_start, offset, in_fence = [], None, start, False
    for line in text[start:end].splitlines(keepends=True):
        if FENCE.match(line):
            in_fence = not in_fence
        if line.strip() or in_fence:
            block_start = offset if block_start is None else block_start
        elif block_start is not None:
            blocks.append((block_start, offset))
            block_start = None
        offset += len(line)
    if block_start is not None:
        blocks.append((block_start, end))
    return [_strip(text, a, b) for a, b in blocks if text[a:b].strip()]


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = [start] + [m.end() for m in SENTENCE_END.finditer(text, start, end) if start < m.end() < end] + [end]
    return [_strip(text, a, b) for a, b in zip(cuts, cuts[1:]) if text[a:b].strip()]


def _spans(text: str, blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The sentences of each paragraph block; a fenced code block stays one span."""
    spans = []
    for start, end in blocks:
        spans.extend([(start, end)] if text.startswith(("```", "~~~"), start) else _sentences(text, start, end))
    return spans


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text`` (stripped; a fenced code block counts as one)."""
    return _spans(text, _blocks(text, 0, len(text)))


class Splitter:
    """Cuts documents into chunks of at most ``chunk_size`` tokens with ``chunk_overlap`` tokens of overlap.

    Args:
        counter: the tokenizer that counts tokens (see :class:`TokenCounter`).
        chunk_size: most tokens in a chunk.
        chunk_overlap: tokens a chunk repeats from the end of the previous one in the same section.
    """

    def __init__(self, counter: TokenCounter, chunk_size: int = 200, chunk_overlap: int = 30):
        if chunk_size < 8:
            raise ConfigError(f"chunk size must be at least 8 tokens, got {chunk_size}")
        if not 0 <= chunk_overlap < chunk_size // 2:
            raise ConfigError(f"chunk overlap must be in [0, chunk size / 2), got {chunk_overlap} for chunk size {chunk_size}")
        self.counter, self.chunk_size, self.chunk_overlap = counter, chunk_size, chunk_overlap

    def split(self, documents: Iterable[Document]) -> list[Chunk]:
        """All chunks of ``documents``, in document order."""
        return [chunk for document in documents for chunk in self.split_document(document)]

    def split_document(self, document: Document) -> list[Chunk]:
        text = document.text
        newlines = [i for i, char in enumerate(text) if char == "\n"]
        chunks = []
        for headings, start, end in _sections(text, document.markdown):
            for first, last, tokens in self._pack(self._pieces(text, _blocks(text, start, end))):
                line_start = line_end = None
                if document.first_line is not None:
                    line_start = document.first_line + bisect.bisect_left(newlines, first)
                    line_end = document.first_line + bisect.bisect_left(newlines, last - 1)
                chunks.append(Chunk(text[first:last], document.source, headings, line_start, line_end,
                                    document.page, document.record_id, tokens))
        return chunks

    def _pieces(self, text: str, blocks: list[tuple[int, int]]) -> list[_Piece]:
        """Sentences of paragraphs and whole code blocks; token windows for any still too big."""
        spans = _spans(text, blocks)
        pieces = []
        for (start, end), tokens in zip(spans, self.counter.count([text[a:b] for a, b in spans]) if spans else []):
            pieces.extend([_Piece(start, end, tokens)] if tokens <= self.chunk_size else self._windows(text, start, end))
        return pieces

    def _windows(self, text: str, start: int, end: int) -> list[_Piece]:
        """Runs of at most ``chunk_size`` tokens, cut between words where the run has a word break."""
        offsets = self.counter.offsets(text[start:end])
        pieces, first = [], 0
        while first < len(offsets):
            last = min(first + self.chunk_size, len(offsets))  # exclusive
            if last < len(offsets):
                last = max((i for i in range(first + 1, last + 1) if offsets[i][0] > offsets[i - 1][1]), default=last)
            pieces.append(_Piece(start + offsets[first][0], start + offsets[last - 1][1], last - first))
            first = last
        return pieces

    def _pack(self, pieces: list[_Piece]) -> list[tuple[int, int, int]]:
        """Greedy packing into ``(start, end, tokens)`` chunks, each new one opening with overlap pieces."""
        chunks, current = [], []
        for piece in pieces:
            if current and sum(p.tokens for p in current) + piece.tokens > self.chunk_size:
                chunks.append(current)
                overlap = []
                for previous in reversed(current):
                    if sum(p.tokens for p in overlap) + previous.tokens > self.chunk_overlap:
                        break
                    overlap.insert(0, previous)
                while overlap and sum(p.tokens for p in overlap) + piece.tokens > self.chunk_size:
                    overlap.pop(0)
                current = overlap
            current.append(piece)
        if current:
            chunks.append(current)
        return [(c[0].start, c[-1].end, sum(p.tokens for p in c)) for c in chunks]
