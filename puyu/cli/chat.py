"""``puyu chat``: registered with the CLI (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse
import sys

from puyu.cli.common import add_model_args, load_llm


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with a model in the terminal (or answer one -p question)."""
    from puyu.chat.session import ChatSession
    from puyu.chat.terminal import TerminalChat
    from puyu.cli.flags import dataclass_from_args
    from puyu.generation import SamplingParams

    params = dataclass_from_args(SamplingParams, args)
    llm = load_llm(args)
    session = ChatSession(llm, params=params, system=args.system)
    for path in args.image or []:
        session.attach(path)
    if args.prompt is not None:
        for piece in session.send(args.prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    return TerminalChat(session).run()


def register(sub, common) -> None:
    from puyu.cli.flags import add_dataclass_flags
    from puyu.generation.sampling import SamplingParams

    chat = sub.add_parser("chat", parents=[common], help=cmd_chat.__doc__,
                          description=cmd_chat.__doc__ + " In the chat: /clear, /system TEXT, /image PATH, /exit; Ctrl-C stops a reply.")
    add_model_args(chat, quant=True)
    chat.add_argument("-p", "--prompt", default=None, help="ask one question, print the reply and exit")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--image", action="append", metavar="PATH", help="an image for the first message (vision-language "
                      "models; repeatable); /image PATH in the chat adds one to the next message")
    add_dataclass_flags(chat, SamplingParams, "sampling")
    chat.set_defaults(func=cmd_chat)
