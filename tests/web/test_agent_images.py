"""The agent tab shows the images a tool returned: a matplotlib plot saved by the real sandboxed python tool,
with a scripted agent model, in headless Chromium."""

from __future__ import annotations

import base64

import pytest

from tests.agent.fakes import ScriptedModel, call
from tests.web.conftest import open_ui, serve_in_thread, stop_in_thread

PLOT = "import matplotlib.pyplot as plt\\nplt.bar(['a', 'b'], [3, 5])\\nplt.savefig('bars.png')\\nprint('plotted')"


@pytest.fixture
def plot_ui():
    from fastapi import FastAPI

    from puyu.web.app import UIConfig, mount_ui

    def plot_agent(sampling):
        return ScriptedModel([call("python", f'{{"code": "{PLOT}"}}'), "The chart is above."])

    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})  # what serve_in_thread waits for
    running = serve_in_thread(mount_ui(app, UIConfig(api_base="", model="tiny", agent_model=plot_agent)))
    yield running
    stop_in_thread(running)


def test_agent_tab_shows_a_plot_the_python_tool_saved(plot_ui, page):
    open_ui(page, plot_ui.base, "agent")
    for box in page.query_selector_all("#agent-tools input"):
        box.set_checked(box.get_attribute("value") == "python")
    page.fill("#agent-task", "Draw a bar chart of a=3, b=5.")
    page.click("#agent-run")
    image = page.wait_for_selector("details.step[data-tool=python] figure.tool-image img")
    page.wait_for_selector(".final")
    assert image.get_attribute("alt") == "bars.png" and "plotted" in page.inner_text("details.step[data-tool=python]")
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert image.evaluate("img => img.complete && img.naturalWidth") > 100  # the browser decoded it
    assert not page.js_errors
