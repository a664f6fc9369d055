"""The agent's models on real backends: a tiny local LLM, and a real `puyu serve` through the openai client.

The tiny model is random, so these tests rely on constrained decoding (tool calls,
``response_format``) for well-formed output, never on sensible content.
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest

from puyu import LLM
from puyu.agent import Agent, LocalChatModel, OpenAIChatModel, ToolRegistry, tool
from tests.conftest import make_hf_model
from tests.serve.conftest import API_KEY, start_server, stop_server

SCHEMA = {"type": "object",
          "properties": {"answer": {"enum": ["yes", "no"]}, "confidence": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["answer", "confidence"], "additionalProperties": False}


@tool
def lookup(key: Literal["alpha", "beta"], note: str = "") -> str:
    """Look a key up in the table.

    Args:
        key: which entry.
        note: a remark.
    """
    return {"alpha": "1", "beta": "2"}[key]


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("agent") / "tiny"
    make_hf_model(folder, tiny_tokenizer_dir, max_position_embeddings=1024)  # room for a rendered tool schema
    return folder


@pytest.fixture(scope="module")
def server(long_context_model, tmp_path_factory):
    s = start_server(long_context_model, log=tmp_path_factory.mktemp("log") / "server.log")
    yield s
    stop_server(s)


@pytest.mark.parametrize("seed", [0, 1])
def test_local_model_makes_valid_calls_and_the_agent_uses_them(long_context_model, seed):
    llm = LLM(str(long_context_model), dtype="float32", device="cpu")
    model = LocalChatModel(llm, temperature=1.0, seed=seed, max_new_tokens=80, max_string=20)
    run = Agent(model, ToolRegistry([lookup]), protocol="function", tool_choice="required", max_steps=2).run("look up alpha")
    first = run.steps[0]
    assert first.tool == "lookup" and first.error is None and first.output in ("1", "2")
    assert run.steps[-1].final_answer is not None


def test_unconstrained_random_model_rarely_calls_correctly(long_context_model):
    llm = LLM(str(long_context_model), dtype="float32", device="cpu")
    reply = LocalChatModel(llm, constrain=False, temperature=1.0, seed=0, max_new_tokens=30).reply(
        [{"role": "user", "content": "hi"}], ToolRegistry([lookup]).schemas(), tool_choice="required")
    assert reply.tool_calls == []


def test_response_format_json_schema_and_object(server):
    client = openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)
    for seed in range(3):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "answer"}], seed=seed, max_tokens=60,
                                           response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}})
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], seed=1, max_tokens=5,
                                       response_format={"type": "json_object"})
    assert r.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError, match="json_schema needs"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_schema"})
    with pytest.raises(openai.BadRequestError, match="not one of"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], response_format={"type": "yaml"})


@tool
def pick(key: Literal["alpha", "beta"]) -> str:
    """Look a key up in the table.

    Args:
        key: which entry.
    """
    return {"alpha": "1", "beta": "2"}[key]


def test_function_calling_agent_over_puyu_serve(server):
    model = OpenAIChatModel(None, server.url, API_KEY, max_new_tokens=60, temperature=1.0, seed=3)
    assert model.model == "tiny"
    run = Agent(model, ToolRegistry([pick]), protocol="function", tool_choice="required", max_steps=2).run("look up beta")
    first = run.steps[0]
    assert first.tool == "pick" and first.error is None and first.output in ("1", "2")
    assert run.steps[-1].final_answer is not None


def test_api_errors_become_config_errors():
    from puyu.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot reach the model server at http://127.0.0.1:9/v1 \(listing the models\).*--api-base"):
        OpenAIChatModel(None, "http://127.0.0.1:9/v1", "k")
    with pytest.raises(ConfigError, match=r"unknown sampling option\(s\) \['max_tokens'\]; the token limit is max_new_tokens"):
        LocalChatModel(None, max_tokens=5)


def test_cli_runs_an_agent_and_prints_json_steps(long_context_model, capsys):
    from puyu.cli import main

    code = main(["agent", str(long_context_model), "look up", "--tools", "calculator", "--tool-choice", "required", "--max-steps", "2",
                 "--temperature", "1.0", "--max-new-tokens", "60", "--dtype", "float32", "--json"])
    steps = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0 and steps[0]["tool"] == "calculator" and steps[-1]["final_answer"] is not None
    assert main(["agent", str(long_context_model), "x", "--tools", "web"]) == 2
