"""The agent and knowledge-base tabs in headless Chromium (scripted agent model and answer generator,
real tools, real embedder and store), and the knowledge-base routes' rules over HTTP."""

from __future__ import annotations

import json

import httpx

from tests.web.conftest import KB_ANSWER, open_ui, sse

NOTES = "# Storage\n\nPuyu keeps knowledge bases under PUYU_HOME in a folder per base.\n\n## Chinese\n\n知识库支持中文文档。\n"
GUIDE = "The web UI streams replies from the OpenAI-compatible endpoint and can stop them.\n"


def test_agent_tab_shows_the_tool_step_then_the_answer(ui_server, page):
    open_ui(page, ui_server.base, "agent")
    assert page.locator("#agent-tools input").evaluate_all("els => els.map(e => e.value)") == ["python", "calculator", "solve", "search_kb"]
    page.uncheck("#agent-tools input[value=python]")
    page.fill("#agent-task", "What is 23*47?")
    page.click("#agent-run")
    step = page.wait_for_selector("details.step[data-tool=calculator]")
    assert step.get_attribute("open") is not None
    assert "1081" in step.inner_text() and "I should compute it." in step.inner_text() and '"expression": "23*47"' in step.inner_text()
    final = page.wait_for_selector(".final")
    assert page.inner_text(".final strong") == "1081" and "答案是 1081。" in final.inner_text()
    page.click("details.step summary")  # panels collapse
    assert page.get_attribute("details.step", "open") is None
    assert json.loads(page.evaluate("localStorage.getItem('puyu.agent.tools')")) == ["calculator", "solve"]
    assert not page.js_errors


def test_agent_errors_are_shown(ui_server):
    for tools, expected in ((["read_file"], "not offered here"), (["search_kb"], "choose one")):
        events = sse(httpx.post(f"{ui_server.base}/ui/agent", json={"task": "x", "tools": tools}, timeout=60))
        assert events[-1]["type"] == "error" and expected in events[-1]["message"]


def test_kb_tab_uploads_builds_with_progress_and_cites(ui_server, page, tmp_path):
    files = tmp_path / "upload"
    (files / "sub").mkdir(parents=True)
    (files / "notes.md").write_text(NOTES)
    (files / "sub" / "guide.txt").write_text(GUIDE)
    (files / "sub" / "picture.png").write_bytes(b"\x89PNG")
    open_ui(page, ui_server.base, "kb")
    page.fill("#kb-name", "notes")
    page.dispatch_event("#kb-name", "change")
    page.set_input_files("#kb-files", [str(files / "notes.md")])
    page.wait_for_selector("#kb-docs li:has-text('notes.md')")
    page.set_input_files("#kb-folder", str(files / "sub"))  # the folder picker
    page.wait_for_selector("#kb-docs li:has-text('sub/guide.txt')")
    assert "picture.png" in page.inner_text("#banner")  # unsupported: skipped and named
    page.click("#kb-sync")
    page.wait_for_function("document.getElementById('kb-status').textContent.includes('added')")  # the sync's report
    assert page.evaluate("[document.getElementById('kb-progress').value, document.getElementById('kb-progress').max]") == [2, 2]
    assert page.inner_text("#kb-status").startswith("2 added, 0 changed, 0 removed, 0 unchanged, 0 skipped")

    page.fill("#kb-question", "Where does puyu keep knowledge bases?")
    page.click("#kb-ask")
    page.wait_for_selector("#kb-answer[data-status=done]")
    assert page.inner_text("#kb-answer .body").strip() == "".join(KB_ANSWER).strip()
    prompt = ui_server.generator.prompts[-1][-1]["content"]
    assert "PUYU_HOME in a folder per base" in prompt and "Where does puyu keep knowledge bases?" in prompt
    links = page.locator("#kb-answer a.cite")
    assert links.count() == 2 and links.first.inner_text() == "[1]"
    links.first.click()
    assert page.is_visible("#chunk-view")
    assert page.inner_text("#chunk-title").startswith("[1] notes.md § Storage")
    assert "PUYU_HOME in a folder per base" in page.inner_text("#chunk-text")
    page.click("#chunk-view .close")
    assert not page.is_visible("#chunk-view")
    assert page.locator("#kb-sources li").count() >= 1
    page.click("#tabs button[data-tab=agent]")
    assert "notes" in page.locator("#agent-kb option").all_inner_texts()  # the agent's search_kb can use it
    page.click("#tabs button[data-tab=kb]")
    assert not page.js_errors


def test_kb_routes_refuse_escapes_and_sync_removes_deleted_files(ui_server):
    base = f"{ui_server.base}/ui/kb/routes"
    upload = [("files", ("../evil.md", b"# x\n")), ("files", ("a.md", b"# A\n\nalpha text\n")), ("files", ("b.md", b"# B\n\nbeta\n"))]
    saved = httpx.post(f"{base}/files", files=upload, timeout=60).json()
    assert saved["saved"] == ["a.md", "b.md"] and "not a plain relative file name" in saved["skipped"][0]["reason"]
    first = sse(httpx.post(f"{base}/sync", timeout=120))
    done = [e["done"] for e in first if e["type"] == "progress"]
    assert done[0] == 0 and done[-1] == 2 and done == sorted(done) and first[-1] == {"type": "done"}
    assert httpx.delete(f"{base}/files/b.md", timeout=30).json() == {"deleted": "b.md"}
    report = [e for e in sse(httpx.post(f"{base}/sync", timeout=120)) if e["type"] == "report"][0]
    assert (report["unchanged"], report["removed"], report["added"]) == (1, 1, 0)
    info = httpx.get(base, timeout=30).json()
    assert [d["path"] for d in info["docs"]] == ["a.md"] and info["files"] == 1
    bad = httpx.post(f"{ui_server.base}/ui/kb/bad name!/sync", timeout=30)
    assert bad.status_code == 400 and "knowledge base name" in bad.json()["error"]["message"]
    empty = sse(httpx.post(f"{ui_server.base}/ui/kb/empty/sync", timeout=30))
    assert empty[-1]["type"] == "error" and "upload files first" in empty[-1]["message"]


def test_agent_tab_offers_the_zoo_tools_its_folder_and_allowed_effects_permit(tmp_path):
    from puyu.web.app import AGENT_TOOLS, UIConfig

    assert UIConfig(api_base="http://x/v1").tools() == AGENT_TOOLS
    assert UIConfig(api_base="http://x/v1", files=str(tmp_path)).tools() == [*AGENT_TOOLS, "read_file", "image_info"]
    everything = UIConfig(api_base="http://x/v1", files=str(tmp_path), allow=("writes_files", "heavy")).tools()
    assert everything == [*AGENT_TOOLS, "read_file", "ocr", "speak", "image_info", "image_edit"]
