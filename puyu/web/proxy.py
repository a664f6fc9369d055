"""The web UI in front of a remote OpenAI-compatible server (``puyu web --api-base URL``).

Contract: :func:`create_proxy_app` returns a FastAPI app that serves the UI
(:func:`puyu.web.app.mount_ui`) and forwards every ``/v1/*`` request to
``api_base`` with httpx, adding ``Authorization: Bearer <api_key>``, so the
browser's chat talks to the same origin and never sees the key.  Responses are
streamed through as they arrive (SSE included), with the upstream status and
content type; a browser that stops reading closes the upstream request, so the
remote server aborts the generation.  When the remote server cannot be reached
the browser gets a 502 in OpenAI's error shape naming the URL.  No model is
loaded in this process.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from puyu.errors import PuyuError
from puyu.serve.errors import OpenAIError, as_openai_error, error_response
from puyu.web.app import UIConfig, mount_ui

log = logging.getLogger(__name__)

FORWARDED_HEADERS = ("content-type", "accept")


def create_proxy_app(api_base: str, api_key: str | None = None, model: str | None = None, files: str | None = None,
                     ui: UIConfig | None = None, allow: tuple[str, ...] = ()) -> FastAPI:
    """The UI app for a remote server.

    Args:
        api_base: the remote OpenAI-compatible base URL, e.g. ``http://127.0.0.1:23333/v1``.
        api_key: the remote server's key (sent upstream, never to the browser).
        model: the remote model to use (None: the first one it lists).
        files: the folder the agent's ``read_file`` and zoo tools work in.
        allow: effects those tools may have (see :class:`UIConfig`).
        ui: a ready :class:`UIConfig` instead (tests inject scripted models with it).
    """
    api_base = api_base.rstrip("/")
    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await client.aclose()

    app = FastAPI(title="puyu web", lifespan=lifespan)

    @app.exception_handler(OpenAIError)
    @app.exception_handler(PuyuError)
    async def error(request: Request, exc: Exception):  # the same JSON shape as the OpenAI API's own errors
        return error_response(exc if isinstance(exc, OpenAIError) else as_openai_error(exc))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request):
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        upstream = client.build_request(request.method, f"{api_base}/{path}", params=request.query_params,
                                        content=await request.body(), headers=headers)
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise OpenAIError(502, f"cannot reach the model server at {api_base}: {type(exc).__name__} {exc}".strip(),
                              kind="server_error", code="upstream_unreachable") from None

        async def body() -> AsyncIterator[bytes]:
            try:
                async for piece in response.aiter_bytes():
                    yield piece
            finally:
                await response.aclose()

        media_type = response.headers.get("content-type")
        if media_type and media_type.startswith("text/event-stream"):
            return StreamingResponse(body(), status_code=response.status_code, media_type=media_type)
        content = await response.aread()
        await response.aclose()
        return Response(content, status_code=response.status_code, media_type=media_type)

    mount_ui(app, ui or UIConfig(api_base=api_base, api_key=api_key, model=model, files=files, allow=allow))
    return app
