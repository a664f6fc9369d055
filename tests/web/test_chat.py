"""The chat tab in headless Chromium against the real OpenAI app with the tiny model: streaming, history,
stop, clear, regenerate, copy, Markdown, errors and reloads."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.web.conftest import open_ui

LONG = 700  # max tokens of a reply long enough to stop midway


def greedy(server, messages, max_tokens):
    body = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    choice = httpx.post(f"{server.url}/chat/completions", json=body, timeout=120).json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def set_settings(page, temperature=0, max_tokens=32, system=""):
    page.eval_on_selector("#temperature", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    page.dispatch_event("#max-tokens", "input")
    page.fill("#system", system)
    page.dispatch_event("#system", "input")


def stored(page) -> dict:
    return json.loads(page.evaluate("localStorage.getItem('puyu.chat.v1')"))


def send(page, text):
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


@pytest.fixture(scope="module")
def long_prompt(ui_server):
    """A prompt whose greedy reply runs the whole LONG budget (the random model may stop early on others)."""
    for prompt in ["Tell me a long story.", "Hello world!", "你好，世界！", "Count to a thousand."]:
        text, reason = greedy(ui_server, [{"role": "user", "content": prompt}], LONG)
        if reason == "length":
            return prompt, text
    pytest.fail("no test prompt made the tiny model write a long reply")


def test_streams_multi_turn_with_system_prompt_regenerate_copy_and_reload(ui_server, page):
    open_ui(page, ui_server.base)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    assert page.inner_text("#model-name") == "tiny"
    set_settings(page, system="Be brief.")
    requests = []
    page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)

    send(page, "What is the capital of France?")
    page.wait_for_selector("#messages .msg.assistant[data-status=done]")
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    expected, _ = greedy(ui_server, first, 32)
    assert stored(page)["messages"][1]["content"] == expected  # the streamed pieces add up to the API's reply
    assert requests[0]["messages"] == first and requests[0]["stream"] is True and requests[0]["temperature"] == 0

    send(page, "你好！请再说一遍。")
    page.wait_for_selector("#messages .msg.assistant[data-index='3'][data-status=done]")
    assert requests[1]["messages"][1:] == first[1:] + [{"role": "assistant", "content": expected},
                                                       {"role": "user", "content": "你好！请再说一遍。"}]
    assert page.inner_text("#messages .msg.user[data-index='2']") == "你好！请再说一遍。"

    second = stored(page)["messages"][3]["content"]
    page.click("#regenerate")
    page.wait_for_function("JSON.parse(localStorage.getItem('puyu.chat.v1')).messages[3]?.status === 'done'")
    assert [m["role"] for m in stored(page)["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored(page)["messages"][3]["content"] == second  # greedy: the same reply again
    assert len(requests) == 3 and requests[2]["messages"] == requests[1]["messages"]

    page.click("#messages .msg.assistant[data-index='1'] button.copy")
    assert page.evaluate("navigator.clipboard.readText()") == expected

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#messages .msg").count() == 4 and page.input_value("#system") == "Be brief."
    assert stored(page)["messages"][1]["content"] == expected
    assert not page.js_errors


def test_stop_a_long_reply_then_clear(ui_server, page, long_prompt):
    prompt, full = long_prompt
    open_ui(page, ui_server.base)
    set_settings(page, max_tokens=LONG)
    send(page, prompt)
    page.wait_for_function("document.querySelector('#messages .msg.assistant[data-status=streaming] .body')?.textContent.length > 0")
    page.click("#stop")
    page.wait_for_selector("#messages .msg.assistant[data-status=stopped]")
    partial = stored(page)["messages"][1]
    assert partial["status"] == "stopped" and 0 < len(partial["content"]) < len(full) and full.startswith(partial["content"])
    assert "stopped" in page.inner_text("#messages .msg.assistant .note")
    deadline = time.monotonic() + 30
    while ui_server.engine.stats()["running"] and time.monotonic() < deadline:  # the server aborted the request
        time.sleep(0.1)
    assert ui_server.engine.stats()["running"] == 0

    page.click("#clear")
    assert page.locator("#messages .msg").count() == 0 and stored(page)["messages"] == []
    set_settings(page, max_tokens=8)
    send(page, "Hello")  # still usable
    page.wait_for_selector("#messages .msg.assistant[data-status=done]")


def test_reload_mid_stream_leaves_a_usable_page(ui_server, page, long_prompt):
    open_ui(page, ui_server.base)
    set_settings(page, max_tokens=LONG)
    send(page, long_prompt[0])
    page.wait_for_function("document.querySelector('#messages .msg.assistant[data-status=streaming] .body')?.textContent.length > 0")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.get_attribute("#messages .msg.assistant", "data-status") == "interrupted"
    assert "interrupted" in page.inner_text("#messages .msg.assistant .note")
    assert long_prompt[1].startswith(stored(page)["messages"][1]["content"])
    page.fill("#max-tokens", "8")
    page.dispatch_event("#max-tokens", "input")
    send(page, "Hello again")
    page.wait_for_selector("#messages .msg.assistant[data-index='3'][data-status=done]")
    assert not page.js_errors


def test_backend_error_is_shown_and_the_chat_stays_usable(ui_server, page):
    open_ui(page, ui_server.base)
    set_settings(page, max_tokens=8)
    send(page, "word " * 1500)  # longer than the 1024-token context: the server answers 400
    error = page.wait_for_selector("#messages .msg.error")
    assert "context window" in error.inner_text()
    assert not page.is_disabled("#send")
    send(page, "Hello")
    page.wait_for_selector("#messages .msg.assistant[data-status=done]")
    roles = [m["role"] for m in stored(page)["messages"]]
    assert roles == ["user", "error", "user", "assistant"]
    requests = []
    page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)
    send(page, "Once more")
    page.wait_for_selector("#messages .msg.assistant[data-index='5'][data-status=done]")
    sent = [m["content"] for m in requests[0]["messages"]]  # neither the failed turn nor the error note
    assert sent == ["Hello", stored(page)["messages"][3]["content"], "Once more"]
    assert "not sent" in page.inner_text("#messages .msg.user[data-index='0'] .note")


def test_markdown_code_and_chinese_render_from_history(ui_server, page):
    reply = "**粗体** and `x`\n\n```python\nprint('你好')\n```\n\n<img src=x onerror=alert(1)>"
    open_ui(page, ui_server.base)
    page.evaluate("h => localStorage.setItem('puyu.chat.v1', JSON.stringify(h))",
                  {"messages": [{"role": "user", "content": "中文？"}, {"role": "assistant", "content": reply, "status": "done"}]})
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#messages .msg.assistant strong") == "粗体"
    assert page.inner_text("#messages .msg.assistant pre code").strip() == "print('你好')"
    assert page.locator("#messages .msg.assistant pre button.copy-code").count() == 1
    assert page.get_attribute("#messages .msg.assistant img", "onerror") is None  # DOMPurify removed the handler
    assert page.inner_text("#messages .msg.user") == "中文？"
