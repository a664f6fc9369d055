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

from fastapi import FastAPI, Request

from puyu.engine import LLMEngine
from puyu.errors import ConfigError
from puyu.model.embedder import Embedder
from puyu.serve import chat, completions, embeddings, info
from puyu.serve.errors import OpenAIError, add_error_handlers, error_response
from puyu.serve.metrics import ServerMetrics
from puyu.serve.state import ServerState


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

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1") and request.method != "OPTIONS":
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return error_response(OpenAIError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                                                  code="invalid_api_key"))
        return await call_next(request)

    add_error_handlers(app)
    for module in (info, chat, completions, embeddings):
        app.include_router(module.router)
    return app
