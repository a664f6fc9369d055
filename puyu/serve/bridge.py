"""The bridge between HTTP handlers and the engine: submit a request's choices, stream or collect their events.

The engine computes in its own thread (the main thread under ``puyu serve``);
handlers run on the asyncio loop.  :class:`Running` submits jobs synchronously,
so a bad request (too long, queue full) fails before any response starts, then
turns the engine's callbacks into an async stream of ``(choice index, event)``
and records latency metrics on the way.  Leaving the stream early (a client
that went away) aborts the unfinished jobs and frees their blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from puyu.engine import LLMEngine, StepEvent
from puyu.errors import PuyuError
from puyu.generation import SamplingParams
from puyu.generation.output import Completion
from puyu.model.vlm.prompt import PromptImages
from puyu.serve.errors import OpenAIError
from puyu.serve.metrics import ServerMetrics


@dataclass
class Job:
    """One choice to generate: prompt ids, sampling, how many logprobs to report (None = none), the prompt's images."""

    prompt: list[int]
    params: SamplingParams
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    images: PromptImages | None = None


class Running:
    """Jobs submitted to the engine; :meth:`events` yields ``(choice index, event)`` as they happen."""

    def __init__(self, engine: LLMEngine, metrics: ServerMetrics, jobs: list[Job]):
        self.engine, self.metrics = engine, metrics
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[str] = []
        try:
            for i, job in enumerate(jobs):
                sink = lambda event, i=i: loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))  # noqa: E731
                self.ids.append(engine.submit(job.prompt, job.params, sink, logprobs=job.logprobs, prompt_logprobs=job.prompt_logprobs,
                                              images=job.images))
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

    async def collect(self) -> list[Completion]:
        """Every choice, finished; a failed one is a 500."""
        results = [Completion() for _ in self.ids]
        async for index, event in self.events():
            results[index].add(event)
        for result in results:
            if result.error:
                raise OpenAIError(500, f"generation failed: {result.error}", kind="server_error")
        return results


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def sse_error(message: str) -> str:
    """A failure in the middle of a stream, as an SSE error event."""
    return sse({"error": {"message": f"generation failed: {message}", "type": "server_error", "param": None, "code": None}})


def usage(prompt_tokens: int, results: list[Completion]) -> dict[str, int]:
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
