"""``puyu agent``: run a tool-using agent on one task, showing its steps as they happen (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse
import json
import sys

from puyu.cli.common import add_model_args, load_llm


def _show(step, as_json: bool) -> None:
    if as_json:
        print(json.dumps(step.to_dict(), ensure_ascii=False), flush=True)
        return
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    if step.repaired:
        console.print(f"[yellow]repaired:[/] {step.repaired}")
    if step.thought:
        console.print(f"[dim]thought:[/] {step.thought}")
    if step.tool:
        console.print(f"[cyan]{step.tool}[/]({step.arguments})  [dim]{step.elapsed_s:.1f} s[/]")
        console.print(f"[red]error:[/] {step.error}" if step.error else f"[green]→[/] {step.output}", markup=True)
    else:
        if step.error:
            console.print(f"[red]unparsed reply:[/] {step.error}")
        console.print(f"[bold]Final Answer:[/] {step.final_answer}")


def cmd_agent(args: argparse.Namespace) -> int:
    """Run an agent on a task with built-in tools (Python sandbox, calculator, solver, files, knowledge base)."""
    from puyu.agent import Agent, LocalChatModel, OpenAIChatModel, PythonSandbox, builtin_tools

    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    with PythonSandbox(timeout_s=args.timeout) as sandbox:
        registry = builtin_tools(names, sandbox=sandbox, files=args.files, kb=args.kb)
        sampling = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
        if args.api_base:
            model = OpenAIChatModel(args.api_model, args.api_base, args.api_key, **sampling)
        else:
            model = LocalChatModel(load_llm(args), constrain=args.constrain, **sampling)
        agent = Agent(model, registry, protocol=args.protocol, language=args.language, max_steps=args.max_steps,
                      system=args.system, tool_choice=args.tool_choice)
        for step in agent.stream(args.task):
            _show(step, args.json)
    sys.stdout.flush()
    return 0


def register(sub, common) -> None:
    from puyu.agent.builtin_tools import BUILTIN_NAMES

    agent = sub.add_parser("agent", parents=[common], help=cmd_agent.__doc__, description=cmd_agent.__doc__)
    add_model_args(agent)
    agent.add_argument("task", help="what the agent should do, e.g. '已知2x+3=10，求x'")
    agent.add_argument("--tools", default="python,calculator,solve",
                       help=f"comma-separated, from {', '.join(BUILTIN_NAMES)} (default: python,calculator,solve)")
    agent.add_argument("--protocol", default="function", choices=["function", "react", "internlm2"],
                       help="how the model calls tools (default: function)")
    agent.add_argument("--language", default="en", choices=["en", "zh"], help="prompt language (default: en)")
    agent.add_argument("--max-steps", type=int, default=6, help="most model turns; the last must answer (default: 6)")
    agent.add_argument("--tool-choice", default="auto", choices=["auto", "required"],
                       help="required: every turn before the last calls a tool")
    agent.add_argument("--no-constrain", dest="constrain", action="store_false",
                       help="do not constrain local tool calls to the tools' schemas")
    agent.add_argument("--system", default=None, help="an extra system prompt")
    agent.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    agent.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per model turn (default: 512)")
    agent.add_argument("--timeout", type=float, default=10.0, help="wall seconds per Python sandbox call (default: 10)")
    agent.add_argument("--files", default=None, help="the folder read_file may read")
    agent.add_argument("--kb", default=None, help="the knowledge base search_kb searches (from puyu kb)")
    agent.add_argument("--api-base", default=None, help="drive a remote OpenAI-compatible model instead, e.g. http://127.0.0.1:8000/v1")
    agent.add_argument("--api-key", default=None, help="key for --api-base (default: EMPTY)")
    agent.add_argument("--api-model", default=None, help="model name at --api-base (default: the first it lists)")
    agent.add_argument("--json", action="store_true", help="print each step as one JSON line")
    agent.set_defaults(func=cmd_agent)
