"""The official openai client against a real `puyu serve` process: chat, completions, streaming,
logprobs, errors, auth, metrics, 32 concurrent streams, disconnects and shutdown."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.serve.conftest import API_KEY, metric, start_server, stop_server, streams_together_and_alone

USER = [{"role": "user", "content": "Hello there"}]


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(f"{server.base}/health").json() == {"status": "ok"}


def test_chat_streaming_equals_non_streaming_with_usage(client):
    full = client.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=10)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 10
    assert full.usage.prompt_tokens > 0 and full.usage.total_tokens == full.usage.prompt_tokens + 10
    chunks = list(client.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10 and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_n_seed_stop_and_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=USER, n=2, seed=3, temperature=1.0, max_tokens=8,
                                       logprobs=True, top_logprobs=3)
    again = client.chat.completions.create(model="tiny", messages=USER, n=2, seed=3, temperature=1.0, max_tokens=8)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    lp = r.choices[0].logprobs.content
    assert len(lp) == 8 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp)
    greedy = client.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=12).choices[0].message.content
    stop = greedy[4:7]
    cut = client.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=12, stop=[stop]).choices[0]
    assert cut.message.content == greedy[: greedy.index(stop)] and cut.finish_reason == "stop"


def test_completions_text_tokens_and_echo_scoring(client):
    r = client.completions.create(model="tiny", prompt=["Hello", "The quick"], max_tokens=5, temperature=0)
    assert len(r.choices) == 2 and all(c.finish_reason == "length" for c in r.choices)
    ids = [5, 17, 42, 99]
    scored = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=2, temperature=0)
    lp = scored.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == 4 and all(x < 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset[0] == 0 and scored.usage.completion_tokens == 0


def test_tools_and_tool_messages_are_accepted(client):
    tools = [{"type": "function", "function": {"name": "add", "description": "Add numbers",
              "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
    plain = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    history = USER + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
    ]
    r = client.chat.completions.create(model="tiny", messages=history, tools=tools, tool_choice="auto", max_tokens=2)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the schema and the call were rendered


@pytest.mark.parametrize(
    "call, error, text",
    [
        (lambda c: c.chat.completions.create(model="nope", messages=USER), openai.NotFoundError, "does not exist"),
        (lambda c: c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 1200}]),
         openai.BadRequestError, "context window is 1024"),
        (lambda c: c.chat.completions.create(model="tiny", messages=USER, temperature=5), openai.BadRequestError, "temperature"),
        (lambda c: c.chat.completions.create(model="tiny", messages=[]), openai.BadRequestError, "messages"),
        (lambda c: c.completions.create(model="tiny", prompt="x", max_tokens=0), openai.BadRequestError, "echo"),
    ],
)
def test_errors_have_openai_shape(client, call, error, text):
    with pytest.raises(error, match=text) as info:
        call(client)
    assert set(info.value.body) >= {"message", "type", "code"}


def test_invalid_json_and_auth(server):
    bad = httpx.post(f"{server.url}/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {API_KEY}"})
    assert bad.status_code == 400 and "error" in bad.json()
    missing = httpx.get(f"{server.url}/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {API_KEY}x"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(f"{server.base}/health").status_code == 200  # outside /v1: no key needed


def test_32_concurrent_streams_match_sequential_and_free_every_block(server):
    together, alone = streams_together_and_alone(server, API_KEY)
    assert all(together) and together[:4] == alone
    assert metric(server, "puyu_kv_usage") == 0 and metric(server, "puyu_running") == 0


def test_client_disconnecting_mid_stream_aborts_and_leaks_nothing(server):
    body = {"model": "tiny", "messages": USER, "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(3):
        with httpx.stream("POST", f"{server.url}/chat/completions", json=body, headers=headers, timeout=60) as response:
            lines = response.iter_lines()
            for _ in range(4):
                next(lines)
    for _ in range(100):
        if metric(server, "puyu_running") == 0 and metric(server, "puyu_kv_usage") == 0:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert metric(server, "puyu_running") == 0 and metric(server, "puyu_kv_usage") == 0
    text = httpx.get(f"{server.base}/metrics").text
    assert "puyu_time_to_first_token_seconds_bucket" in text and "puyu_generation_tokens_per_second" in text


def test_full_queue_answers_429_and_shutdown_drains_running_requests(tiny_server_model, tmp_path):
    s = start_server(tiny_server_model, "--max-queue", "1", "--max-num-seqs", "1", "--drain-timeout", "120", api_key=None,
                     log=tmp_path / "log")  # a drain long enough for a loaded machine
    body = {"model": "tiny", "messages": USER, "max_tokens": 150, "ignore_eos": True}

    async def flood():
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(http.post(f"{s.url}/chat/completions", json=body) for _ in range(6)))

    async def shutdown_during_request():
        async with httpx.AsyncClient(timeout=120) as http:
            running = asyncio.create_task(http.post(f"{s.url}/chat/completions", json=body))
            while metric(s, "puyu_running") == 0:
                await asyncio.sleep(0.05)
            s.proc.terminate()  # SIGTERM while the request runs
            return await running

    try:
        responses = asyncio.run(flood())
        refused = [r for r in responses if r.status_code == 429]
        assert any(r.status_code == 200 for r in responses) and refused
        assert refused[0].headers["retry-after"] == "1" and refused[0].json()["error"]["type"] == "rate_limit_error"
        drained = asyncio.run(shutdown_during_request())
        assert drained.status_code == 200 and drained.json()["usage"]["completion_tokens"] == 150
        assert s.proc.wait(timeout=60) in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
        assert "Traceback" not in s.log.read_text()
    finally:
        stop_server(s)


@pytest.mark.parametrize("flags", [("--speculative", "prompt_lookup"), ("--draft-model", "SELF", "--draft-quant", "w4a8")])
def test_a_speculative_server_answers_what_the_plain_one_does_and_reports_acceptance(client, tiny_server_model, tmp_path, flags):
    """Prompt lookup, and the served model drafting for itself through its int4 copy (a draft model)."""
    from openai import OpenAI

    messages = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 3}]
    plain = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=40)
    flags = [str(tiny_server_model) if flag == "SELF" else flag for flag in flags]
    s = start_server(tiny_server_model, *flags, api_key=None, log=tmp_path / "log")
    try:
        fast = OpenAI(base_url=s.url, api_key="none", max_retries=0, timeout=120)
        answer = fast.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=40)
        streamed = "".join(c.choices[0].delta.content or "" for c in fast.chat.completions.create(
            model="tiny", messages=messages, temperature=0, max_tokens=40, stream=True) if c.choices)
        assert answer.choices[0].message.content == streamed == plain.choices[0].message.content
        assert answer.usage.completion_tokens == plain.usage.completion_tokens
        accepted, drafted = metric(s, "puyu_accepted_draft_tokens_total"), metric(s, "puyu_draft_tokens_total")
        assert 0 < accepted <= drafted and metric(s, "puyu_draft_acceptance_rate") == pytest.approx(accepted / drafted)
    finally:
        stop_server(s)


def test_requests_that_set_no_sampling_take_the_model_s_recommendation(client, tiny_server_model, tmp_path):
    import json
    import shutil

    from openai import OpenAI

    folder = shutil.copytree(tiny_server_model, tmp_path / "greedy-by-default")
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.0}))
    greedy = client.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=16).choices[0].message.content
    s = start_server(folder, api_key=None, log=tmp_path / "log")
    try:
        assert "requests that set no sampling use the model's recommended temperature=0" in s.log.read_text()
        own = OpenAI(base_url=s.url, api_key="none", max_retries=0, timeout=120)
        unset = [own.chat.completions.create(model="tiny", messages=USER, max_tokens=16, seed=seed).choices[0].message.content
                 for seed in (1, 2)]
        assert unset == [greedy, greedy]
        hot = {own.chat.completions.create(model="tiny", messages=USER, max_tokens=16, seed=seed, temperature=1.5)
               .choices[0].message.content for seed in (1, 2, 3)}
        assert len(hot) > 1  # the request's own temperature wins
    finally:
        stop_server(s)
