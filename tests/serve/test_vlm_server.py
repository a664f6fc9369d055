"""A real ``puyu serve`` of a tiny random LLaVA, asked about images by the official openai client.

The answers must equal the in-process API's greedy answers (whose tokens equal the model's own full forward,
tests/model/vlm/test_chat_and_engine.py), alone, streamed, and batched with other image and text requests; a
second question about an image reuses its KV blocks (the metric shows it); every bad image input is a 400.
"""

from __future__ import annotations

import asyncio
import base64
import io

import openai
import pytest

from puyu.api import LLM
from tests.model.vlm.conftest import make_hf_vlm, photo
from tests.serve.conftest import API_KEY, metric, start_server, stop_server

PICTURES = [photo(120, 90, seed=3), photo(70, 150, seed=4)]
GREEDY = dict(temperature=0, max_tokens=6)


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _ask(url: str, question: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("llava")
    make_hf_vlm("llava", folder, tiny_tokenizer_dir, seed=1)
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    PICTURES[1].save(folder / "tall.png")
    return folder


@pytest.fixture(scope="module")
def vlm_server(vlm_folder, image_dir, tmp_path_factory):
    s = start_server(vlm_folder, "--chat-template", "chatml", "--image-dir", str(image_dir), "--block-size", "4",
                     log=tmp_path_factory.mktemp("log") / "vlm.log")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def expected(vlm_folder):
    """The in-process greedy answer of each question."""
    llm = LLM(vlm_folder, dtype="float32", device="cpu", chat_template="chatml")

    def answer(messages: list[dict]) -> str:
        return llm.chat(messages, temperature=0, max_new_tokens=GREEDY["max_tokens"])

    return answer


def test_image_url_requests_answer_as_the_api_does_streamed_batched_and_from_the_prefix_cache(vlm_server, expected, image_dir):
    client = openai.OpenAI(base_url=vlm_server.url, api_key=API_KEY, max_retries=0, timeout=120)
    first = _ask(_data_url(PICTURES[0]))
    reply = client.chat.completions.create(model="tiny", messages=first, **GREEDY)
    assert reply.choices[0].message.content == expected(first) and reply.usage.prompt_tokens > 20

    stream = client.chat.completions.create(model="tiny", messages=first, stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected(first)

    local = _ask(str(image_dir / "tall.png"), "Describe it.")
    mixed = [local, [{"role": "user", "content": "Tell me a story"}], _ask(_data_url(PICTURES[0]), "Which colours?")]

    async def together():
        aclient = openai.AsyncOpenAI(base_url=vlm_server.url, api_key=API_KEY, max_retries=0, timeout=120)
        replies = await asyncio.gather(*(aclient.chat.completions.create(model="tiny", messages=m, **GREEDY) for m in mixed))
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(together()) == [expected(m) for m in mixed]

    hits = metric(vlm_server, "puyu_prefix_cache_hit_blocks_total")
    again = _ask(_data_url(PICTURES[0]), "Is it a photo?")
    assert client.chat.completions.create(model="tiny", messages=again, **GREEDY).choices[0].message.content == expected(again)
    assert metric(vlm_server, "puyu_prefix_cache_hit_blocks_total") - hits >= 5  # the header and 16 image tokens: 5 blocks of 4


@pytest.mark.parametrize("url, says", [
    ("https://example.com/cat.png", "not fetched"),
    ("/etc/hostname", "outside the image folder"),
    ("data:image/png;base64,@@@@", "base64"),
    ("data:image/png;base64," + base64.b64encode(b"\x89PNG but not really").decode(), "not an image"),
])
def test_bad_images_are_400s_that_say_what_was_wrong(vlm_server, url, says):
    client = openai.OpenAI(base_url=vlm_server.url, api_key=API_KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError, match=says):
        client.chat.completions.create(model="tiny", messages=_ask(url), **GREEDY)
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]
    with pytest.raises(openai.BadRequestError, match="input_audio"):
        client.chat.completions.create(model="tiny", messages=audio, **GREEDY)
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "still fine?"}], **GREEDY).choices


def test_a_text_model_server_refuses_images(server, client):
    with pytest.raises(openai.BadRequestError, match="reads text only"):
        client.chat.completions.create(model="tiny", messages=_ask(_data_url(PICTURES[0])), **GREEDY)
