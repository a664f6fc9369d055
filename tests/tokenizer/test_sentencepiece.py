"""Tokenizers from a SentencePiece ``tokenizer.model``: token-for-token equal to the ``sentencepiece`` library and to
``transformers``' slow (sentencepiece-backed) tokenizer, on models trained here with tiny vocabularies."""

from __future__ import annotations

import io
import json
import random
import re

import pytest

from puyu.errors import ModelLoadError
from puyu.tokenizer import Tokenizer
from puyu.tokenizer.sentencepiece import read_model_proto, tokenizer_from_gguf_metadata, tokenizer_from_proto
from tests.conftest import CORPUS

spm = pytest.importorskip("sentencepiece")

TEXT = ("<|im_start|>system\nYou are 书生·浦语, a helpful assistant.<|im_end|>\n<|im_start|>user\n你好 👋🏽! Fix this:\n"
        "def f(x):\n    return x ** 2  # 平方\n<|im_end|>\n<|im_start|>assistant\n<|action_start|><|plugin|>\n"
        '{"name": "add", "arguments": {"a": 1}}</s>  trailing   spaces\t🦄 龘')
PLAIN = TEXT.replace("<|im_start|>", "").replace("<|im_end|>", "").replace("<|action_start|>", "").replace("</s>", "")
LLAMA_STYLE = dict(model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                   split_digits=True)  # how Llama 2 and InternLM train theirs
UNIGRAM_NFKC = dict(model_type="unigram")  # SentencePiece's defaults: nmt_nfkc normalization, extra whitespace removed


def train(folder, **options):
    """Train a tiny SentencePiece model on the shared corpus into ``folder/tokenizer.model``; return its processor."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=700, character_coverage=1.0,
                                   byte_fallback=True, user_defined_symbols=["<|plugin|>"], control_symbols=["<|im_start|>", "<|im_end|>"],
                                   hard_vocab_limit=False, minloglevel=2, **options)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def write_config(folder, sp, **extra):
    """An InternLM2-style tokenizer_config.json (specials in the vocabulary) plus an added_tokens.json beyond it."""
    decoder = {str(i): {"content": sp.id_to_piece(i), "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                        "single_word": False} for i in range(5)}
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
              "added_tokens_decoder": decoder, "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|action_start|>"]} | extra
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "added_tokens.json").write_text(json.dumps({"<|action_start|>": sp.get_piece_size()}))


@pytest.fixture(scope="module", params=["llama-style-bpe", "unigram-nfkc"])
def spm_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    sp = train(folder, **(LLAMA_STYLE if request.param == "llama-style-bpe" else UNIGRAM_NFKC))
    write_config(folder, sp)
    return folder, sp


def test_equal_to_the_sentencepiece_library(spm_folder):
    folder, sp = spm_folder
    ours = tokenizer_from_proto(read_model_proto(folder / "tokenizer.model"))
    rng = random.Random(0)
    chars = "".join(CORPUS) + "  \n\t<|plugin|>ﬁ①ｆ"
    texts = [PLAIN, "", " ", "  Hello   world  \n\n  x", "x<|plugin|>y <|plugin|> z"]
    texts += ["".join(rng.choice(chars) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    for text in texts:
        assert ours.encode(text, add_special_tokens=False).ids == sp.encode(text), text
        assert ours.decode(sp.encode(text)) == sp.decode(sp.encode(text)), text
    assert ours.get_vocab_size() == sp.get_piece_size()


def test_equal_to_transformers_slow_tokenizer_with_added_tokens(spm_folder):
    from transformers import SentencePieceBackend

    folder, sp = spm_folder
    slow = SentencePieceBackend.from_pretrained(str(folder))
    ours = Tokenizer.from_folder(folder)
    ids = ours.encode(TEXT, add_special_tokens=False)
    assert ids == slow.encode(TEXT, add_special_tokens=False)
    assert ours.vocab_size == len(slow) == sp.get_piece_size() + 1
    assert ours.token_id("<|action_start|>") == sp.get_piece_size() and ours.token_id("<|im_end|>") == 4
    assert ours.encode(TEXT) == [1] + ids  # add_bos_token
    assert ours.decode(ids, skip_special_tokens=True) == sp.decode([i for i in ids if i >= 5 and i < sp.get_piece_size()])


def test_bos_and_eos_follow_the_config(tmp_path):
    sp = train(tmp_path, **LLAMA_STYLE)
    write_config(tmp_path, sp, add_bos_token=False, add_eos_token=True)
    assert Tokenizer.from_folder(tmp_path).encode("hello") == sp.encode("hello") + [2]


def test_saved_tokenizer_json_encodes_the_same(spm_folder, tmp_path):
    folder, _ = spm_folder
    ours = Tokenizer.from_folder(folder)
    ours.save(tmp_path)
    again = Tokenizer.from_folder(tmp_path)
    assert again.encode(TEXT) == ours.encode(TEXT)


def test_added_token_ids_that_do_not_fit_are_refused(tmp_path):
    sp = train(tmp_path, **LLAMA_STYLE)
    write_config(tmp_path, sp)
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|action_start|>": sp.get_piece_size() + 5}))
    with pytest.raises(ModelLoadError, match=r"added token '<\|action_start\|>' is id .* different tokenizers"):
        Tokenizer.from_folder(tmp_path)


def test_damaged_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ModelLoadError, match="SentencePiece"):
        Tokenizer.from_folder(tmp_path)


def test_streamed_text_equals_the_decoded_text(spm_folder):
    from puyu.tokenizer import StreamDecoder

    ours = Tokenizer.from_folder(spm_folder[0])
    ids = ours.encode(TEXT)
    stream = StreamDecoder(ours)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == ours.decode(ids) and "\ufffd" not in "".join(pieces)


def gguf_metadata(sp, **extra):
    """The ``tokenizer.ggml.*`` keys llama.cpp's convert_hf_to_gguf writes for a SentencePiece vocabulary."""
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1
             for i in range(sp.get_piece_size())]
    types[sp.piece_to_id("<|plugin|>")] = 4  # user-defined
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
            "tokenizer.ggml.scores": [sp.get_score(i) for i in range(sp.get_piece_size())], "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": True} | extra


def llama_cpp_spm_encode(sp, text: str, specials: list[str]) -> list[int]:
    """llama.cpp's SPM tokenization: split at control/user-defined tokens, a space prefix on each text fragment
    (llama_tokenize_impl's ``is_prev_special``), SentencePiece BPE on the fragment, BOS first."""
    ids = [1]
    for part in re.split("(" + "|".join(re.escape(t) for t in specials) + ")", text):
        if part in specials:
            ids.append(sp.piece_to_id(part))
        elif part:
            ids += sp.encode(part)  # add_dummy_prefix: SentencePiece prefixes the fragment with a space itself
    return ids


def test_gguf_sentencepiece_vocabulary_encodes_as_llama_cpp(tmp_path):
    sp = train(tmp_path, **LLAMA_STYLE)
    tok = tokenizer_from_gguf_metadata(gguf_metadata(sp))
    text = TEXT.replace("<|action_start|>", "")  # not in this vocabulary
    assert tok.encode(text).ids == llama_cpp_spm_encode(sp, text, ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|plugin|>"])
    assert tok.decode(sp.encode(PLAIN)) == sp.decode(sp.encode(PLAIN))
