"""Reading benchmark files from the data dir: rows as dicts, with errors that name the file and line.

``read_rows(path, fmt, columns, json_key)`` reads one file in one of the
formats the tasks use: ``jsonl`` (optionally ``.gz``; read by
:func:`puyu.data.jsonl.read_jsonl`), ``json`` (a list, or a list under
``json_key``), ``csv`` (header row, or headerless with ``columns``), ``lines``
(one ``{"text": line}`` per non-empty line) and ``text`` (the whole file as one
row).  Every row carries ``_source`` (``file:line``) so later errors can point
at it.  The data dir itself is resolved by :func:`puyu.home.data_dir`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from puyu.data.jsonl import open_text, read_jsonl
from puyu.errors import ConfigError, DatasetError

FORMATS = ("jsonl", "json", "csv", "lines", "text")


def read_rows(path: Path, fmt: str, columns: list[str] | None = None, json_key: str | None = None) -> list[dict[str, Any]]:
    """All rows of one file as dicts (see the module docstring).

    Raises:
        DatasetError: the file is missing or a row cannot be parsed (names file and line).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r} for {path}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"data file {path} is missing; check --data-dir / $PUYU_DATA_DIR")
    if fmt == "jsonl":
        return [dict(row, _source=f"{path}:{n}") for n, row in read_jsonl(path)]
    with open_text(path) as f:
        if fmt == "json":
            return _json_file(f, path, json_key)
        if fmt == "csv":
            return _csv_rows(f, path, columns)
        if fmt == "lines":
            return [{"text": line.rstrip("\n"), "_source": f"{path}:{n}"} for n, line in enumerate(f, 1) if line.strip()]
        return [{"text": f.read(), "_source": f"{path}:1"}]


def _json_file(f, path: Path, json_key: str | None) -> list[dict[str, Any]]:
    try:
        data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if json_key is not None:
        if not isinstance(data, dict) or json_key not in data:
            raise DatasetError(f"{path}: expected an object with the key {json_key!r}")
        data = data[json_key]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(f"{path}: expected a list of objects")
    return [dict(r, _source=f"{path}:item {i}") for i, r in enumerate(data)]


def _csv_rows(f, path: Path, columns: list[str] | None) -> list[dict[str, Any]]:
    reader = csv.reader(f)
    header = columns or next(reader, None)
    if not header:
        raise DatasetError(f"{path}: empty CSV file")
    rows = []
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetError(f"{path}:{line}: expected {len(header)} columns ({', '.join(header)}), got {len(row)}")
        rows.append(dict(zip(header, row), _source=f"{path}:{line}"))
    return rows


def require_fields(row: dict[str, Any], fields: list[str], task: str) -> None:
    """Raise a :class:`DatasetError` naming the row's file and line when a field is missing or empty."""
    missing = [f for f in fields if row.get(f) in (None, "")]
    if missing:
        raise DatasetError(f"{row.get('_source', '?')}: task {task}: row lacks {', '.join(missing)}")
