"""The ``puyu`` command: one entry point; one module here per stage registers its subcommands.

The CLI is the top layer: it imports the stages, never the other way round.
A module listed in ``STAGES`` defines ``register(sub, common)`` which adds
its subcommands to ``sub`` (argparse subparsers; pass ``parents=[common]`` for
``--debug``/``-v``) and sets ``func`` to a plain function of the parsed
arguments.  Stage modules import heavy libraries inside those functions, so
``puyu --help`` stays fast.  Errors the user can fix
(:class:`~puyu.errors.PuyuError`, missing files) print as one line
``puyu: error: ...`` with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from puyu import __version__
from puyu.errors import PuyuError

log = logging.getLogger("puyu")
STAGES = ["puyu.cli.agent", "puyu.cli.chat", "puyu.cli.corpus", "puyu.cli.mcp", "puyu.cli.model", "puyu.cli.eval", "puyu.cli.quantize",
          "puyu.cli.rag", "puyu.cli.serve", "puyu.cli.tokenizer", "puyu.cli.train", "puyu.cli.web"]


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
    for command in sub.choices.values():
        command.set_defaults(command_parser=command)  # for parse(): a leftover is parsed again by the command's parser
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, letting a command's positionals follow its options (``puyu agent MODEL --adapter
    agent "TASK"``): argparse alone takes ``TASK`` for a stray argument when an optional positional comes first, so a
    leftover is parsed again with ``parse_intermixed_args`` by the command's own parser."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        tail = argv[argv.index(args.command) + 1 :]
        try:
            return args.command_parser.parse_intermixed_args(tail, namespace=argparse.Namespace(command=args.command))
        except TypeError:  # a command with sub-commands cannot be parsed intermixed: argparse's own error below
            pass
        parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if ("-v" in argv or "--verbose" in argv) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args = parse(build_parser(), argv)
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
