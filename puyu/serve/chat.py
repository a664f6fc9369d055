"""``POST /v1/chat/completions`` in OpenAI's format, streamed or not.

Messages (and ``tools``) are rendered through the model's own template — the
same render that training uses — and tool calls are parsed back in the
template family's format (:mod:`puyu.tokenizer.tool_formats`) into
``message.tool_calls`` (streamed as ``delta.tool_calls``).  Streaming is
server-sent events ending with ``data: [DONE]``; ``stream_options.include_usage``
adds a usage chunk.  A vision-language model takes ``image_url`` parts: ``data:`` URLs, and local paths only
under the folder ``puyu serve --image-dir`` names; remote URLs are refused (the server fetches nothing).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from puyu.generation.constraints import check_grammar
from puyu.generation.output import Completion, TokenLogprob
from puyu.model.vlm.prompt import prompt_with_images
from puyu.serve.bridge import Job, Running, sse, sse_error, usage
from puyu.serve.protocol import ChatCompletionRequest
from puyu.serve.state import ServerState, server_state
from puyu.tokenizer.tool_formats import ToolCallStream, ToolFormat, tool_format

router = APIRouter()


def chat_logprobs(server: ServerState, items: list[TokenLogprob]) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = server.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(i.token, i.logprob), "top_logprobs": [entry(t, lp) for t, lp in i.top]} for i in items]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, server: ServerState = Depends(server_state)):
    server.check_model(body.model)
    tokenizer = server.tokenizer
    tools = body.selected_tools()
    family = tokenizer.template.select([], tools).family if tools and tokenizer.template else "custom"
    grammar = body.grammar(tools, family)
    if grammar is not None:
        check_grammar(grammar, tokenizer, server.engine.model.config.vocab_size)
    messages = [m.to_puyu() for m in body.messages]
    server.check_images(messages)
    prompt, images = prompt_with_images(server.engine.model, tokenizer, messages, tools)
    limit = body.max_completion_tokens or body.max_tokens or (server.engine.max_model_len - len(prompt))
    fmt = tool_format(family) if tools else None
    keep_specials = fmt is not None and fmt.keeps_special_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None
    jobs = [Job(prompt, body.sampling(max(limit, 1), i, server.recommended_sampling, not keep_specials, grammar), top, images=images)
            for i in range(body.n)]
    running = server.run(jobs)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": server.name}
    if body.stream:
        return StreamingResponse(_stream(server, running, body, head, fmt, len(prompt)), media_type="text/event-stream")
    results = await running.collect()
    choices = []
    for i, r in enumerate(results):
        content, calls = fmt.parse(r.text) if fmt else (r.text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
        if calls:
            message["tool_calls"] = [c.to_openai() for c in calls]
        choices.append({"index": i, "message": message, "logprobs": chat_logprobs(server, r.logprobs) if top is not None else None,
                        "finish_reason": "tool_calls" if calls else r.finish_reason})
    return {"id": rid, "object": "chat.completion", "created": created, "model": server.name, "choices": choices,
            "usage": usage(len(prompt), results)}


async def _stream(server: ServerState, running: Running, body: ChatCompletionRequest, head: dict, fmt: ToolFormat | None,
                  prompt_tokens: int) -> AsyncIterator[str]:
    if body.include_usage:
        head = {**head, "usage": None}

    def chunk(i: int, delta: dict, logprobs=None, finish_reason=None) -> str:
        return sse({**head, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]})

    results = [Completion() for _ in range(body.n)]
    streams = [ToolCallStream(fmt.family if fmt else "custom") for _ in range(body.n)]
    for i in range(body.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    async for i, event in running.events():
        results[i].add(event)
        if event.error:
            yield sse_error(event.error)
            continue
        piece = streams[i].feed(event.delta.text) if event.delta else ""
        if piece or event.logprob is not None:
            logprobs = chat_logprobs(server, [event.logprob]) if body.logprobs and event.logprob is not None else None
            yield chunk(i, {"content": piece}, logprobs)
        if event.finished:
            reason = event.finish_reason
            content, calls = fmt.parse(results[i].text) if fmt else (results[i].text, [])
            if calls:
                reason = "tool_calls"
                yield chunk(i, {"tool_calls": [c.to_openai(index=k) for k, c in enumerate(calls)]})
            elif streams[i].holding:  # looked like a call but was not one: it is content
                yield chunk(i, {"content": results[i].text[streams[i].sent :]})
            yield chunk(i, {}, finish_reason=reason)
    if body.include_usage:
        yield sse({**head, "choices": [], "usage": usage(prompt_tokens, results)})
    yield "data: [DONE]\n\n"
