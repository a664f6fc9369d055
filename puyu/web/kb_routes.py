"""``/ui/kb/*``: upload documents, build/sync a knowledge base with progress, ask it with citations.

Contract:

- ``GET /ui/kb``: the knowledge bases (``name``, ``files``, ``chunks``).
- ``GET /ui/kb/{name}``: its uploaded documents and, once built, its file and chunk counts.
- ``POST /ui/kb/{name}/files`` (multipart ``files``; a file's name may carry a relative folder path, as a
  folder picker sends it): saved under the knowledge base's ``docs/`` folder,
  ``$PUYU_HOME/kb/<name>/docs/``; unsupported types are skipped and listed.
- ``DELETE /ui/kb/{name}/files/{path}``: delete an uploaded document (the next sync drops its chunks).
- ``POST /ui/kb/{name}/sync``: events ``progress`` (``done``/``total`` files, the ``file``) as each file is
  indexed, then ``report`` (added, changed, removed, unchanged, skipped, chunks); the store stays
  crash-safe and incremental (:mod:`puyu.rag.sync`).  One sync per knowledge base at a time.
- ``POST /ui/kb/{name}/ask``: events ``sources`` (the numbered chunks given to the model, with their text,
  file, headings, lines/page), ``delta`` pieces of the answer, then ``answer`` (the checked text, valid and
  invalid citation numbers, ``refused``, ``uncited``; :mod:`puyu.rag.answer`).

Answers are generated through the OpenAI-compatible endpoint of :class:`~puyu.web.app.UIConfig`
(:func:`answer_client`), never by the engine in a request thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from fastapi import FastAPI, File, UploadFile
from pydantic import BaseModel, Field

from puyu.errors import ConfigError
from puyu.generation.sampling import LIMITS, SamplingParams
from puyu.web.events import Emit, event_stream

log = logging.getLogger(__name__)


class AskRequest(BaseModel):
    """What the knowledge-base tab sends to ask a question."""

    question: str
    k: int = Field(5, ge=1, le=20)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    min_similarity: float = Field(0.25, ge=-1.0, le=1.0)
    temperature: float = Field(0.0, **LIMITS["temperature"])
    top_p: float = Field(1.0, **LIMITS["top_p"])
    max_tokens: int = Field(256, ge=1)


def answer_client(config):
    """The :class:`~puyu.client.OpenAIClient` that answers knowledge-base questions at ``config.api_base``.

    With the served model's tokenizer (in-process) it also counts prompt tokens, so the answerer drops
    sources until the prompt fits ``context_length``; against a remote server the server's own limit applies.
    """
    from puyu.client import OpenAIClient

    return OpenAIClient(config.api_base, config.api_key, config.model_name(), tokenizer=config.tokenizer,
                        context_length=config.context_length)


def docs_folder(name: str) -> Path:
    """Where the UI keeps the documents uploaded to knowledge base ``name``."""
    from puyu.rag.kb import kb_folder

    return kb_folder(name) / "docs"


def upload_path(docs: Path, filename: str) -> Path:
    """The file ``filename`` (``a.md`` or ``folder/a.md``) lands at under ``docs``; refuses escapes and hidden parts."""
    from puyu.rag.loaders import LOADERS

    parts = [p for p in PurePosixPath(filename.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts or filename.startswith("/") or any(p == ".." or p.startswith(".") for p in parts):
        raise ConfigError(f"{filename!r}: not a plain relative file name")
    if PurePosixPath(parts[-1]).suffix.lower() not in LOADERS:
        raise ConfigError(f"{filename}: unsupported file type; supported: {', '.join(sorted(LOADERS))}")
    return docs.joinpath(*parts)


def relative_source(source: str, docs: Path) -> str:
    path = Path(source)
    return path.relative_to(docs).as_posix() if docs in path.parents else source


def hit_view(number: int, hit, docs: Path) -> dict[str, Any]:
    """A retrieved chunk as the tab shows it; uploaded files are named relative to the docs folder."""
    hit = dataclasses.replace(hit, source=relative_source(hit.source, docs))
    return {"number": number, "location": hit.location(), **{k: v for k, v in hit.to_dict().items() if k != "id"}}


def kb_summary(name: str) -> dict[str, Any]:
    from puyu.rag import KnowledgeBase

    kb = KnowledgeBase.open(name)
    try:
        stats = kb.stats()
    finally:
        kb.close()
    return {"name": name, "files": stats["files"], "chunks": stats["chunks"], "pending": stats["pending_files"]}


def sync_kb(name: str, emit: Emit) -> None:
    """One incremental sync of the uploaded documents, reporting progress file by file."""
    from puyu.rag import KnowledgeBase
    from puyu.rag.loaders import discover

    docs = docs_folder(name)
    if not docs.is_dir() or not discover([docs]):
        raise ConfigError(f"knowledge base {name} has no documents yet; upload files first")
    kb = KnowledgeBase.create(name)
    try:
        report = kb.build([docs], on_progress=lambda done, total: emit({"type": "progress", "done": done, "total": total}))
        emit({"type": "report", "added": len(report.added), "changed": len(report.changed), "removed": len(report.removed),
              "unchanged": report.unchanged, "chunks_written": report.chunks_written, "chunks_total": report.chunks_total,
              "skipped": [{"file": relative_source(p, docs), "reason": reason} for p, reason in report.skipped]})
    finally:
        kb.close()


def ask_kb(name: str, body: AskRequest, client, emit: Emit) -> None:
    from puyu.rag import KnowledgeBase

    kb = KnowledgeBase.open(name)
    docs = docs_folder(name)
    try:
        params = SamplingParams(temperature=body.temperature, top_p=body.top_p, max_new_tokens=body.max_tokens)
        stream = kb.ask_stream(body.question, client, params=params, k=body.k, min_similarity=body.min_similarity,
                               search={"mode": body.mode})
        emit({"type": "sources", "sources": [hit_view(n, hit, docs) for n, hit in enumerate(stream.sources, 1)]})
        for piece in stream:
            emit({"type": "delta", "text": piece})
        answer = stream.answer
        emit({"type": "answer", "text": answer.text, "citations": [c.number for c in answer.citations], "invalid": answer.invalid,
              "refused": answer.refused, "uncited": answer.uncited})
    finally:
        kb.close()


def add_kb_routes(app: FastAPI, config) -> None:
    """Add the ``/ui/kb`` routes (see the module docstring); ``config`` is the :class:`~puyu.web.app.UIConfig`."""
    from fastapi.concurrency import run_in_threadpool

    building: set[str] = set()
    guard = threading.Lock()

    @app.get("/ui/kb")
    async def list_knowledge_bases():
        from puyu.rag import list_kbs

        return await run_in_threadpool(lambda: [kb_summary(name) for name in list_kbs()])

    @app.get("/ui/kb/{name}")
    async def describe(name: str):
        def read() -> dict[str, Any]:
            from puyu.rag.loaders import discover

            docs = docs_folder(name)
            files = discover([docs]) if docs.is_dir() else []
            uploaded = [{"path": relative_source(str(p), docs), "bytes": p.stat().st_size} for p in files]
            built = (docs.parent / "kb.json").is_file()
            return {"name": name, "built": built, "docs": uploaded, **(kb_summary(name) if built else {"files": 0, "chunks": 0})}

        return await run_in_threadpool(read)

    @app.post("/ui/kb/{name}/files")
    def upload(name: str, files: list[UploadFile] = File(...)):
        docs = docs_folder(name)
        saved, skipped = [], []
        for upload in files:
            try:
                target = upload_path(docs, upload.filename or "")
            except ConfigError as exc:
                skipped.append({"file": upload.filename, "reason": str(exc)})
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")  # hidden: a build never reads a half-written upload
            with partial.open("wb") as out:
                shutil.copyfileobj(upload.file, out)
            os.replace(partial, target)
            saved.append(relative_source(str(target), docs))
        return {"saved": saved, "skipped": skipped}

    @app.delete("/ui/kb/{name}/files/{path:path}")
    def delete(name: str, path: str):
        target = upload_path(docs_folder(name), path)
        if not target.is_file():
            raise ConfigError(f"knowledge base {name} has no uploaded document {path!r}")
        target.unlink()
        return {"deleted": path}

    @app.post("/ui/kb/{name}/sync")
    async def sync(name: str):
        docs_folder(name)  # a bad name fails here with 400, before the stream starts
        with guard:
            if name in building:
                raise ConfigError(f"knowledge base {name} is already being built; wait for that build to finish")
            building.add(name)

        def work(emit: Emit) -> None:
            try:
                sync_kb(name, emit)
            finally:
                with guard:
                    building.discard(name)

        return event_stream(work, name="puyu-kb-sync")

    @app.post("/ui/kb/{name}/ask")
    async def ask(name: str, body: AskRequest):
        docs_folder(name)
        return event_stream(lambda emit: ask_kb(name, body, config.generator or answer_client(config), emit), name="puyu-kb-ask")
