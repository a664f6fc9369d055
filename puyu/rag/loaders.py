"""Loaders: files on disk → :class:`Document` objects the splitter cuts into chunks.

Contract: :func:`discover` turns the paths a user gives (files and folders, walked
recursively) into a sorted list of supported files, filtered by include/exclude
globs; :func:`load_file` reads one file into documents and raises
:class:`LoaderError` (naming the file) when it cannot, so a build can skip it,
warn and go on.

Formats and what a document keeps:

- Markdown (``.md``, ``.markdown``) and plain text (``.txt``, ``.text``, ``.rst``):
  the whole file, with ``first_line=1`` so chunks cite the file's own line numbers.
  Bytes that are not UTF-8 are decoded with the encoding charset-normalizer detects.
- PDF (pypdf): one document per page, cited by page number.
- DOCX (python-docx): paragraphs as Markdown, ``Heading N``/``Title`` styles become
  headings so the splitter keeps the heading path; tables as ``a | b`` rows.
- HTML (trafilatura): the main content as Markdown (headings kept); pages with
  no detectable main content fall back to trafilatura's plain ``html2txt``.
- JSONL: one document per line ``{"id": ..., "text": ...}``, cited by its id.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from puyu.errors import ConfigError, PuyuError

log = logging.getLogger(__name__)


class LoaderError(PuyuError):
    """A file that cannot be read as its type says (corrupt PDF, broken JSONL line ...)."""


@dataclass
class Document:
    """Text from one file (or one page / record of it).

    Attributes:
        source: absolute path of the file.
        text: the extracted text.
        markdown: whether ``#`` headings structure the text.
        first_line: the file line where ``text`` starts (None when the text is extracted, e.g. from a PDF).
        page: 1-based page number (PDF).
        record_id: the record's ``id`` (JSONL).
    """

    source: str
    text: str
    markdown: bool = False
    first_line: int | None = None
    page: int | None = None
    record_id: str | None = None


def decode_text(data: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM), else the encoding charset-normalizer detects."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is None:
            raise LoaderError(f"{path}: not a text file (no text encoding fits its bytes)") from None
        log.warning("%s is not UTF-8; read it as %s", path, best.encoding)
        return str(best)


def _load_text(path: Path, markdown: bool) -> list[Document]:
    return [Document(str(path), decode_text(path.read_bytes(), path), markdown=markdown, first_line=1)]


def _load_pdf(path: Path) -> list[Document]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(str(path))
        return [Document(str(path), page.extract_text() or "", page=number) for number, page in enumerate(reader.pages, 1)]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:  # pypdf raises all of these on damaged files
        raise LoaderError(f"{path}: damaged or unreadable PDF ({type(exc).__name__}: {exc})") from exc


def _load_docx(path: Path) -> list[Document]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, ValueError, KeyError) as exc:
        raise LoaderError(f"{path}: damaged or unreadable DOCX ({exc})") from exc
    lines = []
    for paragraph in document.paragraphs:
        style = paragraph.style.name if paragraph.style is not None else ""
        text = paragraph.text.strip()
        if not text:
            continue
        if style == "Title":
            lines.append(f"# {text}")
        elif style.startswith("Heading ") and style[8:].isdigit():
            lines.append(f"{'#' * min(int(style[8:]), 6)} {text}")
        else:
            lines.append(text)
    for table in document.tables:
        lines.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows)
    return [Document(str(path), "\n\n".join(lines), markdown=True)]


def _load_html(path: Path) -> list[Document]:
    import trafilatura

    html = decode_text(path.read_bytes(), path)
    text = trafilatura.extract(html, output_format="markdown", include_tables=True, include_comments=False, favor_recall=True)
    if not text:
        text = trafilatura.html2txt(html)
    return [Document(str(path), text or "", markdown=True)]


def _load_jsonl(path: Path) -> list[Document]:
    documents = []
    for number, line in enumerate(decode_text(path.read_bytes(), path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            documents.append(Document(str(path), str(record["text"]), record_id=str(record["id"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LoaderError(f"{path}:{number}: expected a JSON object with 'id' and 'text' ({exc})") from exc
    return documents


LOADERS: dict[str, Callable[[Path], list[Document]]] = {
    ".md": lambda p: _load_text(p, markdown=True),
    ".markdown": lambda p: _load_text(p, markdown=True),
    ".txt": lambda p: _load_text(p, markdown=False),
    ".text": lambda p: _load_text(p, markdown=False),
    ".rst": lambda p: _load_text(p, markdown=False),
    ".pdf": _load_pdf,
    ".docx": _load_docx,
    ".html": _load_html,
    ".htm": _load_html,
    ".jsonl": _load_jsonl,
}


def load_file(path: Path) -> list[Document]:
    """The documents of one file; raises :class:`LoaderError` naming the file when it is unreadable."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; supported: {', '.join(sorted(LOADERS))}")
    try:
        return loader(path)
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read it ({exc.strerror or exc})") from exc


def _matches(relative: str, patterns: Iterable[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover(paths: Iterable[str | Path], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Path]:
    """Supported files under ``paths`` (folders walked recursively, hidden entries skipped), sorted and unique.

    Globs match the path relative to the folder given (``*`` also crosses ``/``) or the
    file name: ``--include "*.md" --exclude "zh_cn/*"``.  A file named directly is always
    taken (its type must be supported).
    """
    include, exclude = list(include), list(exclude)
    found: set[Path] = set()
    for given in paths:
        root = Path(given).expanduser().resolve()
        if root.is_file():
            if root.suffix.lower() not in LOADERS:
                raise ConfigError(f"{given}: unsupported file type {root.suffix!r}; supported: {', '.join(sorted(LOADERS))}")
            found.add(root)
            continue
        if not root.is_dir():
            raise ConfigError(f"{given}: no such file or folder")
        for path in root.rglob("*"):
            relative = path.relative_to(root).as_posix()
            if not path.is_file() or path.suffix.lower() not in LOADERS or any(part.startswith(".") for part in relative.split("/")):
                continue
            if (include and not _matches(relative, include)) or _matches(relative, exclude):
                continue
            found.add(path)
    return sorted(found)
