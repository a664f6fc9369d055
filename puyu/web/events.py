"""Blocking work streamed to the browser as server-sent events.

Contract: :func:`event_stream` runs ``work(emit)`` in one dedicated thread (the
agent's sandbox, a knowledge base's SQLite connection and an HTTP client all
stay in the thread that opened them, which Starlette's thread pool would not
guarantee) and returns a ``text/event-stream`` response in which every
``emit(dict)`` becomes one ``data: {json}`` event.  The stream always ends with
``{"type": "done"}`` or ``{"type": "error", "message": ...}``: a
:class:`~puyu.errors.PuyuError` carries its own message, anything else is
logged and reported by type.  When the browser goes away (the stop button, a
reload) the next ``emit`` raises :class:`Disconnected` inside ``work``, so it
unwinds and releases what it holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from puyu.errors import PuyuError

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
_END = object()


class Disconnected(Exception):
    """The browser closed the stream; raised by ``emit`` so the work stops."""


def event_stream(work: Callable[[Emit], None], name: str = "puyu-ui") -> StreamingResponse:
    """Run ``work(emit)`` in a new thread and stream what it emits (see the module docstring)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def emit(event: dict[str, Any]) -> None:
        if gone.is_set():
            raise Disconnected
        put(event)

    def run() -> None:
        final: dict[str, Any] | None = None
        try:
            work(emit)
            final = {"type": "done"}
        except Disconnected:
            log.info("%s: the browser went away; stopped", name)
        except PuyuError as exc:
            final = {"type": "error", "message": str(exc)}
        except Exception as exc:  # the UI must show the failure and stay usable
            log.exception("%s failed", name)
            final = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            if final is not None:
                put(final)
            put(_END)

    async def events() -> AsyncIterator[str]:
        try:
            while (event := await queue.get()) is not _END:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        finally:
            gone.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
