"""The commands for real: ``puyu serve --web`` (the agent and knowledge base through the server's own
endpoint, the engine in the main thread), ``puyu web --api-base`` (the proxy, in the browser), a remote
server that is down, and an API key."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.serve.conftest import free_port
from tests.web.conftest import open_ui, serve_in_thread, sse, stop_in_thread


def test_serve_web_runs_agent_and_kb_on_its_own_endpoint(cli_server):
    page = httpx.get(f"{cli_server.base}/", timeout=30)
    assert page.status_code == 200 and '<script type="module" src="/static/main.js">' in page.text
    assert "marked" in httpx.get(f"{cli_server.base}/static/vendor/marked.umd.js", timeout=30).text[:200]
    assert httpx.get(f"{cli_server.base}/ui/config", timeout=30).json()["model"] == "tiny"

    run = sse(httpx.post(f"{cli_server.base}/ui/agent", json={"task": "What is 2+2?", "tools": ["calculator"], "max_steps": 1,
                                                              "max_tokens": 16}, timeout=180))
    assert run[-1] == {"type": "done"} and run[-2]["type"] == "step" and isinstance(run[-2]["final_answer"], str)

    docs = [("files", (f"doc{i}.md", f"# Part {i}\n\n" + "Puyu keeps knowledge bases under its home folder. " * 10)) for i in range(4)]
    assert len(httpx.post(f"{cli_server.base}/ui/kb/cli/files", files=docs, timeout=60).json()["saved"]) == 4
    report = sse(httpx.post(f"{cli_server.base}/ui/kb/cli/sync", timeout=300))
    assert report[-2]["type"] == "report" and report[-2]["added"] == 4
    answer = sse(httpx.post(f"{cli_server.base}/ui/kb/cli/ask", json={"question": "Where are knowledge bases kept?",
                                                                     "max_tokens": 64}, timeout=300))
    kinds = [e["type"] for e in answer]
    assert kinds[0] == "sources" and kinds[-2:] == ["answer", "done"], answer[-1]
    sources = answer[0]["sources"]
    assert 1 <= len(sources) < 4  # the tiny model's 1024-token window holds fewer than all retrieved chunks
    assert sources[0]["source"].startswith("doc") and "home folder" in sources[0]["text"]
    assert answer[-2]["text"] == "".join(e["text"] for e in answer if e["type"] == "delta")


@pytest.fixture
def proxy(cli_server, tmp_path):
    port = free_port()
    log = tmp_path / "web.log"
    cmd = [sys.executable, "-m", "puyu", "web", "--api-base", cli_server.url, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"puyu web --api-base did not come up:\n{log.read_text()}")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_web_api_base_streams_through_the_proxy(proxy, page):
    open_ui(page, proxy)
    assert page.inner_text("#model-name") == "tiny"  # listed by the remote server
    page.fill("#max-tokens", "12")
    page.dispatch_event("#max-tokens", "input")
    page.fill("#prompt", "Hello through the proxy")
    page.press("#prompt", "Enter")
    page.wait_for_selector("#messages .msg.assistant[data-status=done]")
    assert page.inner_text("#messages .msg.assistant .body").strip()
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", timeout=60,
                      json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    wrong = httpx.post(f"{proxy}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}, timeout=30)
    assert wrong.status_code == 404 and "does not exist" in wrong.json()["error"]["message"]  # upstream errors pass through
    assert not page.js_errors


def test_remote_down_is_reported_and_the_page_stays_usable(page):
    from puyu.web.proxy import create_proxy_app

    dead = f"http://127.0.0.1:{free_port()}/v1"
    running = serve_in_thread(create_proxy_app(dead))
    try:
        open_ui(page, running.base)
        page.wait_for_selector("#banner:not(.hidden)")
        assert "cannot reach the model server" in page.inner_text("#banner")
        page.fill("#prompt", "Anyone there?")
        page.press("#prompt", "Enter")
        error = page.wait_for_selector("#messages .msg.error")
        assert dead in error.inner_text()
        assert not page.is_disabled("#send") and not page.is_disabled("#regenerate")
        page.click("#tabs button[data-tab=agent]")
        page.fill("#agent-task", "What is 1+1?")
        page.click("#agent-run")
        assert "cannot" in page.wait_for_selector("#agent-steps .msg.error").inner_text()
    finally:
        stop_in_thread(running)


def test_api_key_guards_the_api_and_ui_routes(web_model, page):
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.model import load_model
    from puyu.serve.app import create_app
    from puyu.web.app import UIConfig, mount_ui

    model, tokenizer = load_model(str(web_model), dtype="float32", device="cpu")
    engine = LLMEngine(model, tokenizer, EngineConfig(num_blocks=128))
    config = UIConfig(api_base="", api_key="sk-web", model="tiny", key="sk-web")
    running = serve_in_thread(mount_ui(create_app(engine, "tiny", api_key="sk-web", drain_timeout=0), config))
    config.api_base = f"{running.base}/v1"
    try:
        assert httpx.get(f"{running.base}/ui/kb", timeout=30).status_code == 401
        assert httpx.get(f"{running.base}/ui/kb", headers={"Authorization": "Bearer sk-web"}, timeout=30).status_code == 200
        open_ui(page, running.base)
        assert page.is_visible("#key-box")
        page.fill("#max-tokens", "6")
        page.dispatch_event("#max-tokens", "input")
        page.fill("#prompt", "Hi")
        page.press("#prompt", "Enter")
        assert "API key" in page.wait_for_selector("#messages .msg.error").inner_text()
        page.fill("#api-key", "sk-web")
        page.dispatch_event("#api-key", "change")  # stores the key and reloads
        page.wait_for_selector("body[data-ready=true]")
        page.click("#regenerate")  # retries the failed turn, now with the key
        page.wait_for_selector("#messages .msg.assistant[data-status=done]")
    finally:
        stop_in_thread(running)
        engine.shutdown()
