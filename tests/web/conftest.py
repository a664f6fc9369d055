"""Web UI fixtures: real servers on 127.0.0.1 with the tiny model, and a headless Chromium driven by Playwright.

``ui_server`` runs the OpenAI app + UI in this process (uvicorn in a thread) so
tests can inject a scripted agent model and a scripted answer generator;
``cli_server`` is a real ``puyu serve --web`` subprocess.  Screenshots go to
``.pytest_cache/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.agent.fakes import ScriptedModel, call
from tests.conftest import ROOT, make_hf_model
from tests.serve.conftest import free_port, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / ".pytest_cache" / "screenshots"
KB_ANSWER = ["Uploaded documents live under ", "PUYU_HOME", " [1]. 中文也可以 [1]."]


class ScriptedGenerator:
    """Answers every knowledge-base question with ``KB_ANSWER`` piece by piece, recording the prompts."""

    def __init__(self):
        self.prompts: list[list[dict]] = []

    def stream_chat(self, messages, **sampling):
        self.prompts.append(messages)
        yield from KB_ANSWER


def scripted_agent(sampling):
    """One calculator call, then a final answer (a fresh script per run)."""
    return ScriptedModel([call("calculator", '{"expression": "23*47"}', text="I should compute it."), "23*47 = **1081**。答案是 1081。"])


def serve_in_thread(app) -> SimpleNamespace:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return SimpleNamespace(base=base, server=server, thread=thread)
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the in-thread web server did not come up")


def stop_in_thread(running: SimpleNamespace) -> None:
    running.server.should_exit = True
    running.thread.join(timeout=30)


@pytest.fixture(scope="session")
def web_model(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("web") / "tiny"
    make_hf_model(folder, tiny_tokenizer_dir, max_position_embeddings=1024)
    return folder


@pytest.fixture(scope="session")
def web_home(tmp_path_factory):
    """A fresh ``$PUYU_HOME`` for the whole web session (knowledge bases are written there)."""
    home = tmp_path_factory.mktemp("web-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("PUYU_HOME", str(home))
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def ui_server(web_model, web_home):
    from puyu.engine import EngineConfig, LLMEngine
    from puyu.model import load_model
    from puyu.serve.app import create_app
    from puyu.web.app import UIConfig, mount_ui

    model, tokenizer = load_model(str(web_model), dtype="float32", device="cpu")
    engine = LLMEngine(model, tokenizer, EngineConfig(num_blocks=512))
    app = create_app(engine, "tiny", drain_timeout=0)
    generator = ScriptedGenerator()
    config = UIConfig(api_base="", model="tiny", tokenizer=tokenizer, context_length=engine.max_model_len,
                      agent_model=scripted_agent, generator=generator)
    mount_ui(app, config)
    running = serve_in_thread(app)
    config.api_base = f"{running.base}/v1"
    yield SimpleNamespace(base=running.base, url=f"{running.base}/v1", generator=generator, engine=engine)
    stop_in_thread(running)


@pytest.fixture(scope="module")
def cli_server(web_model, tmp_path_factory, web_home):
    """A real ``puyu serve --web`` process (no API key) with the tiny model."""
    server = start_server(web_model, "--web", api_key=None, log=tmp_path_factory.mktemp("log") / "serve-web.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="package")  # Playwright's sync API keeps an event loop running: end it with the web tests
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser page (own localStorage); a screenshot of it is saved when the test ends."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()


def sse(response: httpx.Response) -> list[dict]:
    """The events of a finished server-sent-events response."""
    assert response.status_code == 200, response.text
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def open_ui(page, base: str, tab: str = "chat"):
    page.goto(f"{base}/")
    page.wait_for_selector("body[data-ready=true]")
    page.click(f"#tabs button[data-tab={tab}]")
    return page
