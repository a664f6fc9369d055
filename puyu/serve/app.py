"""The OpenAI-compatible HTTP app: errors, auth, health, models, metrics, and the engine bridge.

``create_app(engine, name)`` returns a FastAPI app; :mod:`puyu.serve.endpoints`
adds ``/v1/chat/completions`` and ``/v1/completions``.  Every error is OpenAI's
JSON shape ``{"error": {"message", "type", "param", "code"}}``: invalid JSON
or parameters 400, a bad API key 401, an unknown model 404, a prompt longer
than the context 400 (``context_length_exceeded``, with the lengths), a full
queue 429 with ``Retry-After``, anything unexpected 500 — the server keeps
serving.  The engine runs in its own thread; requests stream its events
through asyncio, and a request whose client goes away is aborted.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from puyu.engine import LLMEngine, StepEvent, TokenLogprob
from puyu.errors import ContextLengthError, PuyuError, QueueFullError
from puyu.generation import SamplingParams
from puyu.serve.metrics import ServerMetrics


class OpenAIError(Exception):
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


@dataclass
class ChoiceResult:
    """Everything one choice produced."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    def add(self, event: StepEvent) -> None:
        if event.delta is not None:
            self.text += event.delta.text
            self.token_ids += event.delta.token_ids
        if event.logprob is not None:
            self.logprobs.append(event.logprob)
        self.prompt_tokens, self.completion_tokens = event.prompt_tokens, event.completion_tokens
        if event.finished:
            self.finish_reason, self.error, self.prompt_logprobs = event.finish_reason, event.error, event.prompt_logprobs


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    logprobs: int | None = None
    prompt_logprobs: int | None = None


class Running:
    """Jobs submitted to the engine; :meth:`events` yields ``(choice index, event)`` as they happen.

    Submission is synchronous so that a bad request (too long, queue full) fails
    before any response starts; leaving :meth:`events` early (a client that
    disconnected) aborts the unfinished jobs and frees their blocks.
    """

    def __init__(self, engine: LLMEngine, metrics: ServerMetrics, jobs: list[Job]):
        self.engine, self.metrics = engine, metrics
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[str] = []
        try:
            for i, job in enumerate(jobs):
                sink = lambda event, i=i: loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))  # noqa: E731
                self.ids.append(engine.submit(job.prompt, job.params, sink, logprobs=job.logprobs, prompt_logprobs=job.prompt_logprobs))
        except PuyuError:
            self._abort(range(len(self.ids)))
            raise

    def _abort(self, indices) -> None:
        for i in indices:
            self.engine.abort(self.ids[i])

    async def events(self) -> AsyncIterator[tuple[int, StepEvent]]:
        started = time.perf_counter()
        last = [started] * len(self.ids)
        remaining = set(range(len(self.ids)))
        try:
            while remaining:
                index, event = await self.queue.get()
                now = time.perf_counter()
                if event.ttft is not None:
                    self.metrics.ttft.observe(event.ttft)
                elif event.delta is not None:
                    self.metrics.itl.observe(now - last[index])
                last[index] = now
                if event.finished:
                    remaining.discard(index)
                    self.metrics.e2e.observe(now - started)
                yield index, event
        finally:
            self._abort(remaining)

    async def collect(self) -> list[ChoiceResult]:
        results = [ChoiceResult() for _ in self.ids]
        async for index, event in self.events():
            results[index].add(event)
        for result in results:
            if result.error:
                raise OpenAIError(500, f"generation failed: {result.error}", kind="server_error")
        return results


def create_app(engine: LLMEngine, served_name: str, api_key: str | None = None, cors_origins: list[str] | None = None,
               drain_timeout: float = 5.0) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield  # the engine loop is already running (puyu serve) or starts with the first request
        await asyncio.to_thread(engine.shutdown, drain_timeout)

    app = FastAPI(title="puyu", lifespan=lifespan)
    metrics = ServerMetrics(engine)
    app.state.engine, app.state.name, app.state.created = engine, served_name, int(time.time())
    app.state.run = lambda jobs: Running(engine, metrics, jobs)

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1") and request.method != "OPTIONS":
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return error_response(OpenAIError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'", code="invalid_api_key"))
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return error_response(OpenAIError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None))

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError):
        return error_response(exc)

    @app.exception_handler(PuyuError)
    async def puyu_error(request: Request, exc: PuyuError):
        return error_response(as_openai_error(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return error_response(OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        card = {"id": served_name, "object": "model", "created": app.state.created, "owned_by": "puyu",
                "max_model_len": engine.max_model_len}
        return {"object": "list", "data": [card]}

    from puyu.serve.endpoints import add_endpoints

    add_endpoints(app)
    return app
