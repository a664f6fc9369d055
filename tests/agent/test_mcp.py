"""MCP both ways, with real server processes over stdio and the official ``mcp`` SDK.

- ``puyu mcp`` driven by the SDK's own client: tools listed with their schemas, python run with its
  output (and a saved plot as image content), failures as MCP errors (``isError``).
- ``puyu agent --mcp`` with a scripted model: the tools of ``puyu mcp`` and of a FastMCP server
  written here are listed to the model and called; effects gate tools unless allowed.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap

import anyio
import pytest

from puyu.agent.mcp_client import MCPServer
from puyu.agent.tools import ToolRegistry
from puyu.cli import main
from puyu.errors import ConfigError
from tests.agent.fakes import ScriptedModel, call

PUYU_MCP = f"{sys.executable} -m puyu mcp"
FAST_SERVER = '''
from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

server = FastMCP("test-server")


@server.tool()
def shout(text: str) -> str:
    """Return the text in capitals."""
    return text.upper() + "!"


@server.tool(annotations=ToolAnnotations(openWorldHint=True))
def fetch_page(url: str) -> str:
    """Fetch a web page."""
    return "never called"


server.run()
'''


def _client_session(tools: str, check):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def run():
        params = StdioServerParameters(command=sys.executable, args=["-m", "puyu", "mcp", "--tools", tools])
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await check(session)

    anyio.run(run)


def test_puyu_mcp_serves_tools_to_the_sdk_client():
    async def check(session):
        listed = {t.name: t for t in (await session.list_tools()).tools}
        assert sorted(listed) == ["calculator", "python", "solve"]
        assert listed["python"].inputSchema["required"] == ["code"] and "sandboxed" in listed["python"].description
        assert listed["python"].annotations.readOnlyHint is True

        result = await session.call_tool("python", {"code": "x = 6 * 7\nprint(x)"})
        assert not result.isError and result.content[0].text == "42"
        result = await session.call_tool("python", {"code": "print(x + 1)"})  # one session: state persists
        assert result.content[0].text == "43"
        result = await session.call_tool("solve", {"equations": "2x+3=10"})
        assert result.content[0].text == "x = 7/2 = 3.5"

        plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.savefig('squares.png')"
        result = await session.call_tool("python", {"code": plot})
        assert not result.isError and "saved images: squares.png" in result.content[0].text
        image = result.content[1]
        assert image.type == "image" and image.mimeType == "image/png"
        assert base64.b64decode(image.data).startswith(b"\x89PNG")

        for name, arguments, message in [
            ("python", {"code": "1 / 0"}, "ZeroDivisionError: division by zero"),
            ("calculator", {"expression": "__import__('os')"}, "unsupported expression element"),
            ("python", {"source": "print(1)"}, "InvalidArguments: 'code' is a required property"),
            ("web_search", {"q": "x"}, "UnknownTool: there is no tool 'web_search'"),
        ]:
            result = await session.call_tool(name, arguments)
            assert result.isError and message in result.content[0].text, (name, result.content[0].text)

    _client_session("python,calculator,solve", check)


def test_mcp_client_refuses_a_server_that_does_not_start():
    with pytest.raises(ConfigError, match=r"could not start the MCP server .*FileNotFoundError"):
        MCPServer("/nonexistent/mcp-server")
    with pytest.raises(ConfigError, match=r"(?s)could not start the MCP server.*its stderr:\n.*unknown tool 'nonsense'"):
        MCPServer(f"{PUYU_MCP} --tools nonsense")  # the child exits with its own error, shown to the user


def test_effects_from_annotations_gate_mcp_tools(tmp_path):
    server_file = tmp_path / "server.py"
    server_file.write_text(textwrap.dedent(FAST_SERVER))
    with MCPServer(f"{sys.executable} {server_file}") as server:
        tools = {t.name: t for t in server.tools()}
        assert tools["fetch_page"].effects == {"network"} and tools["shout"].effects == frozenset()
        registry = ToolRegistry()
        with pytest.raises(ConfigError, match=r"'fetch_page' needs the network; it is off unless you allow it \(--allow network\)"):
            registry.add(tools["fetch_page"], allow=[])
        registry.add(tools["shout"], allow=[])
        assert registry.run("shout", {"text": "hi"}).output == "HI!"


def test_puyu_agent_uses_tools_of_two_mcp_servers(tmp_path, monkeypatch, capsys):
    server_file = tmp_path / "server.py"
    server_file.write_text(textwrap.dedent(FAST_SERVER).replace('@server.tool(annotations=ToolAnnotations(openWorldHint=True))\n'
                                                               'def fetch_page', '@server.tool()\ndef fetch_page'))
    model = ScriptedModel([call("shout", '{"text": "x is"}'), call("solve", '{"equations": "2x+3=10"}'), "x = 3.5"])
    monkeypatch.setattr("puyu.agent.LocalChatModel", lambda *args, **kwargs: model)
    monkeypatch.setattr("puyu.cli.agent.load_llm", lambda args: None)
    code = main(["agent", "Solve 2x+3=10", "--tools", "calculator", "--json",
                 "--mcp", f"{PUYU_MCP} --tools solve", "--mcp", f"{sys.executable} {server_file}"])
    steps = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0
    offered = [t["function"]["name"] for t in model.requests[0]["tools"]]
    assert offered == ["calculator", "solve", "shout", "fetch_page"]
    assert [(s["tool"], s["output"]) for s in steps[:2]] == [("shout", "X IS!"), ("solve", "x = 7/2 = 3.5")]
    assert steps[-1]["final_answer"] == "x = 3.5"
