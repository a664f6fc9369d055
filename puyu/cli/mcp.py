"""``puyu mcp``: serve puyu's tools to any agent as a Model Context Protocol server over stdio (see :mod:`puyu.cli`).

Other agents (LangChain through ``langchain-mcp-adapters``, IDE assistants, ``puyu agent --mcp``) start it as a
child process and talk MCP on its stdin/stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve puyu's tools (sandboxed python, calculator, solve, search_kb, read_file, the zoo) over MCP on stdio."""
    from puyu.agent.mcp_server import serve_stdio
    from puyu.cli.agent import names, tool_registry

    tools = names(args.tools)
    tools += [name for name, given in (("read_file", args.files), ("search_kb", args.kb)) if given and name not in tools]
    args.tools = ",".join(tools)
    with contextlib.ExitStack() as stack:
        serve_stdio(tool_registry(args, stack))
    return 0


def register(sub, common) -> None:
    from puyu.cli.agent import add_tool_args

    mcp = sub.add_parser("mcp", parents=[common], help=cmd_mcp.__doc__, description=cmd_mcp.__doc__ +
                         " read_file is added with --files, search_kb with --kb.")
    add_tool_args(mcp, "python,calculator,solve")
    mcp.set_defaults(func=cmd_mcp)
