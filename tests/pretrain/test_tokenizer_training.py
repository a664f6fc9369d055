"""A byte-level BPE trained from scratch loads in puyu and in transformers, with the same ids, chat template and stops."""

from __future__ import annotations

import pytest

from puyu.errors import ConfigError
from puyu.tokenizer import Tokenizer
from puyu.tokenizer.training import train_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog in 2024.", "子曰：学而时习之，不亦说乎？有朋自远方来，不亦乐乎？",
         "Mixed 中文 and English: 3.14159 😀 <tag> tabs\tand\nnewlines"]
CHAT = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "你好, who are you?"},
        {"role": "assistant", "content": "I am a tiny model."}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, bpe):
    out = tmp_path_factory.mktemp("bpe")
    bpe.save(out)
    return out


def test_vocabulary_size_and_special_tokens(bpe):
    assert bpe.vocab_size == 512
    specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    assert [bpe.token_id(t) for t in specials] == [0, 1, 2, 3]
    for token in specials:  # each is one id, also inside text
        assert bpe.encode(f"a{token}b").count(bpe.token_id(token)) == 1
    assert bpe.eos_id == 0 and bpe.stop_token_ids == [0, 3]  # documents end with <|endoftext|>, replies with <|im_end|>


def test_every_text_round_trips_and_digits_split(bpe):
    for text in TEXTS:
        assert bpe.decode(bpe.encode(text), skip_special_tokens=False) == text
    assert [bpe.decode([i]) for i in bpe.encode("2024")] == ["2", "0", "2", "4"]


def test_transformers_autotokenizer_loads_the_folder_with_equal_ids_and_template(folder):
    from transformers import AutoTokenizer

    ours, theirs = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
        assert theirs.decode(ours.encode(text)) == text
    assert theirs.eos_token == "<|endoftext|>" and theirs.pad_token == "<|pad|>"
    rendered = ours.render(CHAT)
    assert list(theirs.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]) == rendered.ids
    trained = ours.decode([i for i, m in zip(rendered.ids, rendered.loss_mask) if m], skip_special_tokens=False)
    assert trained == "I am a tiny model.<|im_end|>"


def test_internlm2_template_brings_its_tokens(english_docs):
    tok = train_tokenizer(english_docs[:10], 400, template="internlm2", show_progress=False)
    for token in ("<s>", "<|action_start|>", "<|plugin|>"):
        assert tok.encode(token, add_special_tokens=False) == [tok.token_id(token)]
    assert tok.render_text([{"role": "user", "content": "hi"}]).startswith("<s><|im_start|>user")


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="too small"):
        train_tokenizer(TEXTS, 200, show_progress=False)
    with pytest.raises(ConfigError, match="unknown"):
        train_tokenizer(TEXTS, 400, template="vicuna", show_progress=False)
    with pytest.raises(ConfigError, match="no text"):
        train_tokenizer(["", "  "], 400, show_progress=False)
