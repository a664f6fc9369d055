"""The tools of any Model Context Protocol server, over stdio, as puyu tools (``puyu agent --mcp "CMD ARGS"``).

>>> with MCPServer("python my_server.py") as server:
...     registry = ToolRegistry(server.tools())

:class:`MCPServer` starts the server's command as a child process with the official ``mcp`` SDK
(``stdio_client`` + ``ClientSession``), initializes the session and lists its tools (all pages).
The agent loop is synchronous and the SDK is asyncio, so the session lives in its own thread
with its own event loop, and each call is sent to it and waited for (``timeout_s``).  Each MCP
tool becomes a :class:`~puyu.agent.tools.Tool` with the server's name, description and input
schema; its text content is the output, image content becomes the step's images, and a result
with ``isError`` is the tool's error (an observation for the model).  Effects come from the
tool's explicit annotations: ``openWorldHint: true`` is ``network``, ``readOnlyHint: false`` is
``writes_files`` (so ``--allow`` gates them like puyu's own).  The child gets the SDK's minimal
environment (``PATH``, ``HOME`` ...) plus ``PUYU_*`` variables, never the rest of ours; its
stderr is kept and shown when it fails to start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shlex
import tempfile
import threading
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

from puyu.agent.tools import Tool, ToolImage, ToolOutput
from puyu.errors import ConfigError


def _effects(annotations) -> set[str]:
    if annotations is None:
        return set()
    network = {"network"} if annotations.openWorldHint is True else set()
    return network | ({"writes_files"} if annotations.readOnlyHint is False else set())


def _output(result) -> ToolOutput:
    """An MCP ``CallToolResult`` as text and images; ``isError`` raises with the server's message."""
    texts, images = [], []
    for i, block in enumerate(result.content):
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "image":
            images.append(ToolImage(f"image-{i}", block.mimeType, base64.b64decode(block.data)))
        else:
            texts.append(block.model_dump_json(exclude_none=True))
    text = "\n".join(texts)
    if result.isError:
        raise RuntimeError(text or "the MCP tool failed without a message")
    return ToolOutput(text, images)


class MCPServer:
    """One MCP server over stdio, connected for the lifetime of this object (a context manager).

    Args:
        command: the command line, e.g. ``"puyu mcp --tools python"`` (split like a shell would).
        timeout_s: seconds to wait for the server to start and for each call.
    """

    def __init__(self, command: str, timeout_s: float = 60.0):
        self.argv = shlex.split(command)
        if not self.argv:
            raise ConfigError("an --mcp server command is empty; give the command that starts it, e.g. --mcp 'puyu mcp'")
        self.command, self.timeout_s = command, timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session = None
        self._listed: list = []
        self._ready: Future = Future()
        self._stop: asyncio.Event | None = None
        self._errlog = tempfile.TemporaryFile(mode="w+")
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=f"mcp:{self.argv[0]}", daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=timeout_s)
        except Exception as e:
            message = f"could not start the MCP server {command!r}: {type(e).__name__}: {e}{self._stderr()}"
            self.close()
            raise ConfigError(message) from None

    def _stderr(self) -> str:
        self._errlog.seek(0)
        tail = self._errlog.read()[-1500:].strip()
        return f"\nits stderr:\n{tail}" if tail else ""

    async def _main(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import get_default_environment, stdio_client

        env = get_default_environment() | {k: v for k, v in os.environ.items() if k.startswith("PUYU_")}
        params = StdioServerParameters(command=self.argv[0], args=self.argv[1:], env=env)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with stdio_client(params, errlog=self._errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                cursor = None
                while True:
                    page = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
                    self._listed += page.tools
                    cursor = page.nextCursor
                    if not cursor:
                        break
                self._session = session
                self._ready.set_result(True)
                await self._stop.wait()
        except BaseException as e:  # noqa: BLE001 - reported to the caller's thread
            while isinstance(e, BaseExceptionGroup) and e.exceptions:  # anyio's task groups wrap the cause
                e = e.exceptions[0]
            if not self._ready.done():
                self._ready.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))

    def _call(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        if self._session is None or self._loop is None or not self._thread.is_alive():
            raise RuntimeError(f"the MCP server {self.command!r} is not running{self._stderr()}")
        call = self._session.call_tool(name, arguments, read_timeout_seconds=timedelta(seconds=self.timeout_s))
        return _output(asyncio.run_coroutine_threadsafe(call, self._loop).result(self.timeout_s + 5))

    def tools(self) -> list[Tool]:
        """The server's tools as puyu tools."""
        def make(listed) -> Tool:
            def call(**arguments: Any) -> ToolOutput:
                return self._call(listed.name, arguments)

            return Tool(call, listed.name, listed.description or listed.title or f"the {listed.name} tool of {self.argv[0]}",
                        dict(listed.inputSchema), effects=_effects(listed.annotations))

        return [make(t) for t in self._listed]

    def close(self) -> None:
        """End the session and the server process."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended (the server had exited)
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._errlog.close()

    def __enter__(self) -> MCPServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
