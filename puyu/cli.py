"""The ``puyu`` command: one entry point, one subcommand per stage.

Each subcommand is a plain function taking the parsed arguments.  Errors the
user can fix (:class:`~puyu.errors.PuyuError`, missing files) print as one
line ``puyu: error: ...`` with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from puyu import __version__
from puyu.errors import PuyuError

log = logging.getLogger("puyu")


def _model_args(parser: argparse.ArgumentParser, optional: bool = True) -> None:
    from puyu.model.registry import DEFAULT_MODEL

    if optional:
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"registered name, HF folder or .gguf file (default: {DEFAULT_MODEL})")
    else:
        parser.add_argument("model", help="registered name, HF folder or .gguf file")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--chat-template", default=None, help="override the model's template: chatml, internlm2, llama3 or a Jinja file")


def _load(args: argparse.Namespace):
    from pathlib import Path

    from puyu.api import LLM

    template = args.chat_template
    if template and Path(template).is_file():
        template = Path(template).read_text()
    start = time.perf_counter()
    with _status(f"loading {args.model} (the first load of a GGUF converts it once)"):
        llm = LLM(args.model, dtype=args.dtype, device=args.device, chat_template=template)
    log.info("loaded %s in %.1f s (%s, %s)", args.model, time.perf_counter() - start, llm.model.dtype, llm.model.device)
    return llm


def _status(text: str):
    """A spinner on an interactive stderr, nothing otherwise."""
    import contextlib

    if sys.stderr.isatty():
        from rich.console import Console

        return Console(stderr=True).status(text)
    return contextlib.nullcontext()


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with a model in the terminal (or answer one -p question)."""
    from puyu.chat.session import ChatSession
    from puyu.chat.terminal import TerminalChat
    from puyu.cli_args import dataclass_from_args
    from puyu.generation import SamplingParams

    params = dataclass_from_args(SamplingParams, args)
    llm = _load(args)
    session = ChatSession(llm, params=params, system=args.system)
    if args.prompt is not None:
        for piece in session.send(args.prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    return TerminalChat(session).run()


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered model names and whether they are installed."""
    from puyu.errors import ModelLoadError
    from puyu.model.registry import REGISTRY, resolve

    for entry in REGISTRY.values():
        try:
            where = str(resolve(entry.name))
        except ModelLoadError:
            where = f"not installed: {entry.install}"
        print(f"{entry.name}\t{entry.description}\t{where}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Save a model (name, folder or GGUF) as a Hugging Face folder that transformers loads."""
    llm = _load(args)
    out = llm.save(args.out)
    print(f"saved {args.model} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from puyu.cli_args import add_dataclass_flags
    from puyu.generation import SamplingParams

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    parser = argparse.ArgumentParser(
        prog="puyu", parents=[common], description="puyu: chat, fine-tune, serve, evaluate, agents and RAG on your own machine."
    )
    parser.add_argument("--version", action="version", version=f"puyu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, description: str | None = None) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=func.__doc__, description=description or func.__doc__)
        command.set_defaults(func=func)
        return command

    chat = add("chat", cmd_chat, cmd_chat.__doc__ + " In the chat: /clear, /system TEXT, /exit; Ctrl-C stops a reply.")
    _model_args(chat)
    chat.add_argument("-p", "--prompt", default=None, help="ask one question, print the reply and exit")
    chat.add_argument("--system", default=None, help="system prompt")
    add_dataclass_flags(chat, SamplingParams, "sampling")

    add("models", cmd_models)

    convert = add("convert", cmd_convert)
    _model_args(convert, optional=False)
    convert.add_argument("out", help="output folder")
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
    except PuyuError as exc:
        if debug:
            raise
        print(f"puyu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if debug:
            raise
        print(f"puyu: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
