"""Tool calls back from model output: the parsers per template family, and the server's
chat endpoint end to end on a model scripted to emit a call (in-process ASGI)."""

from __future__ import annotations

import asyncio
import json

import httpx
import torch

from puyu.engine import EngineConfig, LLMEngine
from puyu.serve.app import create_app
from puyu.tokenizer.tool_formats import ToolCallStream, tool_format

CALL = {"name": "add", "arguments": {"a": 1, "b": 2}}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
CHATML_OUTPUT = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


def test_each_family_parses_its_format():
    outputs = {
        "chatml": CHATML_OUTPUT,
        "internlm2": 'Let me add.<|action_start|><|plugin|>\n{"name": "add", "parameters": {"a": 1, "b": 2}}<|action_end|>\n',
        "llama3": '{"name": "add", "parameters": {"a": 1, "b": 2}}',
    }
    for family, text in outputs.items():
        content, calls = tool_format(family).parse(text)
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1, "b": 2})]
        assert content == ("" if family == "llama3" else "Let me add.")


def test_braces_inside_arguments_do_not_end_the_call():
    text = '<tool_call>\n{"name": "python", "arguments": {"code": "print({1: 2})}"}}\n</tool_call>'
    _, calls = tool_format("chatml").parse(text)
    assert json.loads(calls[0].arguments) == {"code": "print({1: 2})}"}


def test_broken_calls_stay_text():
    for text in ['<tool_call>{"name": "add", "arguments": </tool_call>', "<tool_call>[1, 2]</tool_call>", "just words"]:
        assert tool_format("chatml").parse(text) == (text, [])


def test_stream_holds_back_from_the_first_sign_of_a_call():
    stream = ToolCallStream("chatml")
    pieces = [stream.feed(p) for p in ["Let me", " add.\n<tool", "_call>\n{", '"name"']]
    assert "".join(pieces) == "Let me add.\n" and stream.holding
    near_miss = ToolCallStream("chatml")
    assert "".join(near_miss.feed(p) for p in ["a <to", "ol> b"]) == "a <tool> b"


class ScriptedModel(torch.nn.Module):
    """A real tiny Transformer (so the paged cache works) whose logits are forced to follow a script."""

    def __init__(self, inner, script: list[int], prompt_len: int):
        super().__init__()
        self.inner, self.script, self.prompt_len = inner, script, prompt_len
        self.config = inner.config

    @property
    def device(self):
        return self.inner.device

    @property
    def dtype(self):
        return self.inner.dtype

    def forward(self, tokens, positions=None, cache=None, mask=None, logits_to_keep=0):
        logits = self.inner(tokens, positions, cache=cache, logits_to_keep=logits_to_keep)
        forced = torch.full_like(logits, -1e9)
        for row, position in enumerate(positions[0, logits_to_keep].tolist()):
            forced[0, row, self.script[min(max(position - self.prompt_len + 1, 0), len(self.script) - 1)]] = 0
        return forced


async def chat_and_stream(app, body: dict) -> tuple[dict, list[dict]]:
    """POST ``body`` to the in-process app's chat endpoint plainly and streamed: the response and the stream's chunks."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        plain = (await http.post("/v1/chat/completions", json=body)).json()
        chunks = []
        async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        return plain, chunks


def test_server_returns_and_streams_tool_calls(tiny_server_model):
    from puyu.model import load_model

    model, tokenizer = load_model(tiny_server_model, dtype="float32", device="cpu")
    messages = [{"role": "user", "content": "Add 1 and 2"}]
    prompt = tokenizer.render(messages, TOOLS, add_generation_prompt=True).ids
    script = tokenizer.encode(CHATML_OUTPUT, add_special_tokens=False) + [tokenizer.token_id("<|im_end|>")]
    engine = LLMEngine(ScriptedModel(model, script, len(prompt)), tokenizer, EngineConfig())
    app = create_app(engine, "tiny")
    body = {"model": "tiny", "messages": messages, "tools": TOOLS, "max_tokens": 100}

    try:
        plain, chunks = asyncio.run(chat_and_stream(app, body))
    finally:
        engine.shutdown()
    assert "choices" in plain, plain
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me add."
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "add"
    assert json.loads(call["function"]["arguments"]) == CALL["arguments"]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    streamed_text = "".join(d.get("content") or "" for d in deltas)
    streamed_calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert "<tool_call>" not in streamed_text and streamed_text.strip() == "Let me add."
    assert streamed_calls[0]["function"]["name"] == "add" and streamed_calls[0]["index"] == 0
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
