"""Reading benchmark files from the data dir: rows as dicts, with errors that name the file and line.

``data_dir()`` resolves the folder (``--data-dir``, else ``$PUYU_DATA_DIR``).
``read_rows(path, fmt, columns, json_key)`` reads one file in one of the
formats the tasks use: ``jsonl`` (optionally ``.gz``), ``json`` (a list, or a
list under ``json_key``), ``csv`` (header row, or headerless with ``columns``),
``lines`` (one ``{"text": line}`` per non-empty line) and ``text`` (the whole
file as one row).  Every row carries ``_source`` (``file:line``) so later
errors can point at it.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Any

from puyu.errors import ConfigError, DatasetError

FORMATS = ("jsonl", "json", "csv", "lines", "text")


def data_dir(explicit: str | Path | None = None) -> Path:
    """The benchmark data folder: ``explicit``, else ``$PUYU_DATA_DIR``.

    Raises:
        ConfigError: neither is set, or the folder does not exist.
    """
    value = explicit or os.environ.get("PUYU_DATA_DIR")
    if not value:
        raise ConfigError("no data dir: pass --data-dir DIR or set PUYU_DATA_DIR to the folder that holds eval/ (e.g. ../shared/datasets)")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data dir {path} does not exist; pass --data-dir DIR or set PUYU_DATA_DIR")
    return path


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8", newline="")


def read_rows(path: Path, fmt: str, columns: list[str] | None = None, json_key: str | None = None) -> list[dict[str, Any]]:
    """All rows of one file as dicts (see the module docstring).

    Raises:
        DatasetError: the file is missing or a row cannot be parsed (names file and line).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r} for {path}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"data file {path} is missing; check --data-dir / $PUYU_DATA_DIR")
    with _open_text(path) as f:
        if fmt == "jsonl":
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    rows.append(_json_row(line, path, n))
            return rows
        if fmt == "json":
            return _json_file(f, path, json_key)
        if fmt == "csv":
            return _csv_rows(f, path, columns)
        if fmt == "lines":
            return [{"text": line.rstrip("\n"), "_source": f"{path}:{n}"} for n, line in enumerate(f, 1) if line.strip()]
        return [{"text": f.read(), "_source": f"{path}:1"}]


def _json_row(line: str, path: Path, n: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{n}: not valid JSON ({exc.msg}); fix or remove the line") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
    row["_source"] = f"{path}:{n}"
    return row


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
