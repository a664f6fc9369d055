"""The browser UI: one HTML/JS/CSS page with chat, agent and knowledge-base tabs, mounted on a FastAPI app.

Why FastAPI and one hand-written page rather than Gradio: puyu already serves
the OpenAI API with FastAPI/uvicorn, so the chat tab talks to the very same
``/v1/chat/completions`` SSE stream as any client (the UI works unchanged on
``puyu serve --web``, and in ``--api-base`` mode against any OpenAI-compatible
server through :mod:`puyu.web.proxy`); there is no heavy dependency; stop,
regenerate and history are fully under our control; and a plain page is easy to
drive from Playwright in tests.  Markdown is rendered in the browser by the
vendored ``marked`` + ``DOMPurify`` (``static/vendor/``), so the UI works offline.

Contract: :func:`mount_ui(app, config) <mount_ui>` adds

- ``GET /`` (the page) and ``/static/*`` (its scripts, styles, vendored libraries);
- ``GET /ui/config``: the model name, the agent's tools, whether a key is needed, whether the model takes images;
- ``/ui/agent`` (:mod:`puyu.web.agent_routes`) and ``/ui/kb/*`` (:mod:`puyu.web.kb_routes`).

The agent and knowledge-base routes never call the model in the request
thread: they go through an OpenAI-compatible endpoint (``config.api_base``:
the server's own ``/v1`` in-process, so the engine keeps computing in the main
thread, or the remote server).  When ``config.key`` is set, ``/ui/*`` routes need
``Authorization: Bearer KEY`` like ``/v1``; the page and its static files do not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
AGENT_TOOLS = ["python", "calculator", "solve", "search_kb"]


@dataclass
class UIConfig:
    """How the UI's server-side routes reach the model, and what they may use.

    Attributes:
        api_base: the OpenAI-compatible base URL the agent and knowledge-base routes call (ends in ``/v1``).
        api_key: the key for ``api_base``.
        model: the model name there (None: the first one it lists).
        tokenizer: the served model's tokenizer when in-process; the knowledge-base route counts prompt
            tokens with it so that the sources it sends fit ``context_length``.
        context_length: the model's window in tokens, when known.
        key: the key the ``/ui`` routes require (the server's ``--api-key``); None for none.
        files: the folder the agent's ``read_file`` tool may read (None: the tool is not offered).
        allow: effects the agent tab's tools may have (``writes_files``, ``heavy``: the zoo's OCR, speech, image edits).
        agent_model: ``agent_model(params: SamplingParams) -> ChatModel`` replaces the API model (tests pass a scripted one).
        generator: a :class:`~puyu.client.ChatClient` that replaces the API for knowledge-base answers
            (tests pass a scripted one).
        images: the model takes images (a vision-language model): the chat tab offers image uploads.
    """

    api_base: str
    api_key: str | None = None
    model: str | None = None
    tokenizer: Any = None
    context_length: int | None = None
    key: str | None = None
    files: str | None = None
    allow: tuple[str, ...] = ()
    agent_model: Callable[[Any], Any] | None = None
    generator: Any = None
    images: bool = False

    def model_name(self) -> str:
        """The model to ask at ``api_base``, looked up once when not given."""
        if self.model is None:
            from puyu.client import OpenAIClient

            self.model = OpenAIClient(self.api_base, self.api_key).model
        return self.model

    def tools(self) -> list[str]:
        """The agent tab's tools: the built-ins, and with a ``files`` folder ``read_file`` and the zoo's tools whose
        effects (writing files, heavy models) are in ``allow``."""
        if not self.files:
            return AGENT_TOOLS
        from puyu.agent.folder import Folder
        from puyu.agent.zoo import ZOO

        allowed = [name for name, make in ZOO.items() if make(Folder(self.files, name)).effects <= set(self.allow)]
        return AGENT_TOOLS + ["read_file", *allowed]


def local_url(host: str, port: int) -> str:
    """The URL this machine reaches a server listening on ``host:port`` at (a wildcard host means loopback)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def mount_ui(app: FastAPI, config: UIConfig) -> FastAPI:
    """Add the page, its static files and the ``/ui`` routes to ``app`` (see the module docstring)."""
    from puyu.web.agent_routes import add_agent_routes
    from puyu.web.kb_routes import add_kb_routes

    app.state.ui = config
    log.info("web UI mounted; its agent and knowledge-base routes call the model at %s", config.api_base or "(set at start)")

    @app.middleware("http")
    async def check_ui_key(request: Request, call_next):
        if config.key and request.url.path.startswith("/ui/") and request.url.path != "/ui/config":
            if request.headers.get("authorization") != f"Bearer {config.key}":
                return JSONResponse({"error": {"message": "this server needs its API key: enter it under Settings",
                                               "type": "invalid_request_error", "code": "invalid_api_key"}}, status_code=401)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/ui/config")
    async def ui_config():
        return {"model": config.model, "tools": config.tools(), "needs_key": bool(config.key),
                "context_length": config.context_length, "images": config.images}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_agent_routes(app, config)
    add_kb_routes(app, config)
    return app
