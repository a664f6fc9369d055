"""``puyu agent``: run a tool-using agent on one task, showing its steps as they happen (see :mod:`puyu.cli`).

``puyu agent-tune`` builds the agent-tuning data (:mod:`puyu.agent.tuning`), trains the ``agent_tuning``
recipe on it and saves the adapter under a name that ``puyu agent --adapter NAME`` loads.

:func:`add_tool_args` and :func:`tool_registry` are shared with ``puyu mcp`` (:mod:`puyu.cli.mcp`), which serves
the same tools to other agents.
"""

from __future__ import annotations

import argparse
import contextlib
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
        for image in step.images:
            console.print(f"[magenta]image:[/] {image.name} ({image.mime}, {len(image.data) / 1024:.0f} KB; --json carries it)")
    else:
        if step.error:
            console.print(f"[red]unparsed reply:[/] {step.error}")
        console.print(f"[bold]Final Answer:[/] {step.final_answer}")


def names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def tool_registry(args: argparse.Namespace, stack: contextlib.ExitStack):
    """The tools ``args`` ask for: built-ins and zoo (``--tools``), then every ``--mcp`` server's; closed with ``stack``."""
    from puyu.agent import PythonSandbox, builtin_tools
    from puyu.agent.mcp_client import MCPServer
    from puyu.agent.tools import EFFECTS
    from puyu.errors import ConfigError

    allow = names(args.allow)
    if set(allow) - EFFECTS.keys():
        raise ConfigError(f"--allow takes {', '.join(EFFECTS)}; got {', '.join(sorted(set(allow) - EFFECTS.keys()))}")
    sandbox = stack.enter_context(PythonSandbox(timeout_s=args.timeout))
    registry = builtin_tools(names(args.tools), sandbox=sandbox, files=args.files, kb=args.kb, allow=allow)
    for command in args.mcp or []:
        for tool in stack.enter_context(MCPServer(command, timeout_s=max(args.timeout, 30.0))).tools():
            registry.add(tool, allow)
    return registry


def cmd_agent(args: argparse.Namespace) -> int:
    """Run an agent on a task with built-in tools (Python sandbox, calculator, solver, files, knowledge base, zoo) and MCP tools."""
    from puyu.agent import Agent, LocalChatModel, OpenAIChatModel

    with contextlib.ExitStack() as stack:
        registry = tool_registry(args, stack)
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


def cmd_agent_tune(args: argparse.Namespace) -> int:
    """Build tool-use trajectories (GSM8K train, equation tasks, glaive; cached) and LoRA-tune the model on them for agents."""
    import shutil

    from puyu.agent.tuning import Mix, build_agent_data
    from puyu.errors import ConfigError
    from puyu.home import data_dir, home_subdir
    from puyu.train.config import load_recipe
    from puyu.train.trainer import Trainer

    if not args.name or "/" in args.name or args.name.startswith("."):
        raise ConfigError(f"--name must be a plain name such as 'agent', got {args.name!r}")
    mix = Mix(**{k: getattr(args, k) for k in ("gsm8k", "tasks", "glaive", "seed") if getattr(args, k) is not None})
    path, report = build_agent_data(mix, data_dir(args.data_dir, "--data-dir DIR"))
    print(f"agent data: {path} ({report.summary()})", flush=True)
    recipe = load_recipe("agent_tuning", [f"data.train={path}", *args.overrides])
    result = Trainer(recipe).fit()
    if result.output is None or result.output.name != "adapter":
        raise ConfigError(f"agent-tune saves a LoRA adapter; method {recipe.method!r} made {result.output}; use method=lora or qlora")
    target, staging = home_subdir("adapters") / args.name, home_subdir("adapters") / f".{args.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(result.output, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"trained {result.steps} steps, loss {result.train_loss:.4f}; adapter saved as {args.name!r} ({target})\n"
          f"use it: puyu agent {recipe.model} --adapter {args.name} '已知2x+3=10，求x'")
    return 0


def add_tool_args(parser: argparse.ArgumentParser, default_tools: str) -> None:
    """--tools, --files, --kb, --allow, --timeout and --mcp (shared by ``puyu agent`` and ``puyu mcp``)."""
    from puyu.agent.builtin_tools import BUILTIN_NAMES
    from puyu.agent.tools import EFFECTS

    parser.add_argument("--tools", default=default_tools,
                        help=f"comma-separated, from {', '.join(BUILTIN_NAMES)} (default: {default_tools})")
    parser.add_argument("--files", default=None, help="the folder read_file, ocr, speak and the image tools work in")
    parser.add_argument("--kb", default=None, help="the knowledge base search_kb searches (from puyu kb)")
    effects = ", ".join(f"{k} ({v})" for k, v in EFFECTS.items())
    parser.add_argument("--allow", default="", help=f"comma-separated effects tools may have: {effects}; "
                        "a tool with an effect not allowed is refused (default: none)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall seconds per Python sandbox call (default: 10)")
    parser.add_argument("--mcp", action="append", metavar="'CMD ARGS'",
                        help="also use the tools of this MCP server, started over stdio (repeatable), e.g. --mcp 'puyu mcp --tools solve'")


def register(sub, common) -> None:
    agent = sub.add_parser("agent", parents=[common], help=cmd_agent.__doc__, description=cmd_agent.__doc__)
    add_model_args(agent, quant=True)
    agent.add_argument("task", help="what the agent should do, e.g. '已知2x+3=10，求x'")
    add_tool_args(agent, "python,calculator,solve")
    agent.add_argument("--protocol", default="function", choices=["function", "react", "internlm2"],
                       help="how the model calls tools (default: function)")
    agent.add_argument("--language", default="en", choices=["en", "zh"], help="prompt language (default: en)")
    agent.add_argument("--max-steps", type=int, default=6, help="most model turns; the last must answer (default: 6)")
    agent.add_argument("--tool-choice", default="auto", choices=["auto", "required"],
                       help="required: every turn before the last calls a tool")
    agent.add_argument("--no-constrain", dest="constrain", action="store_false",
                       help="do not constrain local tool calls (function calling) and ReAct turns to grammars")
    agent.add_argument("--system", default=None, help="an extra system prompt")
    agent.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    agent.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per model turn (default: 512)")
    agent.add_argument("--api-base", default=None, help="drive a remote OpenAI-compatible model instead, e.g. http://127.0.0.1:8000/v1")
    agent.add_argument("--api-key", default=None, help="key for --api-base (default: EMPTY)")
    agent.add_argument("--api-model", default=None, help="model name at --api-base (default: the first it lists)")
    agent.add_argument("--json", action="store_true", help="print each step as one JSON line (images as data URLs)")
    agent.set_defaults(func=cmd_agent)

    tune = sub.add_parser("agent-tune", parents=[common], help=cmd_agent_tune.__doc__, description=cmd_agent_tune.__doc__)
    tune.add_argument("overrides", nargs="*", help="key=value settings over the agent_tuning recipe, e.g. train.max_steps=20")
    tune.add_argument("--name", default="agent", help="save the adapter as $PUYU_HOME/adapters/NAME (default: agent)")
    tune.add_argument("--data-dir", default=None, help="the datasets folder holding eval/gsm8k and sft/chat_messages "
                      "(default: $PUYU_DATA_DIR)")
    for flag, what in [("gsm8k", "GSM8K train rows to keep"), ("tasks", "generated equation and arithmetic tasks"),
                       ("glaive", "glaive tool-calling chats"), ("seed", "seed of the data")]:
        tune.add_argument(f"--{flag}", type=int, default=None, help=f"{what} (default: puyu.agent.tuning.Mix's)")
    tune.set_defaults(func=cmd_agent_tune)
