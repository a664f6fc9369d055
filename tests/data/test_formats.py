"""Data formats -> OpenAI messages; bad rows name the file, the line and the field."""

from __future__ import annotations

import json

import pytest

from puyu.data import read_samples
from puyu.errors import DatasetError


def write(tmp_path, name: str, rows) -> str:
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=2))
    return path


def test_alpaca_with_input_system_history_and_placeholders(tmp_path):
    rows = [{"instruction": "Who are you?", "input": "", "output": "I am {{name}} by {{author}}."},
            {"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be brief.", "history": [["hi", "hello"]]}]
    a, b = read_samples(write(tmp_path, "a.json", rows), replace={"name": "Puyu", "author": "us"})
    assert a.messages == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Puyu by us."}]
    assert [m["role"] for m in b.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert b.messages[3]["content"] == "Sum\n1 2"


def test_sharegpt_function_call_and_observation_become_tool_messages(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Weather?"},
                             {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                             {"from": "observation", "value": '{"temp": 20}'}, {"from": "gpt", "value": "20 degrees."}],
           "system": "You help.", "tools": '[{"name": "weather", "parameters": {"type": "object"}}]'}
    (s,) = read_samples(write(tmp_path, "s.json", [row]))
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert s.messages[2]["tool_calls"][0]["function"] == {"name": "weather", "arguments": {"city": "Paris"}}
    assert s.tools == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


def test_openai_xtuner_and_text_rows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            {"conversation": [{"system": "S", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]},
            {"text": "Raw text for pre-training."}]
    o, x, t = read_samples(write(tmp_path, "mixed.jsonl", rows))
    assert o.messages[1] == {"role": "assistant", "content": "Hello"}
    assert [m["role"] for m in x.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert t.text == "Raw text for pre-training." and not t.messages
    (tmp_path / "doc.txt").write_text("First document.\nStill first.\n\nSecond document.\n")
    assert [s.text for s in read_samples(tmp_path / "doc.txt")] == ["First document.\nStill first.", "Second document."]


@pytest.mark.parametrize("rows, name, where, field", [
    ([{"instruction": "ok", "output": "ok"}, {"instruction": "x"}], "bad.json", ":6:", "'output'"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
      {"messages": [{"role": "robot", "content": "a"}]}], "bad.jsonl", ":2:", "'messages[0].role'"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}], "bad.json", ":2:", "'conversations[1].value'"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "not json"}]}], "bad.json", ":2:",
     "'conversations[1].value'"),
    ([{"conversation": [{"input": "a", "output": 3}]}], "bad.jsonl", ":1:", "'conversation[0].output'"),
    ([{"question": "a"}], "bad.jsonl", ":1:", "format"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, rows, name, where, field):
    path = write(tmp_path, name, rows)
    with pytest.raises(DatasetError) as info:
        read_samples(path)
    message = str(info.value)
    assert str(path) + where in message and field in message


def test_broken_json_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DatasetError, match=r"broken.jsonl:2: not valid JSON"):
        read_samples(path)
    with pytest.raises(DatasetError, match="no such data file"):
        read_samples(tmp_path / "missing.json")
