"""Errors in OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``, and the app's handlers.

Invalid JSON or parameters 400, a bad API key 401, an unknown model 404, a
prompt longer than the context 400 (``context_length_exceeded``, with the
lengths), a full queue 429 with ``Retry-After``, anything unexpected 500 — the
server keeps serving.  The web UI's proxy reuses these shapes.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from puyu.errors import ContextLengthError, PuyuError, QueueFullError


class OpenAIError(Exception):
    """An HTTP error to answer with: ``status``, the message, OpenAI's ``type``/``code``/``param``, extra headers."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param, self.headers = status, message, kind, code, param, headers


def error_response(err: OpenAIError) -> JSONResponse:
    body = {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def as_openai_error(exc: PuyuError) -> OpenAIError:
    if isinstance(exc, ContextLengthError):
        return OpenAIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, QueueFullError):
        return OpenAIError(429, str(exc), kind="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    return OpenAIError(400, str(exc))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
    return error_response(OpenAIError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None))


async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return error_response(exc)


async def _puyu_error(request: Request, exc: PuyuError) -> JSONResponse:
    return error_response(as_openai_error(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's shape."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(PuyuError, _puyu_error)
    app.add_exception_handler(Exception, _unexpected)
