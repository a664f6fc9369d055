"""``POST /v1/completions`` in OpenAI's format: text or token-id prompts, ``echo`` and ``logprobs``.

With ``max_tokens: 0`` and ``echo: true`` a request only scores its prompt, the
contract of lm-evaluation-harness's ``local-completions`` backend.  Streaming is
server-sent events ending with ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from puyu.generation.output import Completion, TokenLogprob
from puyu.serve.bridge import Job, Running, sse, sse_error, usage
from puyu.serve.errors import OpenAIError
from puyu.serve.protocol import CompletionRequest
from puyu.serve.state import ServerState, server_state

router = APIRouter()


def completion_logprobs(server: ServerState, tokens: list[int], items: list[TokenLogprob | None], offset: int) -> dict[str, Any]:
    texts = [server.token_text(t) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [None if i is None else i.logprob for i in items],
        "top_logprobs": [None if i is None else {server.token_text(t): lp for t, lp in i.top} for i in items],
        "text_offset": offsets,
    }


@router.post("/v1/completions")
async def completions(body: CompletionRequest, server: ServerState = Depends(server_state)):
    server.check_model(body.model)
    if body.suffix:
        raise OpenAIError(400, "suffix is not supported", param="suffix")
    prompts = [p if isinstance(p, list) else server.tokenizer.encode(p) for p in body.prompts()]
    if not prompts:
        raise OpenAIError(400, "prompt is empty", param="prompt")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens == 0 and not body.echo:
        raise OpenAIError(400, "max_tokens 0 needs echo: true (scoring the prompt)", param="max_tokens")
    if body.stream and body.echo and body.logprobs is not None:
        raise OpenAIError(400, "echo with logprobs is not supported when streaming; use stream: false", param="stream")
    echo_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
    jobs = [Job(p, body.sampling(max_tokens, j, server.recommended_sampling), body.logprobs, echo_logprobs)
            for p in prompts for j in range(body.n)]
    running = server.run(jobs)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": server.name}
    prompt_tokens = sum(len(p) for p in prompts)
    if body.stream:
        return StreamingResponse(_stream(server, running, body, jobs, head, prompt_tokens), media_type="text/event-stream")
    results = await running.collect()
    choices = []
    for k, (job, r) in enumerate(zip(jobs, results)):
        prefix = server.tokenizer.decode(job.prompt, skip_special_tokens=False) if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(server, r.token_ids, r.logprobs[: len(r.token_ids)], len(prefix))
            if body.echo:
                echoed = completion_logprobs(server, job.prompt, r.prompt_logprobs or [None] * len(job.prompt), 0)
                logprobs = {key: echoed[key] + logprobs[key] for key in logprobs}
        choices.append({"index": k, "text": prefix + r.text, "logprobs": logprobs, "finish_reason": r.finish_reason})
    return {**head, "choices": choices, "usage": usage(prompt_tokens, results)}


async def _stream(server: ServerState, running: Running, body: CompletionRequest, jobs: list[Job], head: dict,
                  prompt_tokens: int) -> AsyncIterator[str]:
    results = [Completion() for _ in jobs]
    offsets = [0] * len(jobs)
    if body.echo:
        for k, job in enumerate(jobs):
            prefix = server.tokenizer.decode(job.prompt, skip_special_tokens=False)
            offsets[k] = len(prefix)
            yield sse({**head, "choices": [{"index": k, "text": prefix, "logprobs": None, "finish_reason": None}]})
    async for k, event in running.events():
        results[k].add(event)
        if event.error:
            yield sse_error(event.error)
            continue
        text = event.delta.text if event.delta else ""
        logprobs = None
        if event.logprob is not None and event.delta and event.delta.token_ids:
            logprobs = completion_logprobs(server, event.delta.token_ids, [event.logprob], offsets[k])
            offsets[k] += len(text)
        if text or logprobs or event.finished:
            yield sse({**head, "choices": [{"index": k, "text": text, "logprobs": logprobs,
                                            "finish_reason": event.finish_reason if event.finished else None}]})
    if body.include_usage:
        yield sse({**head, "choices": [], "usage": usage(prompt_tokens, results)})
    yield "data: [DONE]\n\n"
