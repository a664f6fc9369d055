"""Reading a corpus: local files and folders of mixed formats, streamed one document at a time.

Contract: :func:`find_inputs` turns the user's paths (files, folders searched
recursively, Hugging Face ``datasets`` folders made by ``save_to_disk``) into a
sorted list of files; :class:`CorpusReader` is a datatrove reader over that list
(task ``rank`` of ``world_size`` reads files ``rank::world_size``, so the
work splits by file).  Formats, by suffix after an optional ``.gz`` / ``.zst``:

- ``.jsonl`` / ``.ndjson`` / ``.json``: one JSON object per line; a ``.json``
  file holding one array is read as a whole (one file at a time);
- ``.parquet``, ``.csv`` / ``.tsv`` (with a header row), ``.arrow`` (``datasets`` folders);
- ``.txt`` (and ``.md`` named as a file; folder walks skip Markdown, mostly
  READMEs): ``txt_mode`` says what a document is: a ``line``, a ``paragraph``
  (blank-line separated) or the whole ``file``.

The text is the ``text_field`` column, or by default the first of ``text``
and ``content`` (WanJuan's field); the other fields travel along as metadata
and an ``id`` field is kept as the document id (else ``<path>/<index>``).

datatrove's JSONL, Parquet and CSV readers do the reading (their ``read_file``
run on this reader's settings); written here: format dispatch over mixed
inputs, text files (datatrove has no plain-text reader), JSON arrays, TSV and
``datasets`` folders (found by their ``state.json``; their Arrow streams are read
with pyarrow, so the ``datasets`` library is not needed).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.readers.csv import CsvReader
from datatrove.pipeline.readers.jsonl import JsonlReader
from datatrove.pipeline.readers.parquet import ParquetReader

from puyu.errors import ConfigError, DatasetError

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv",
           ".arrow": "arrow", ".txt": "txt", ".text": "txt", ".md": "txt"}
TXT_MODES = ("line", "paragraph", "file")
TEXT_FIELDS = ("text", "content")


def file_format(path: str) -> tuple[str | None, str | None]:
    """(format, compression) of a file from its suffixes, e.g. ``a.jsonl.zst`` → ``("jsonl", "zstd")``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (FORMATS.get(suffixes[-1]) if suffixes else None), compression


def _dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a ``save_to_disk`` folder (a Dataset or a DatasetDict), or None for another folder."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        return [f for split in splits for f in _dataset_files(folder / split) or []]
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        state = json.loads((folder / "state.json").read_text())
        return [folder / entry["filename"] for entry in state["_data_files"]]
    return None


def find_inputs(paths: list[str]) -> list[str]:
    """All readable files under ``paths`` as sorted absolute paths; a clear error for missing or unreadable ones."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ConfigError(f"input {raw} does not exist: give files or folders of .jsonl/.json/.txt/.parquet/.csv "
                              "(optionally .gz/.zst) or a `datasets` save_to_disk folder")
        if path.is_file():
            if file_format(str(path))[0] is None:
                raise ConfigError(f"cannot read {raw}: unknown format (known: {', '.join(sorted(FORMATS))}, "
                                  "optionally compressed .gz/.zst)")
            found.add(path.resolve())
            continue
        stack = [path]
        while stack:
            folder = stack.pop()
            dataset = _dataset_files(folder)
            if dataset is not None:
                found.update(p.resolve() for p in dataset)
                continue
            for child in folder.iterdir():
                if child.is_dir():
                    stack.append(child)
                elif file_format(child.name)[0] is not None and child.suffix != ".md" and not child.name.startswith("."):
                    found.add(child.resolve())
    if not found:
        raise ConfigError(f"no readable files under {', '.join(paths)} (known formats: {', '.join(sorted(FORMATS))})")
    return sorted(str(p) for p in found)


def _adapter(self: CorpusReader, data: dict, path: str, id_in_file: int) -> dict:
    """A source record → datatrove's document dict: the text field, the id, everything else as metadata."""
    key = self.text_key or next((k for k in TEXT_FIELDS if k in data), None)
    if key is None or key not in data:
        wanted = f"field {self.text_key!r}" if self.text_key else "a 'text' or 'content' field"
        raise DatasetError(f"{path}, record {id_in_file}: no {wanted} (fields: {', '.join(map(str, data)) or 'none'}); "
                           "name the text field with --text-field")
    text = data.pop(key)
    if isinstance(text, list):  # paragraphs or lines, as in poetry collections
        text = "\n".join(str(t) for t in text)
    doc_id = data.pop(self.id_key, None)
    return {"text": text if isinstance(text, str) else "" if text is None else str(text),
            "id": str(doc_id) if doc_id is not None else f"{path}/{id_in_file}", "metadata": data}


class CorpusReader(BaseDiskReader):
    """A datatrove reader over :func:`find_inputs` files of any supported format (see the module docstring)."""

    name = "📖 corpus"

    def __init__(self, files: list[str], text_field: str | None = None, txt_mode: str = "paragraph", limit: int = -1,
                 doc_progress: bool = False):
        if txt_mode not in TXT_MODES:
            raise ConfigError(f"txt mode {txt_mode!r} is not one of {', '.join(TXT_MODES)}")
        super().__init__("/", limit=limit, adapter=_adapter, text_key=text_field, doc_progress=doc_progress,
                         add_file_path=False)
        self.files, self.txt_mode = list(files), txt_mode
        self.compression, self.batch_size, self.read_metadata = "infer", 1000, True  # read by datatrove's read_file

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        for doc in self.read_files_shard(self.files[rank::world_size]):
            self.update_doc_stats(doc)
            yield doc

    def read_file(self, filepath: str):
        kind, compression = file_format(filepath)
        if kind == "jsonl" or (kind == "json" and self._is_json_lines(filepath, compression)):
            yield from JsonlReader.read_file(self, filepath)
        elif kind == "json":
            yield from self._read_json_array(filepath, compression)
        elif kind == "parquet":
            yield from ParquetReader.read_file(self, filepath)
        elif kind == "csv":
            yield from CsvReader.read_file(self, filepath)
        elif kind == "tsv":
            yield from self._read_tsv(filepath, compression)
        elif kind == "arrow":
            yield from self._read_arrow(filepath)
        else:
            yield from self._read_text(filepath, compression)

    def _is_json_lines(self, filepath: str, compression: str | None) -> bool:
        """A ``.json`` file is JSON lines when its first line is a whole JSON object, else one JSON document."""
        with self.data_folder.open(filepath, "r", compression=compression) as f:
            try:
                return isinstance(json.loads(f.readline()), dict)
            except json.JSONDecodeError:
                return False

    def _read_json_array(self, filepath: str, compression: str | None):
        with self.data_folder.open(filepath, "r", compression=compression) as f:
            records = json.load(f)
        if not isinstance(records, list):
            raise DatasetError(f"{filepath} holds one JSON {type(records).__name__}, not records: give JSON lines or an array "
                               "of objects with a text field")
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise DatasetError(f"{filepath}, item {index}: expected a JSON object with a text field, got {type(record).__name__}")
            if document := self.get_document_from_dict(record, filepath, index):
                yield document

    def _read_arrow(self, filepath: str):
        """An Arrow IPC stream (what ``datasets`` saves), batch by batch."""
        import pyarrow as pa

        index = 0
        with self.data_folder.open(filepath, "rb") as f, pa.ipc.open_stream(f) as stream:
            for batch in stream:
                for row in batch.to_pylist():
                    if document := self.get_document_from_dict(row, filepath, index):
                        yield document
                    index += 1

    def _read_tsv(self, filepath: str, compression: str | None):
        with self.data_folder.open(filepath, "r", compression=compression) as f:
            for index, row in enumerate(csv.DictReader(f, delimiter="\t")):
                if document := self.get_document_from_dict(row, filepath, index):
                    yield document

    def _read_text(self, filepath: str, compression: str | None):
        with self.data_folder.open(filepath, "r", compression=compression) as f:
            if self.txt_mode == "file":
                pieces = iter([f.read()])
            elif self.txt_mode == "line":
                pieces = (line.rstrip("\n") for line in f)
            else:
                pieces = _paragraphs(f)
            index = 0
            for piece in pieces:
                if piece.strip():
                    if document := self.get_document_from_dict({self.text_key or "text": piece}, filepath, index):
                        yield document
                    index += 1


def _paragraphs(lines):
    """Blank-line separated blocks of a line iterator, streamed."""
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line.rstrip("\n"))
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)
