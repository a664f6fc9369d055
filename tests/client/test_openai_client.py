"""OpenAIClient without a model: request fields, the retry policy and error mapping, on a mock transport."""

from __future__ import annotations

import json

import httpx2
import pytest

from puyu.client import ClientError, OpenAIClient, RetryPolicy
from puyu.client.openai_api import request_fields
from puyu.errors import ConfigError
from puyu.generation import SamplingParams

URL = "http://mock.test/v1"


def _reply(text: str = "", calls: list[dict] | None = None) -> httpx2.Response:
    message = {"role": "assistant", "content": text or None, "tool_calls": calls}
    return httpx2.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})


def _error(status: int, message: str = "nope", **headers: str) -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"message": message, "type": "error", "param": None, "code": None}}, headers=headers)


def _client(responses: list[httpx2.Response], seen: list[httpx2.Request], model: str | None = "m", **options) -> OpenAIClient:
    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return responses.pop(0)

    return OpenAIClient(URL, "k", model, http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), **options)


def test_sampling_maps_to_request_fields_with_extensions_in_extra_body():
    assert request_fields(SamplingParams(max_new_tokens=9, temperature=0, top_p=1.0)) == {"max_tokens": 9, "temperature": 0}
    fields = request_fields(SamplingParams(max_new_tokens=5, temperature=0.5, seed=3, stop=["\n"], presence_penalty=0.5, top_k=4,
                                           min_p=0.1, repetition_penalty=1.2, ignore_eos=True, skip_special_tokens=False))
    assert fields == {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n"], "presence_penalty": 0.5,
                      "extra_body": {"top_k": 4, "min_p": 0.1, "repetition_penalty": 1.2, "ignore_eos": True,
                                     "skip_special_tokens": False}}
    with pytest.raises(ConfigError, match="grammar constrains local generation only"):
        request_fields(SamplingParams(grammar="start: /a/"))


def test_keywords_become_sampling_params_once():
    assert SamplingParams.from_keywords({"max_new_tokens": 8}, temperature=0.0) == SamplingParams(max_new_tokens=8, temperature=0.0)
    with pytest.raises(ConfigError, match=r"\['max_tokens'\]; the token limit is max_new_tokens; known: max_new_tokens, temperature"):
        SamplingParams.from_keywords({"max_tokens": 8})


def test_chat_sends_the_request_and_reads_text_calls_and_usage():
    seen: list[httpx2.Request] = []
    call = {"id": "c1", "type": "function", "function": {"name": "pick", "arguments": '{"key": "a"}'}}
    client = _client([_reply("Hi"), _reply(calls=[call])], seen)
    result = client.chat([{"role": "user", "content": "x"}], SamplingParams(max_new_tokens=4, temperature=0, top_k=2))
    assert (result.text, result.raw, result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("Hi", "Hi", "stop", 7, 3)
    body = json.loads(seen[0].content)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "temperature": 0, "top_p": 0.9,
                    "top_k": 2}
    tools = [{"type": "function", "function": {"name": "pick", "parameters": {}}}]
    result = client.chat([{"role": "user", "content": "x"}], SamplingParams(), tools, "required")
    assert [(c.name, c.arguments, c.id) for c in result.tool_calls] == [("pick", '{"key": "a"}', "c1")] and result.text == ""
    assert json.loads(result.raw)["function"]["name"] == "pick"
    body = json.loads(seen[1].content)
    assert body["tools"] == tools and body["tool_choice"] == "required"


def test_transient_failures_are_retried_then_reported():
    seen: list[httpx2.Request] = []
    client = _client([_error(503, **{"retry-after-ms": "1"}), _error(429, **{"retry-after": "0"}), _reply("ok")], seen)
    assert client.chat([{"role": "user", "content": "x"}], SamplingParams()).text == "ok" and len(seen) == 3
    seen.clear()
    client = _client([_error(500, "down", **{"retry-after-ms": "1"})] * 3, seen, retry=RetryPolicy(max_retries=1))
    with pytest.raises(ClientError, match="model m at http://mock.test/v1 failed: Error code: 500 - down; check") as failed:
        client.chat([{"role": "user", "content": "x"}], SamplingParams())
    assert failed.value.status == 500 and len(seen) == 2
    seen.clear()
    with pytest.raises(ClientError, match="Error code: 401 - bad key; check --my-flag") as refused:
        _client([_error(401, "bad key")], seen, hint="check --my-flag").chat([{"role": "user", "content": "x"}], SamplingParams())
    assert refused.value.status == 401 and refused.value.detail == "Error code: 401 - bad key" and len(seen) == 1


def test_unreachable_server_and_first_model():
    unreachable = r"cannot reach the model server at http://127.0.0.1:9/v1 \(listing the models\): Connection error"
    with pytest.raises(ClientError, match=unreachable) as down:
        OpenAIClient("http://127.0.0.1:9/v1", retry=RetryPolicy(max_retries=1, backoff_s=0.01))
    assert down.value.status is None
    seen: list[httpx2.Request] = []
    models = httpx2.Response(200, json={"object": "list", "data": [{"id": "first", "object": "model", "created": 0, "owned_by": "x"}]})
    assert _client([models], seen, model=None).model == "first" and seen[0].url.path == "/v1/models"
    empty = httpx2.Response(200, json={"object": "list", "data": []})
    with pytest.raises(ConfigError, match="serves no model"):
        _client([empty], [], model=None)
    with pytest.raises(ConfigError, match="no model server URL given"):
        OpenAIClient("", model="m")


def test_stream_chat_yields_the_pieces():
    chunks = [{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]} for piece in ("Hel", "lo")]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    seen: list[httpx2.Request] = []
    client = _client([_error(503, **{"retry-after-ms": "1"}),
                      httpx2.Response(200, text=body, headers={"content-type": "text/event-stream"})], seen)
    assert list(client.stream_chat([{"role": "user", "content": "x"}], SamplingParams(max_new_tokens=3))) == ["Hel", "lo"]
    assert json.loads(seen[-1].content)["stream"] is True and len(seen) == 2


def test_retry_policy_waits():
    policy = RetryPolicy(max_retries=3, backoff_s=1.0, max_backoff_s=3.0, jitter=0.0)
    assert [policy.wait(n, None) for n in range(4)] == [1.0, 2.0, 3.0, None]
    assert policy.wait(0, 400) is None and policy.wait(0, 404) is None and policy.wait(0, 409) == 1.0 and policy.wait(0, 502) == 1.0
    assert policy.wait(0, 429, {"retry-after": "2.5"}) == 2.5 and policy.wait(0, 429, {"retry-after-ms": "20"}) == 0.02
    assert policy.wait(0, 429, {"retry-after": "600"}) is None  # longer than max_wait_s: give up now
    assert 0.375 <= RetryPolicy().wait(0, 503) <= 0.5  # the default: 0.5 s less up to 25 % jitter
    assert RetryPolicy(statuses=frozenset({418})).wait(0, 503) is None
    with pytest.raises(ConfigError, match="retry"):
        RetryPolicy(max_retries=-1)
