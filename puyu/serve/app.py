"""The OpenAI-compatible HTTP app: ``create_app(engine, name)`` assembles state, auth, errors and the routes.

Routes live in one module each, as ``APIRouter`` handlers over the shared
:class:`~puyu.serve.state.ServerState`: :mod:`puyu.serve.info` (health,
Prometheus metrics, models), :mod:`puyu.serve.chat` (chat completions with tool
calls), :mod:`puyu.serve.completions` (text completions, echo and logprobs) and
:mod:`puyu.serve.embeddings` (the served model's pooled hidden states, or the
sentence embedder given as ``embedder``, served under its own model id).
Errors are answered in OpenAI's shape (:mod:`puyu.serve.errors`); requests
reach the engine through :mod:`puyu.serve.bridge`, and a request whose client
goes away is aborted.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from puyu.engine import LLMEngine
from puyu.errors import ConfigError
from puyu.model.embedder import Embedder
from puyu.serve import chat, completions, embeddings, info
from puyu.serve.errors import OpenAIError, add_error_handlers, error_response
from puyu.serve.metrics import ServerMetrics
from puyu.serve.state import ServerState


class APIKeyGuard:
    """Answers a ``/v1`` request without ``Authorization: Bearer <api_key>`` with a 401, passes the rest on untouched.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` (BaseHTTPMiddleware) relays every chunk of a
    streamed response through a memory stream and a second task, work on the HTTP thread for every token of every
    stream, which on a 2-core machine takes CPU from the engine's compute threads."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), None)
            if given != self.expected:
                response = error_response(OpenAIError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                                                      code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(engine: LLMEngine, served_name: str, api_key: str | None = None, cors_origins: list[str] | None = None,
               drain_timeout: float = 5.0, embedder: Embedder | None = None, image_dir: str | Path | None = None) -> FastAPI:
    """The app serving ``engine`` as model ``served_name`` (and ``embedder`` on ``/v1/embeddings``); ``api_key`` guards
    ``/v1``; shutdown drains for ``drain_timeout`` s; local image paths are read under ``image_dir`` only."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield  # the engine loop is already running (puyu serve) or starts with the first request
        await asyncio.to_thread(engine.shutdown, drain_timeout)

    app = FastAPI(title="puyu", lifespan=lifespan)
    app.state.server = ServerState(engine, served_name, ServerMetrics(engine), embedder, Path(image_dir) if image_dir else None)
    if app.state.server.names_embedder(served_name):
        raise ConfigError(f"the served model and the embedder are both named {served_name!r}; "
                          "give the model another name with --served-model-name")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])

    if api_key:
        app.add_middleware(APIKeyGuard, api_key=api_key)
    add_error_handlers(app)
    for module in (info, chat, completions, embeddings):
        app.include_router(module.router)
    return app
