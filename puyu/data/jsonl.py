"""JSON Lines files, the one reader for training data, benchmarks and QA sets.

Contract: :func:`read_jsonl` returns ``(line number, object)`` for every
non-blank line of a ``.jsonl`` file (``.jsonl.gz`` is decompressed); a missing
file, or a line that is not valid JSON or not a JSON object, raises
:class:`~puyu.errors.DatasetError` naming the file (and ``file:line``).  :func:`open_text`
opens any UTF-8 text file the same way (``.gz`` or plain).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import IO, Any, Iterator

from puyu.errors import DatasetError


def open_text(path: Path) -> IO[str]:
    """``path`` opened for reading as UTF-8 text (a leading BOM is skipped), decompressed when it ends in ``.gz``;
    newlines are not translated (as the ``csv`` module wants)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line, read as it goes (see the module docstring)."""
    if not path.is_file():
        raise DatasetError(f"no such file: {path}")
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number}: a row must be a JSON object, got {type(row).__name__}")
            yield number, row


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """All of :func:`iter_jsonl` at once."""
    return list(iter_jsonl(path))
