"""Token shards read back exactly what was tokenized; the val split is a stable function of the text; bad input is named."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from puyu.data.documents import iter_documents
from puyu.data.shards import SourceShards, read_meta, write_source
from puyu.errors import ConfigError, DatasetError
from puyu.tokenizer import Tokenizer


def expected(tok: Tokenizer, docs: list[str]) -> list[list[int]]:
    return [tok.encode(d, add_special_tokens=False) + [tok.eos_id] for d in docs]


def test_shards_read_back_exactly_the_tokenized_documents(bpe, english_docs, chinese_docs, tmp_path):
    for docs in (english_docs, chinese_docs):
        write_source(docs, bpe, tmp_path, "src", shard_tokens=3000)  # several shard files per split
        meta = read_meta(tmp_path)
        assert meta["dtype"] == "uint16" and len(meta["sources"]["src"]["train"]["shards"]) > 2
        shards = SourceShards.open(tmp_path, "src")
        assert [shards.tokens(i).tolist() for i in range(len(shards))] == expected(bpe, docs)
        assert shards.lengths.tolist() == [len(x) for x in expected(bpe, docs)]
        assert shards.tokens(3, 2, 7).tolist() == expected(bpe, docs)[3][2:7]


def test_val_split_is_keyed_by_text_not_order(bpe, english_docs, tmp_path):
    write_source(english_docs, bpe, tmp_path / "a", "en", val_fraction=0.25, seed=1)
    write_source(english_docs[::-1], bpe, tmp_path / "b", "en", val_fraction=0.25, seed=1)

    def split_docs(root, split):
        shards = SourceShards.open(root, "en", split)
        return sorted(bpe.decode(shards.tokens(i).tolist()) for i in range(len(shards)))

    val, train = split_docs(tmp_path / "a", "val"), split_docs(tmp_path / "a", "train")
    assert 0 < len(val) < len(english_docs) // 2 and len(val) + len(train) == len(english_docs)
    assert sorted(val + train) == sorted(english_docs)
    assert val == split_docs(tmp_path / "b", "val")  # same documents held out whatever the order


def test_large_vocabularies_are_stored_as_uint32(tmp_path):
    vocab = {f"w{i}": i for i in range(70_000)} | {"<|endoftext|>": 70_000}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = Tokenizer(backend, eos_token="<|endoftext|>")
    docs = ["w69999 w1 w65536", "w65535 w65537"]
    write_source(docs, tok, tmp_path, "big")
    assert read_meta(tmp_path)["dtype"] == "uint32"
    shards = SourceShards.open(tmp_path, "big")
    assert [shards.tokens(i).tolist() for i in range(2)] == [[69999, 1, 65536, 70000], [65535, 65537, 70000]]


def test_another_tokenizer_and_bad_names_are_refused(bpe, english_docs, tmp_path):
    write_source(english_docs[:5], bpe, tmp_path, "en")
    from puyu.tokenizer.training import train_tokenizer

    other = train_tokenizer(english_docs[:5], 300, show_progress=False)
    with pytest.raises(ConfigError, match="another tokenizer"):
        write_source(english_docs[:5], other, tmp_path, "en2")
    with pytest.raises(ConfigError, match="source name"):
        write_source(english_docs[:5], bpe, tmp_path, "../x")
    with pytest.raises(ConfigError, match="no source"):
        SourceShards.open(tmp_path, "zh")
    with pytest.raises(ConfigError, match="not a shard folder"):
        SourceShards.open(tmp_path / "en", "en")


def test_documents_are_streamed_from_jsonl_json_and_txt(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"content": "wanjuan style"}\n\n{"text": "plain", "content": "x"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"body": "custom field"}]))
    (tmp_path / "c.txt").write_text("line one\n\nline two\n")
    assert list(iter_documents(tmp_path / "a.jsonl")) == ["wanjuan style", "plain"]
    assert list(iter_documents(tmp_path / "b.json", field="body")) == ["custom field"]
    assert list(iter_documents(tmp_path / "c.txt")) == ["line one", "line two"]
    assert list(iter_documents(tmp_path / "c.txt", txt="file")) == ["line one\n\nline two\n"]
    with pytest.raises(DatasetError, match=r"b.json\[0\]: no text field .* body"):
        list(iter_documents(tmp_path / "b.json"))
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DatasetError, match="d.jsonl:2"):
        list(iter_documents(tmp_path / "d.jsonl"))
