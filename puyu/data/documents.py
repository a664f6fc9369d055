"""Stream plain-text documents out of corpus files, one at a time (never a whole file in memory).

Contract: :func:`iter_documents` yields the text of each document of a
``.jsonl`` / ``.jsonl.gz`` file (one JSON object per line: the ``field`` value,
else the first of ``text``/``content`` present - WanJuan uses ``content``, the
cleaned output of ``puyu data clean`` and most corpora ``text``), a ``.json``
file holding a list of such objects, or a ``.txt`` / ``.txt.gz`` file (one
document per non-blank line, or the whole file as one document with
``txt="file"``).  Bad JSON or a row without the field raises
:class:`~puyu.errors.DatasetError` naming ``file:line`` and the fields found.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from puyu.data.jsonl import iter_jsonl, open_text
from puyu.errors import DatasetError

TEXT_FIELDS = ("text", "content")
TXT_MODES = ("line", "file")


def _field(row: Any, field: str | None, where: str) -> str:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    names = [field] if field else TEXT_FIELDS
    for name in names:
        if isinstance(row.get(name), str):
            return row[name]
    raise DatasetError(f"{where}: no text field {' or '.join(map(repr, names))} (fields: {', '.join(map(str, row)) or 'none'}); "
                       "name the field with --field")


def iter_documents(path: str | Path, field: str | None = None, txt: str = "line") -> Iterator[str]:
    """The documents of one corpus file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such corpus file: {path}")
    if txt not in TXT_MODES:
        raise DatasetError(f"txt mode {txt!r} is unknown; use line (one document per line) or file (the file is one document)")
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if kind == "jsonl":
        for number, row in iter_jsonl(path):
            yield _field(row, field, f"{path}:{number}")
    elif kind == "json":
        with open_text(path) as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: a .json corpus must hold a list of objects; use .jsonl for large corpora")
        for number, row in enumerate(rows):
            yield _field(row, field, f"{path}[{number}]")
    elif kind == "txt":
        with open_text(path) as f:
            if txt == "file":
                yield f.read()
            else:
                yield from (line.rstrip("\r\n") for line in f if line.strip())
    else:
        raise DatasetError(f"{path}: unknown corpus format {kind!r}; give .jsonl, .json or .txt files (optionally .gz)")
