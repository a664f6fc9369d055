"""puyu's tools as a Model Context Protocol server (``puyu mcp``), over stdio, with the official ``mcp`` SDK.

:func:`serve_stdio(registry) <serve_stdio>` answers ``tools/list`` with each tool's name, description,
JSON schema and effects (as MCP annotations: ``readOnlyHint``/``openWorldHint``), and ``tools/call`` by
running the tool through :meth:`ToolRegistry.run <puyu.agent.tools.ToolRegistry.run>`: its text comes
back as text content, its images (plots the python tool saved) as image content, and a failure
(unknown tool, arguments against the schema, the tool's own error) as a result with ``isError``
set and the message as text, which is how MCP reports tool errors to the calling model.

Why the SDK's low-level ``Server`` and not ``FastMCP``: FastMCP derives each schema from a Python
signature, while puyu's tools already carry their schemas (with argument descriptions) and
validate their own arguments; the low-level server publishes those schemas as they are.  Calls
run one at a time in a worker thread (the python tool's session is one interpreter).
"""

from __future__ import annotations

import base64
import logging
import threading

from puyu.agent.tools import ToolRegistry, ToolResult

log = logging.getLogger(__name__)


def _annotations(effects: frozenset[str]):
    from mcp import types

    return types.ToolAnnotations(readOnlyHint="writes_files" not in effects, openWorldHint="network" in effects)


def _content(result: ToolResult) -> list:
    from mcp import types

    text = [types.TextContent(type="text", text=result.observation() if result.error else result.output)]
    images = [types.ImageContent(type="image", data=base64.b64encode(i.data).decode(), mimeType=i.mime) for i in result.images]
    return text + images


def build_server(registry: ToolRegistry, name: str = "puyu"):
    """An ``mcp`` low-level server offering ``registry``'s tools."""
    import anyio
    from mcp import types
    from mcp.server.lowlevel import Server

    server = Server(name)
    lock = threading.Lock()

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name=t.name, description=t.description, inputSchema=t.parameters, annotations=_annotations(t.effects))
                for t in registry.tools.values()]

    def run(tool: str, arguments: dict) -> ToolResult:
        with lock:
            return registry.run(tool, arguments)

    @server.call_tool(validate_input=False)  # Tool.run validates, naming the schema in its error
    async def call_tool(tool: str, arguments: dict) -> types.CallToolResult:
        result = await anyio.to_thread.run_sync(run, tool, arguments)
        log.info("%s(%s) -> %s", tool, arguments, "error" if result.error else "ok")
        return types.CallToolResult(content=_content(result), isError=result.error is not None)

    return server


def serve_stdio(registry: ToolRegistry, name: str = "puyu") -> None:
    """Serve ``registry`` over stdin/stdout until the client closes the connection."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = build_server(registry, name)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
