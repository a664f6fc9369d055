"""A Mistral-family model's tool calls through the paths the server and agents use: a tiny model with Mistral's
control tokens and Mistral-Nemo's published template, scripted to reply with a call, answers the chat endpoint
with ``tool_calls`` (streamed too, with no marker in the content), the next turn renders with the ids it got back,
a forced call is refused with a clear error, and :class:`~puyu.client.LocalClient` (the agents' client) parses the
same reply and flags a broken one."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from puyu import LLM
from puyu.client import LocalClient
from puyu.engine import EngineConfig, LLMEngine
from puyu.generation import SamplingParams
from puyu.serve.app import create_app
from tests.conftest import make_hf_model
from tests.serve.test_tool_calls import ScriptedModel, chat_and_stream
from tests.tokenizer.test_zoo_templates import MISTRAL_NEMO

CONTROL_TOKENS = ["</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                  "[/TOOL_RESULTS]"]
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                                                           "b": {"type": "integer"}}}}}]
MESSAGES = [{"role": "user", "content": "Add 1 and 2"}]
REPLY = 'Let me add.[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}]'  # as Mistral-Nemo writes it


@pytest.fixture(scope="module")
def mistral_model(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny Mistral folder: the tiny BPE plus Mistral's control tokens, Mistral-Nemo's template."""
    folder = tmp_path_factory.mktemp("mistral") / "tiny"
    backend = HFTokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    make_hf_model(folder, tiny_tokenizer_dir, arch="mistral", vocab_size=416, max_position_embeddings=1024)
    backend.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "chat_template": MISTRAL_NEMO}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _script(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_id]


class ScriptedReply(torch.nn.Module):
    """A real tiny Transformer whose next-token choice (greedy or not) follows a script: for ``generate``."""

    def __init__(self, inner, script: list[int], prompt_len: int):
        super().__init__()
        self.inner, self.script, self.prompt_len = inner, script, prompt_len
        self.config, self.new_cache = inner.config, inner.new_cache

    @property
    def device(self):
        return self.inner.device

    def forward(self, tokens, positions, cache=None, logits_to_keep=0):
        logits = self.inner(tokens, positions, cache=cache, logits_to_keep=logits_to_keep)
        step = int(positions[0, -1]) - self.prompt_len + 1
        forced = torch.full_like(logits, -1e9)
        forced[:, -1, self.script[min(step, len(self.script) - 1)]] = 0
        return forced


def test_server_returns_streams_and_takes_back_mistral_calls(mistral_model):
    from puyu.model import load_model

    model, tokenizer = load_model(mistral_model, dtype="float32", device="cpu")
    assert tokenizer.template.family == "mistral"
    prompt = tokenizer.render(MESSAGES, TOOLS, add_generation_prompt=True).ids
    engine = LLMEngine(ScriptedModel(model, _script(tokenizer, REPLY), len(prompt)), tokenizer, EngineConfig())
    app = create_app(engine, "tiny")
    body = {"model": "tiny", "messages": MESSAGES, "tools": TOOLS, "max_tokens": 100}

    async def run():
        plain, chunks = await chat_and_stream(app, body)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return plain, chunks, await http.post("/v1/chat/completions", json={**body, "tool_choice": "required"})

    try:
        plain, chunks, forced = asyncio.run(run())
    finally:
        engine.shutdown()
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me add."
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "add" and json.loads(call["function"]["arguments"]) == {"a": 1, "b": 2}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == "Let me add."  # no [TOOL_CALLS] leaks into content
    assert [tc["function"]["name"] for d in deltas for tc in d.get("tool_calls", [])] == ["add"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # The client sends the call back with the result: Mistral's template takes the 9-character id.
    turn = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "3"}]
    assert f'"call_id": "{call["id"]}"' in tokenizer.render_text(turn, TOOLS)
    assert forced.status_code == 400 and "cannot be forced by a grammar" in forced.text


def test_local_client_parses_mistral_calls_and_flags_broken_ones(mistral_model):
    llm = LLM(str(mistral_model), dtype="float32", device="cpu")
    client = LocalClient(llm)  # constrained by default: Mistral's format has no grammar, so the reply is parsed
    prompt = client.prompt_ids(MESSAGES, TOOLS)
    inner, params = llm.model, SamplingParams(temperature=0, max_new_tokens=60)
    llm.model = ScriptedReply(inner, _script(llm.tokenizer, REPLY), len(prompt))
    result = client.chat(MESSAGES, params, TOOLS)
    assert result.text == "Let me add." and result.finish_reason == "tool_calls" and not result.malformed
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("add", {"a": 1, "b": 2})]
    llm.model = ScriptedReply(inner, _script(llm.tokenizer, '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1,'), len(prompt))
    broken = client.chat(MESSAGES, params, TOOLS)
    assert broken.tool_calls == [] and broken.malformed and broken.text.startswith("[TOOL_CALLS]")
