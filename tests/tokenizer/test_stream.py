"""Streaming detokenization: deltas of mixed English/Chinese/emoji text never hold broken
characters, and together equal the full decode."""

from __future__ import annotations

from puyu.tokenizer import StreamDecoder

TEXT = "Hello 世界! Emoji 😀🎉🚀👍🏽 and 中文文本 mixed with English, numbers 2024 and code {\"a\": 1}."


def stream_text(tokenizer, ids):
    decoder = StreamDecoder(tokenizer)
    deltas = [decoder.push(i) for i in ids]
    return deltas, "".join(deltas) + decoder.flush()


def test_stream_equals_full_decode_without_broken_characters(tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT)
    assert len(ids) > len(TEXT) // 3  # the tiny vocabulary splits characters into byte tokens
    deltas, streamed = stream_text(tiny_tokenizer, ids)
    assert streamed == tiny_tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in d for d in deltas)


def test_flush_returns_an_incomplete_character_as_replacement(tiny_tokenizer):
    ids = tiny_tokenizer.encode("🦀")  # not in the training corpus: split into byte tokens
    assert len(ids) > 1
    decoder = StreamDecoder(tiny_tokenizer)
    held = [decoder.push(i) for i in ids[:-1]]
    assert "".join(held) == ""
    rest = decoder.flush()
    assert rest == tiny_tokenizer.decode(ids[:-1]) and set(rest) == {"\ufffd"}
