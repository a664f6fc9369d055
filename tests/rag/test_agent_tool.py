"""The agent's knowledge-base tool searches a real knowledge base and cites its sources."""

from __future__ import annotations

from puyu.agent.builtin_tools import builtin_tools


def test_search_kb_tool_returns_cited_passages(make_kb, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "install.md").write_text("# Install\n\nIf libnccl.so.2 is not found, reinstall the prebuilt wheel.")
    (docs / "serve.md").write_text("# Serving\n\nThe api_server listens on port 23333 by default.")
    kb = make_kb("agentkb")
    kb.build([docs])
    kb.close()
    tools = builtin_tools(["search_kb"], kb="agentkb")
    result = tools.run("search_kb", {"query": "which port does the api server use"})
    assert result.ok and result.output.startswith("[1] (serve.md)") and "23333" in result.output
    assert "search_kb" in [t["function"]["name"] for t in tools.schemas()]
