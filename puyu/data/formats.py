"""Read training data files into samples: a conversation or a piece of raw text.

Contract: :func:`read_samples(path, fmt="auto", replace=None)` returns a list of
:class:`Sample`; each is either a chat (``messages`` in OpenAI form plus
optional ``tools``) or raw ``text``.  Files are ``.json`` (a list of rows),
``.jsonl`` (a row per line) or ``.txt`` (raw text; documents are separated by
blank lines).  Row formats, detected per row when ``fmt="auto"``:

- ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system`` and ``history`` ([[q, a], ...]);
- ``openai``: ``messages`` (system/user/assistant/tool, ``tool_calls``, ``weight`` 0 on an assistant message that is
  shown but not trained), optional ``tools`` (list or JSON string);
- ``sharegpt``: ``conversations`` of ``{from, value}`` (human/gpt/system/function_call/observation),
  optional ``system`` and ``tools``;
- ``xtuner``: ``conversation`` of ``{system?, input, output}`` turns (XTuner's single-turn/multi-turn format);
- ``text``: ``text`` (raw text for continued pre-training).

A chat row may carry images, as LLaVA's data does: ``image`` (a path or a list
of paths, relative ones taken from ``image_dir`` or else the data file's folder)
and an ``<image>`` marker in the text where each goes (``"<image>\nWhat is
this?"``; with no marker, the images open the first user turn).  The messages
then hold image parts (``{"type": "image", "path": ...}``) where the markers
were, as ``openai`` rows may hold them directly.

``replace`` fills ``{{key}}`` placeholders in every string (the self-cognition
set uses ``{{name}}``/``{{author}}``).  A malformed row raises
:class:`~puyu.errors.DatasetError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puyu.data.jsonl import open_text, read_jsonl
from puyu.errors import DatasetError

FORMATS = ("auto", "alpaca", "openai", "sharegpt", "xtuner", "text")
IMAGE_MARKER = "<image>"  # where a LLaVA-format row's image goes in the text
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                   "function_call": "assistant", "observation": "tool", "tool": "tool"}


@dataclass
class Sample:
    """One training example: a chat (``messages``/``tools``) or raw ``text``; ``origin`` is ``file:line``."""

    origin: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    text: str | None = None

    @property
    def has_images(self) -> bool:
        return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") in ("image", "image_url")
                                                               for p in m["content"]) for m in self.messages)


class _Row:
    """A raw row and where it came from, for error messages."""

    def __init__(self, data: Any, path: Path, line: int):
        self.data, self.path, self.line = data, path, line

    def fail(self, field_name: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.path}:{self.line}: field {field_name!r} {problem}; fix the row or drop it from the file")

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = True, where: dict | None = None,
            name: str | None = None) -> Any:
        source = self.data if where is None else where
        value = source.get(key)
        if value is None:
            if required:
                raise self.fail(name or key, "is missing")
            return None
        if not isinstance(value, kind):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.fail(name or key, f"must be {expected}, got {type(value).__name__}")
        return value


def _rows(path: Path) -> list[_Row]:
    """Rows of a .json list or a .jsonl file, each with the line where it starts."""
    if path.suffix == ".jsonl":
        return [_Row(data, path, number) for number, data in read_jsonl(path)]
    with open_text(path) as f:
        text = f.read()
    # A JSON list, decoded element by element so every row knows its line (json.load would not say).
    decoder, rows, pos = json.JSONDecoder(), [], text.find("[")
    if pos < 0 or text[:pos].strip():
        raise DatasetError(f"{path}:1: a .json dataset must be a list of rows; use .jsonl for one row per line")
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return rows
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        rows.append(_Row(value, path, line))


def _detect(row: _Row) -> str:
    if not isinstance(row.data, dict):
        raise DatasetError(f"{row.path}:{row.line}: a row must be a JSON object, got {type(row.data).__name__}")
    for key, fmt in (("messages", "openai"), ("conversations", "sharegpt"), ("conversation", "xtuner"),
                     ("instruction", "alpaca"), ("text", "text")):
        if key in row.data:
            return fmt
    raise DatasetError(
        f"{row.path}:{row.line}: cannot tell the row's format from its fields {sorted(row.data)}; expected one of "
        "messages (openai), conversations (sharegpt), conversation (xtuner), instruction/output (alpaca), text"
    )


def _tools(row: _Row) -> list[dict] | None:
    tools = row.data.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise row.fail("tools", f"is not valid JSON ({exc.msg})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise row.fail("tools", "must be a list of tool schemas")
    return [t if t.get("type") == "function" else {"type": "function", "function": t} for t in tools]


def _alpaca(row: _Row) -> list[dict]:
    messages = [{"role": "system", "content": row.get("system", str)}] if row.data.get("system") else []
    for i, pair in enumerate(row.get("history", list, required=False) or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise row.fail(f"history[{i}]", "must be a [question, answer] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = row.get("instruction", str)
    extra = row.get("input", str, required=False)
    user = f"{prompt}\n{extra}" if extra else prompt
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": row.get("output", str)}]


def _openai(row: _Row) -> list[dict]:
    messages = row.get("messages", list)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise row.fail(f"messages[{i}]", "must be an object with role and content")
        role = row.get("role", str, where=m, name=f"messages[{i}].role")
        if role not in ("system", "user", "assistant", "tool"):
            raise row.fail(f"messages[{i}].role", f"is {role!r}; use system, user, assistant or tool")
        if m.get("content") is None and not m.get("tool_calls"):
            raise row.fail(f"messages[{i}].content", "is missing")
    return messages


def _sharegpt(row: _Row) -> list[dict]:
    messages = [{"role": "system", "content": row.get("system", str)}] if row.data.get("system") else []
    for i, turn in enumerate(row.get("conversations", list)):
        if not isinstance(turn, dict):
            raise row.fail(f"conversations[{i}]", "must be an object with from and value")
        who = row.get("from", str, where=turn, name=f"conversations[{i}].from")
        value = row.get("value", str, where=turn, name=f"conversations[{i}].value")
        if who not in _SHAREGPT_ROLES:
            raise row.fail(f"conversations[{i}].from", f"is {who!r}; use one of {', '.join(_SHAREGPT_ROLES)}")
        if who == "function_call":
            try:
                call = json.loads(value)
                function = {"name": call["name"], "arguments": call.get("arguments", {})}
            except (json.JSONDecodeError, KeyError, TypeError):
                raise row.fail(f"conversations[{i}].value", 'must be a JSON object {"name": ..., "arguments": ...}') from None
            messages.append({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": function}]})
        else:
            messages.append({"role": _SHAREGPT_ROLES[who], "content": value})
    return messages


def _xtuner(row: _Row) -> list[dict]:
    messages: list[dict] = []
    for i, turn in enumerate(row.get("conversation", list)):
        if not isinstance(turn, dict):
            raise row.fail(f"conversation[{i}]", "must be an object with input and output")
        if turn.get("system"):
            messages.append({"role": "system", "content": row.get("system", str, where=turn, name=f"conversation[{i}].system")})
        messages.append({"role": "user", "content": row.get("input", str, where=turn, name=f"conversation[{i}].input")})
        messages.append({"role": "assistant", "content": row.get("output", str, where=turn, name=f"conversation[{i}].output")})
    return messages


def _with_images(row: _Row, messages: list[dict], image_dir: Path | None) -> list[dict]:
    """``messages`` with the row's ``image`` paths as image parts where the ``<image>`` markers are (see the module
    docstring)."""
    value = row.data.get("image", row.data.get("images"))
    if value in (None, "", []):
        return messages
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise row.fail("image", "must be a path or a list of paths")
    found = []
    for p in paths:
        path = Path(p).expanduser()
        path = path if path.is_absolute() else (image_dir or row.path.parent) / path
        if not path.is_file():
            raise row.fail("image", f"names {path}, which does not exist (relative paths are taken from data.image_dir, "
                                    "else the data file's folder)")
        found.append(path)
    markers = sum(m["content"].count(IMAGE_MARKER) for m in messages if isinstance(m.get("content"), str))
    if markers == 0:
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first] = {**messages[first], "content": IMAGE_MARKER * len(found) + "\n" + messages[first]["content"]}
    elif markers != len(found):
        raise row.fail("image", f"lists {len(found)} images but the text has {markers} {IMAGE_MARKER} markers; "
                                "put one marker where each image goes")
    images = iter(found)
    out = []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, str) or IMAGE_MARKER not in content:
            out.append(m)
            continue
        parts: list[dict] = []
        for i, piece in enumerate(content.split(IMAGE_MARKER)):
            piece = piece.removeprefix("\n") if i else piece  # "<image>\n": the model's layout puts its own newline
            if i:
                parts.append({"type": "image", "path": str(next(images))})
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({**m, "content": parts})
    return out


_CONVERTERS = {"alpaca": _alpaca, "openai": _openai, "sharegpt": _sharegpt, "xtuner": _xtuner}


def _fill(value: Any, replace: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, new in replace.items():
            value = value.replace("{{" + key + "}}", str(new))
        return value
    if isinstance(value, list):
        return [_fill(v, replace) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, replace) for k, v in value.items()}
    return value


def read_samples(path: str | Path, fmt: str = "auto", replace: dict[str, str] | None = None,
                 image_dir: str | Path | None = None) -> list[Sample]:
    """All samples of a data file (see the module docstring; ``image_dir``: where relative image paths are).

    Raises:
        DatasetError: a missing file, bad JSON, or a row whose fields do not fit its format.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"no such data file: {path} (a relative path that is not found from the working directory "
                           "is looked up in data.data_dir or $PUYU_DATA_DIR)")
    if path.suffix == ".txt":
        documents = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n")]
        return [Sample(origin=f"{path}", text=_fill(d, replace or {})) for d in documents if d]
    if path.suffix not in (".json", ".jsonl"):
        raise DatasetError(f"{path}: unsupported data file type {path.suffix!r}; use .json, .jsonl or .txt")
    samples = []
    for row in _rows(path):
        kind = _detect(row) if fmt == "auto" else fmt
        if not isinstance(row.data, dict):
            raise DatasetError(f"{row.path}:{row.line}: a row must be a JSON object, got {type(row.data).__name__}")
        row.data = _fill(row.data, replace or {})
        origin = f"{path}:{row.line}"
        if kind == "text":
            samples.append(Sample(origin=origin, text=row.get("text", str)))
            continue
        messages = _with_images(row, _CONVERTERS[kind](row), Path(image_dir).expanduser() if image_dir else None)
        if not any(m["role"] == "assistant" for m in messages):
            raise row.fail("messages", "has no assistant reply to train on")
        samples.append(Sample(origin=origin, messages=messages, tools=_tools(row)))
    return samples
