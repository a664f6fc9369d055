"""Agents (Lagent-style): tools, a sandboxed Python interpreter, ReAct and function-calling loops.

- :mod:`puyu.agent.tools`: ``@tool``, :class:`Tool`, :class:`ToolRegistry`, :class:`ToolResult`;
- :mod:`puyu.agent.builtin_tools`: python (sandboxed), calculator, solve, read_file, search_kb;
- :class:`PythonSandbox` (from :mod:`puyu.sandbox`), usable on its own;
- :mod:`puyu.agent.models`: a local :class:`~puyu.api.LLM` or an OpenAI-compatible API as the agent's model;
- :mod:`puyu.agent.protocols` and :mod:`puyu.agent.agent`: the ReAct, function-calling and InternLM2 loops;
  :mod:`puyu.agent.react_grammar`: the grammar a local model's ReAct turns are generated under;
- :mod:`puyu.agent.zoo`: offline OCR, speech and image tools (:mod:`puyu.agent.folder` confines their files);
- :mod:`puyu.agent.mcp_client` / :mod:`puyu.agent.mcp_server`: any MCP server's tools as puyu tools, and puyu's
  tools as an MCP server (``puyu agent --mcp``, ``puyu mcp``).
"""

from puyu.agent.agent import Agent, AgentRun, Step
from puyu.agent.builtin_tools import BUILTIN_NAMES, builtin_tools, calculator, solve
from puyu.agent.models import LocalChatModel, OpenAIChatModel, Reply
from puyu.agent.tools import Tool, ToolImage, ToolOutput, ToolRegistry, ToolResult, tool
from puyu.sandbox import PythonSandbox, SandboxResult

__all__ = ["Agent", "AgentRun", "Step", "BUILTIN_NAMES", "builtin_tools", "calculator", "solve", "LocalChatModel", "OpenAIChatModel",
           "Reply", "PythonSandbox", "SandboxResult", "Tool", "ToolImage", "ToolOutput", "ToolRegistry", "ToolResult", "tool"]
