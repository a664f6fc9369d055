"""The ``puyu`` command: one entry point; each stage registers its subcommands.

A stage module listed in ``STAGES`` defines ``register(sub, common)`` which adds
its subcommands to ``sub`` (argparse subparsers; pass ``parents=[common]`` for
``--debug``/``-v``) and sets ``func`` to a plain function of the parsed
arguments.  Stage modules import heavy libraries inside those functions, so
``puyu --help`` stays fast.  Errors the user can fix
(:class:`~puyu.errors.PuyuError`, missing files) print as one line
``puyu: error: ...`` with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import time

from puyu import __version__
from puyu.errors import PuyuError

log = logging.getLogger("puyu")
STAGES = ["puyu.agent.commands", "puyu.chat.commands", "puyu.model.commands", "puyu.eval.commands", "puyu.rag.commands", "puyu.serve.commands", "puyu.train.commands", "puyu.web.commands"]


def add_model_args(parser: argparse.ArgumentParser, optional: bool = True) -> None:
    """The model positional plus --dtype/--device/--chat-template, shared by every command that loads one."""
    from puyu.model.registry import DEFAULT_MODEL

    if optional:
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"registered name, HF folder or .gguf file (default: {DEFAULT_MODEL})")
    else:
        parser.add_argument("model", help="registered name, HF folder or .gguf file")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--chat-template", default=None, help="override the model's template: chatml, internlm2, llama3 or a Jinja file")


def load_llm(args: argparse.Namespace):
    """An :class:`~puyu.api.LLM` from the flags of :func:`add_model_args` (and ``--adapter`` where a
    command has it), with a spinner on a terminal."""
    from pathlib import Path

    from puyu.api import LLM

    template = args.chat_template
    if template and Path(template).is_file():
        template = Path(template).read_text()
    start = time.perf_counter()
    with status(f"loading {args.model} (the first load of a GGUF converts it once)"):
        llm = LLM(args.model, dtype=args.dtype, device=args.device, chat_template=template, adapter=getattr(args, "adapter", None))
    log.info("loaded %s in %.1f s (%s, %s)", args.model, time.perf_counter() - start, llm.model.dtype, llm.model.device)
    return llm


def status(text: str):
    """A spinner on an interactive stderr, nothing otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console

        return Console(stderr=True).status(text)
    return contextlib.nullcontext()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    parser = argparse.ArgumentParser(
        prog="puyu", parents=[common], description="puyu: chat, fine-tune, serve, evaluate, agents and RAG on your own machine."
    )
    parser.add_argument("--version", action="version", version=f"puyu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        importlib.import_module(stage).register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if ("-v" in argv or "--verbose" in argv) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (PuyuError, OSError) as exc:
        if debug:
            raise
        print(f"puyu: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, PuyuError) else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
