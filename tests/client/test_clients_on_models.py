"""Both clients on a real tiny model: LocalClient in process, OpenAIClient against a `puyu serve` subprocess on 127.0.0.1.

The model is random: the tests check the contract (text, streaming, calls under a grammar, counts, scores), not content.
"""

from __future__ import annotations

import json
from typing import Literal

import pytest

from puyu import LLM
from puyu.agent import ToolRegistry, tool
from puyu.client import LocalClient, OpenAIClient
from puyu.generation import SamplingParams
from tests.conftest import make_hf_model
from tests.serve.conftest import API_KEY, start_server, stop_server

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
HELLO = [{"role": "user", "content": "Hello"}]


@tool
def pick(key: Literal["alpha", "beta"]) -> str:
    """Look a key up.

    Args:
        key: which entry.
    """
    return key


TOOLS = ToolRegistry([pick]).schemas()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("client") / "tiny"
    make_hf_model(folder, tiny_tokenizer_dir, max_position_embeddings=1024)  # room for a rendered tool schema
    return folder


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    s = start_server(model_dir, log=tmp_path_factory.mktemp("log") / "server.log")
    yield s
    stop_server(s)


def _check_call(result) -> None:
    assert [c.name for c in result.tool_calls] == ["pick"] and result.finish_reason == "tool_calls"
    assert json.loads(result.tool_calls[0].arguments)["key"] in ("alpha", "beta")


def test_local_client_chats_streams_and_calls_tools(model_dir):
    client = LocalClient(LLM(str(model_dir), dtype="float32", device="cpu"))
    result = client.chat(HELLO, GREEDY)
    assert result.text == result.raw == "".join(client.stream_chat(HELLO, GREEDY))
    assert result.prompt_tokens == len(client.prompt_ids(HELLO)) and 0 < result.completion_tokens <= 12
    assert result.finish_reason in ("stop", "length") and client.context_length == 1024
    _check_call(client.chat(HELLO, SamplingParams(temperature=1.0, seed=0, max_new_tokens=100), TOOLS, "required"))


def test_openai_client_against_puyu_serve(server, model_dir):
    client = OpenAIClient(server.url, API_KEY)
    assert client.model == "tiny" and client.context_length is None
    result = client.chat(HELLO, GREEDY)
    assert result.text == "".join(client.stream_chat(HELLO, GREEDY)) and 0 < result.completion_tokens <= 12
    _check_call(client.chat(HELLO, SamplingParams(temperature=1.0, seed=0, max_new_tokens=100), TOOLS, "required"))
    assert isinstance(client.complete("Once upon a time", GREEDY), str)
    llm = LLM(str(model_dir), dtype="float32", device="cpu")
    ids = llm.tokenizer.encode("The quick brown fox")
    scored = client.score(ids)
    assert len(scored.tokens) == len(scored.logprobs) == len(scored.top) == len(ids)
    assert scored.logprobs[0] is None and all(isinstance(v, float) and v <= 0 for v in scored.logprobs[1:])
    assert isinstance(client.complete(ids, GREEDY), str)  # token-id prompts too
