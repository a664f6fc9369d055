"""The structure-aware splitter: heading paths, exact slices and line ranges, token limits, overlap."""

from __future__ import annotations

import re

import pytest

from puyu.errors import ConfigError
from puyu.rag.loaders import Document
from puyu.rag.splitter import Splitter

MARKDOWN = """# Guide

Intro paragraph.

## Install

Run the installer.

```bash
# not a heading, a shell comment. It ends with a full stop.
pip install puyu
```

## Serve

### Ports

The server listens on port 23333.
"""


def lines_of(text, chunk):
    return "\n".join(text.splitlines()[chunk.line_start - 1:chunk.line_end])


def test_markdown_sections_keep_heading_paths_and_line_ranges(embedder):
    chunks = Splitter(embedder, chunk_size=200, chunk_overlap=0).split([Document("/d/g.md", MARKDOWN, markdown=True, first_line=1)])
    assert [c.headings for c in chunks] == [["Guide"], ["Guide", "Install"], ["Guide", "Serve", "Ports"]]
    assert chunks[0].text == "Intro paragraph." and (chunks[0].line_start, chunks[0].line_end) == (3, 3)
    install = chunks[1]
    assert "# not a heading" in install.text and install.text.endswith("```")  # the fenced block stays whole
    assert (install.line_start, install.line_end) == (7, 12) and lines_of(MARKDOWN, install).strip() == install.text
    assert chunks[2].text == "The server listens on port 23333." and chunks[2].line_start == 18
    assert all(c.source == "/d/g.md" and c.tokens == embedder.count([c.text])[0] for c in chunks)


def test_skipped_heading_levels_and_code_blocks(embedder):
    text = "# A\n\n### C\n\nunder c\n\n### D\n\nunder d. More.\n\n```\nx = 1. y = 2.\n```\n\n## B\n\nunder b\n"
    chunks = Splitter(embedder, chunk_size=16, chunk_overlap=0).split([Document("/d/h.md", text, markdown=True, first_line=1)])
    assert [(c.headings, c.text) for c in chunks] == [
        (["A", "C"], "under c"), (["A", "D"], "under d. More."), (["A", "D"], "```\nx = 1. y = 2.\n```"), (["A", "B"], "under b")]


def test_chunks_respect_the_token_limit_and_overlap(embedder):
    sentences = [f"Sentence number {i} talks about topic {i * 7} in some detail." for i in range(60)]
    text = "\n\n".join(" ".join(sentences[i:i + 3]) for i in range(0, 60, 3))
    chunks = Splitter(embedder, chunk_size=60, chunk_overlap=20).split([Document("/d/t.txt", text, first_line=1)])
    assert len(chunks) > 5
    assert all(c.tokens <= 60 and embedder.count([c.text])[0] == c.tokens for c in chunks)
    for previous, chunk in zip(chunks, chunks[1:]):
        assert previous.text in text and chunk.text in text
        first_sentence = re.split(r"(?<=\.)\s+", chunk.text)[0]
        assert previous.text.endswith(first_sentence)  # a chunk opens with the last sentence of the previous one
        assert chunk.text in lines_of(text, chunk)
    covered = "".join(c.text for c in chunks)
    assert all(s in covered for s in sentences)


def test_long_paragraph_splits_at_sentences_then_token_windows(embedder):
    long_sentence = " ".join(f"word{i}" for i in range(150))
    text = "First short sentence. Second short sentence! " + long_sentence
    chunks = Splitter(embedder, chunk_size=40, chunk_overlap=0).split([Document("/d/x.txt", text, first_line=1)])
    assert chunks[0].text == "First short sentence. Second short sentence!"
    assert all(c.tokens <= 40 for c in chunks)
    assert " ".join(c.text for c in chunks[1:]) == long_sentence  # windows cut at token boundaries, nothing lost


def test_pages_and_records_are_carried_and_empty_text_gives_no_chunk(embedder):
    splitter = Splitter(embedder, chunk_size=50, chunk_overlap=5)
    [page] = splitter.split([Document("/d/r.pdf", "Text on page two.", page=2)])
    [record] = splitter.split([Document("/d/p.jsonl", "A passage.", record_id="p7")])
    assert (page.page, page.line_start, record.record_id) == (2, None, "p7")
    assert splitter.split([Document("/d/e.md", "", markdown=True, first_line=1)]) == []
    assert splitter.split([Document("/d/h.md", "# Only a heading\n", markdown=True, first_line=1)]) == []


def test_chinese_sentences_split_at_full_stops(embedder):
    text = "".join(f"这是第{i}句话，内容关于模型部署。" for i in range(40))
    chunks = Splitter(embedder, chunk_size=50, chunk_overlap=0).split([Document("/d/zh.md", text, markdown=True, first_line=1)])
    assert len(chunks) > 1 and all(c.text.endswith("。") and c.tokens <= 50 for c in chunks)


@pytest.mark.parametrize("size, overlap", [(4, 0), (100, 50), (100, -1)])
def test_bad_sizes_are_rejected(embedder, size, overlap):
    with pytest.raises(ConfigError, match="chunk"):
        Splitter(embedder, chunk_size=size, chunk_overlap=overlap)
