"""``POST /v1/chat/completions`` and ``POST /v1/completions`` in OpenAI's formats.

Chat renders messages (and ``tools``) through the model's own template — the
same render that training uses — and parses tool calls back into
``message.tool_calls`` (streamed as ``delta.tool_calls``).  Completions accept
text or token-id prompts, ``echo`` and ``logprobs`` (with ``max_tokens: 0`` and
``echo: true`` a request only scores its prompt, the contract of
lm-evaluation-harness's ``local-completions`` backend).  Streaming is
server-sent events ending with ``data: [DONE]``; ``stream_options.include_usage``
adds a usage chunk.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from puyu.engine import TokenLogprob
from puyu.generation.constraints import check_grammar
from puyu.serve.app import ChoiceResult, Job, OpenAIError
from puyu.serve.protocol import ChatCompletionRequest, CompletionRequest
from puyu.serve.tool_calls import ToolCallStream, parse_tool_calls


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(results: list[ChoiceResult]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results[:1]) if results else 0
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def add_endpoints(app: FastAPI) -> None:
    engine = app.state.engine
    tokenizer = engine.tokenizer

    def token_text(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    def check_model(name: str) -> None:
        if name != app.state.name:
            raise OpenAIError(404, f"the model {name!r} does not exist; this server serves {app.state.name!r}", code="model_not_found", param="model")

    def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
        def entry(token: int, logprob: float) -> dict[str, Any]:
            text = token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return {"content": [{**entry(i.token, i.logprob), "top_logprobs": [entry(t, lp) for t, lp in i.top]} for i in items]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        tools = body.selected_tools()
        family = tokenizer.template.select([], tools).family if tools and tokenizer.template else "custom"
        grammar = body.grammar(tools, family)
        if grammar is not None:
            check_grammar(grammar, tokenizer, engine.model.config.vocab_size)
        prompt = tokenizer.render([m.to_puyu() for m in body.messages], tools, add_generation_prompt=True).ids
        limit = body.max_completion_tokens or body.max_tokens or (engine.max_model_len - len(prompt))
        keep_specials = family == "internlm2" and bool(tools)  # its action markers are special tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        jobs = [Job(prompt, body.sampling(max(limit, 1), i, not keep_specials, grammar), top) for i in range(body.n)]
        running = app.state.run(jobs)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return StreamingResponse(_chat_stream(running, body, rid, created, family if tools else None), media_type="text/event-stream")
        results = await running.collect()
        choices = []
        for i, r in enumerate(results):
            content, calls = parse_tool_calls(r.text, family) if tools else (r.text, [])
            message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
            if calls:
                message["tool_calls"] = [c.to_openai() for c in calls]
            choices.append({"index": i, "message": message, "logprobs": chat_logprobs(r.logprobs) if top is not None else None,
                            "finish_reason": "tool_calls" if calls else r.finish_reason})
        return {"id": rid, "object": "chat.completion", "created": created, "model": app.state.name, "choices": choices,
                "usage": _usage(results)}

    async def _chat_stream(running, body: ChatCompletionRequest, rid: str, created: int, family: str | None) -> AsyncIterator[str]:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": app.state.name}
        if body.include_usage:
            head["usage"] = None
        results = [ChoiceResult() for _ in range(body.n)]
        streams = [ToolCallStream(family or "custom") for _ in range(body.n)]
        for i in range(body.n):
            yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})
        async for i, event in running.events():
            results[i].add(event)
            if event.error:
                yield _sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error", "param": None, "code": None}})
                continue
            piece = streams[i].feed(event.delta.text) if event.delta else ""
            if piece or event.logprob is not None:
                logprobs = chat_logprobs([event.logprob]) if body.logprobs and event.logprob is not None else None
                yield _sse({**head, "choices": [{"index": i, "delta": {"content": piece}, "logprobs": logprobs, "finish_reason": None}]})
            if event.finished:
                reason = event.finish_reason
                content, calls = parse_tool_calls(results[i].text, family) if family else (results[i].text, [])
                if calls:
                    reason = "tool_calls"
                    deltas = [c.to_openai(index=k) for k, c in enumerate(calls)]
                    yield _sse({**head, "choices": [{"index": i, "delta": {"tool_calls": deltas}, "logprobs": None, "finish_reason": None}]})
                elif streams[i].holding:  # looked like a call but was not one: it is content
                    yield _sse({**head, "choices": [{"index": i, "delta": {"content": results[i].text[streams[i].sent :]}, "logprobs": None, "finish_reason": None}]})
                yield _sse({**head, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}]})
        if body.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(results)})
        yield "data: [DONE]\n\n"

    def completion_logprobs(tokens: list[int], items: list[TokenLogprob | None], offset: int) -> dict[str, Any]:
        texts = [token_text(t) for t in tokens]
        offsets, at = [], offset
        for text in texts:
            offsets.append(at)
            at += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [None if i is None else i.logprob for i in items],
            "top_logprobs": [None if i is None else {token_text(t): lp for t, lp in i.top} for i in items],
            "text_offset": offsets,
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        if body.suffix:
            raise OpenAIError(400, "suffix is not supported", param="suffix")
        prompts = [p if isinstance(p, list) else tokenizer.encode(p) for p in body.prompts()]
        if not prompts:
            raise OpenAIError(400, "prompt is empty", param="prompt")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if max_tokens == 0 and not body.echo:
            raise OpenAIError(400, "max_tokens 0 needs echo: true (scoring the prompt)", param="max_tokens")
        if body.stream and body.echo and body.logprobs is not None:
            raise OpenAIError(400, "echo with logprobs is not supported when streaming; use stream: false", param="stream")
        jobs = [
            Job(p, body.sampling(max_tokens, j), body.logprobs, body.logprobs if body.echo and body.logprobs is not None else None)
            for p in prompts for j in range(body.n)
        ]
        running = app.state.run(jobs)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": app.state.name}
        if body.stream:
            return StreamingResponse(_completion_stream(running, body, jobs, head), media_type="text/event-stream")
        results = await running.collect()
        choices = []
        for k, (job, r) in enumerate(zip(jobs, results)):
            prefix = tokenizer.decode(job.prompt, skip_special_tokens=False) if body.echo else ""
            logprobs = None
            if body.logprobs is not None:
                generated = completion_logprobs(r.token_ids, r.logprobs[: len(r.token_ids)], len(prefix))
                if body.echo:
                    echoed = completion_logprobs(job.prompt, r.prompt_logprobs or [None] * len(job.prompt), 0)
                    generated = {key: echoed[key] + generated[key] for key in generated}
                logprobs = generated
            choices.append({"index": k, "text": prefix + r.text, "logprobs": logprobs, "finish_reason": r.finish_reason})
        usage = {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": sum(r.completion_tokens for r in results)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {**head, "choices": choices, "usage": usage}

    async def _completion_stream(running, body: CompletionRequest, jobs: list[Job], head: dict) -> AsyncIterator[str]:
        results = [ChoiceResult() for _ in jobs]
        offsets = [0] * len(jobs)
        if body.echo:
            for k, job in enumerate(jobs):
                prefix = tokenizer.decode(job.prompt, skip_special_tokens=False)
                offsets[k] = len(prefix)
                yield _sse({**head, "choices": [{"index": k, "text": prefix, "logprobs": None, "finish_reason": None}]})
        async for k, event in running.events():
            results[k].add(event)
            if event.error:
                yield _sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error", "param": None, "code": None}})
                continue
            text = event.delta.text if event.delta else ""
            logprobs = None
            if event.logprob is not None and event.delta and event.delta.token_ids:
                logprobs = completion_logprobs(event.delta.token_ids, [event.logprob], offsets[k])
                offsets[k] += len(text)
            if text or logprobs or event.finished:
                yield _sse({**head, "choices": [{"index": k, "text": text, "logprobs": logprobs,
                                                 "finish_reason": event.finish_reason if event.finished else None}]})
        if body.include_usage:
            prompt = sum(len(j.prompt) for j in jobs[:: body.n])
            completion = sum(r.completion_tokens for r in results)
            yield _sse({**head, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
        yield "data: [DONE]\n\n"
