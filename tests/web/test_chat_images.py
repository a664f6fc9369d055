"""Image upload in the chat tab: a real ``puyu serve --web`` of a tiny random LLaVA, driven in headless Chromium.

The picked image shows as a thumbnail, goes to the model as an OpenAI image_url part, the reply equals the API's
greedy reply to the same request, and the thumbnail stays in the conversation across a reload.  A text-only
model's page offers no upload.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.model.vlm.conftest import make_hf_vlm, photo
from tests.serve.conftest import start_server, stop_server
from tests.web.conftest import open_ui
from tests.web.test_chat import send, set_settings, stored


@pytest.fixture(scope="module")
def vlm_web(tmp_path_factory, tiny_tokenizer_dir, web_home):
    folder = tmp_path_factory.mktemp("llava")
    make_hf_vlm("llava", folder, tiny_tokenizer_dir, seed=1)
    server = start_server(folder, "--web", "--chat-template", "chatml", api_key=None,
                          log=tmp_path_factory.mktemp("log") / "vlm-web.log")
    yield server
    stop_server(server)


def test_an_uploaded_image_is_shown_sent_answered_and_kept_across_a_reload(vlm_web, page, tmp_path):
    picture = tmp_path / "fox.png"
    photo(120, 90, seed=3).save(picture)
    url = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    open_ui(page, vlm_web.base)
    set_settings(page, max_tokens=6)
    requests = []
    page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)

    page.set_input_files("#attach", str(picture))
    page.wait_for_selector("#attachments img.thumb")
    send(page, "What is in this picture?")
    page.wait_for_selector("#messages .msg.assistant[data-status=done]")
    assert page.locator("#attachments img").count() == 0  # sent with this message, not the next
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in this picture?"}]
    assert requests[0]["messages"] == [{"role": "user", "content": parts}]
    body = {"model": "tiny", "messages": [{"role": "user", "content": parts}], "temperature": 0, "max_tokens": 6}
    expected = httpx.post(f"{vlm_web.url}/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]["content"]
    assert stored(page)["messages"][1]["content"] == expected

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.get_attribute("#messages .msg.user img.thumb", "src") == url
    assert not page.js_errors


def test_a_text_model_offers_no_upload(ui_server, page):
    open_ui(page, ui_server.base)
    assert page.locator("#attach-button").is_hidden()
