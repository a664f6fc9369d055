"""One JSON Lines reader for training data, benchmark rows and RAG QA files; errors name file and line."""

from __future__ import annotations

import gzip

import pytest

from puyu.data import read_samples
from puyu.data.jsonl import read_jsonl
from puyu.errors import DatasetError
from puyu.eval.data import read_rows
from puyu.rag.evaluate import load_qa


def test_rows_keep_their_line_numbers_across_blank_lines_bom_and_gzip(tmp_path):
    text = '{"a": 1}\n\n  \n{"a": "x\u2028y"}\r\n'
    plain = tmp_path / "rows.jsonl"
    plain.write_bytes(b"\xef\xbb\xbf" + text.encode())
    packed = tmp_path / "rows.jsonl.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    expected = [(1, {"a": 1}), (4, {"a": "x\u2028y"})]
    assert read_jsonl(plain) == expected and read_jsonl(packed) == expected
    assert [r["_source"] for r in read_rows(plain, "jsonl")] == [f"{plain}:1", f"{plain}:4"]


@pytest.mark.parametrize("content, problem", [('{"a": 1}\n{"a": oops}\n', "not valid JSON"),
                                              ('{"a": 1}\n[1, 2]\n', "must be a JSON object, got list")])
def test_every_reader_names_the_file_and_line(tmp_path, content, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    for read in (read_jsonl, read_samples, lambda p: read_rows(p, "jsonl"), load_qa):
        with pytest.raises(DatasetError, match=f"{path}:2: .*{problem}"):
            read(path)
    with pytest.raises(DatasetError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")
