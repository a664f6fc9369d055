"""``puyu chat`` and ``puyu write``: registered with the CLI (see :mod:`puyu.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from puyu.cli.common import add_model_args, load_llm


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with a model in the terminal (or answer one -p question)."""
    from puyu.chat.session import ChatSession
    from puyu.chat.terminal import TerminalChat
    from puyu.cli.flags import flag_values
    from puyu.generation import SamplingParams

    given = flag_values(SamplingParams, args)  # the model's recommended sampling fills what is not given
    SamplingParams(**given)  # a bad value is reported before the model loads
    llm = load_llm(args)
    session = ChatSession(llm, params=llm.sampling(**given), system=args.system)
    for path in args.image or []:
        session.attach(path)
    if args.prompt is not None:
        for piece in session.send(args.prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    return TerminalChat(session).run()


def cmd_write(args: argparse.Namespace) -> int:
    """Write an article on a topic, illustrated with the pictures in a folder (a vision-language model captions them)."""
    from tqdm import tqdm

    from puyu.api import LLM
    from puyu.chat.illustrate import illustrate, image_files

    images = image_files(args.images)  # a bad folder is reported before any model loads
    llm = load_llm(args)
    writer = LLM(args.writer, dtype=args.dtype, device=args.device) if args.writer else None
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="picture" if stage == "captions" else "article",
                                          file=sys.stderr, leave=False))
        bar.update(done - bar.n)

    article = illustrate(llm, args.topic, images, writer, args.paragraphs, progress, temperature=args.temperature,
                         max_new_tokens=args.max_new_tokens)
    for bar in bars.values():
        bar.close()
    out = Path(args.out).expanduser() if args.out else None
    text = article.markdown(relative_to=out.parent if out else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for image, paragraph, fit in article.placements:
        print(f"placed {article.images[image].name} after paragraph {paragraph + 1} (fit {fit:+.2f} nats): "
              f"{article.captions[image]}", file=sys.stderr)
    for path in article.unplaced:
        print(f"left out {path.name}: it fits no paragraph", file=sys.stderr)
    if out:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def register(sub, common) -> None:
    from puyu.cli.flags import add_dataclass_flags
    from puyu.generation.sampling import SamplingParams
    from puyu.tokenizer.tokenizer import SAMPLING_KEYS

    chat = sub.add_parser("chat", parents=[common], help=cmd_chat.__doc__,
                          description=cmd_chat.__doc__ + " In the chat: /clear, /system TEXT, /image PATH, /exit; Ctrl-C stops a reply.")
    add_model_args(chat, quant=True)
    chat.add_argument("-p", "--prompt", default=None, help="ask one question, print the reply and exit")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--image", action="append", metavar="PATH", help="an image for the first message (vision-language "
                      "models; repeatable); /image PATH in the chat adds one to the next message")
    add_dataclass_flags(chat, SamplingParams, "sampling", overrides=dict.fromkeys(SAMPLING_KEYS))
    chat.set_defaults(func=cmd_chat)

    write = sub.add_parser("write", parents=[common], help=cmd_write.__doc__, description=cmd_write.__doc__)
    add_model_args(write)
    write.add_argument("topic", help="what the article is about")
    write.add_argument("--images", required=True, metavar="DIR", help="the folder of pictures to place in the article")
    write.add_argument("--out", default=None, help="write the Markdown here (image links relative to it; default: print it)")
    write.add_argument("--writer", default=None, help="a text model that writes and places (default: the model itself)")
    write.add_argument("--paragraphs", type=int, default=5, help="paragraphs to write (default: 5)")
    write.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the article (default: 0.7)")
    write.add_argument("--max-new-tokens", type=int, default=800, help="most tokens of the article (default: 800)")
    write.set_defaults(func=cmd_write)
