"""``puyu chat``: the terminal chat.

Interactive on a terminal (line editing and history via readline): replies
stream as they are generated, Ctrl-C stops a reply (not the program), Ctrl-D
or ``/exit`` quits.  With stdin from a pipe every line is one user turn (the
commands work too) and only the replies are printed, one per line block.
``-p TEXT`` asks one question and exits.

Commands: ``/clear`` forgets the conversation, ``/system TEXT`` sets the system
prompt (``/system`` alone shows it), ``/image PATH`` shows an image with the next
message (vision-language models), ``/exit`` quits, ``/help`` lists them.
"""

from __future__ import annotations

import sys
from typing import TextIO

from puyu.chat.session import ChatSession
from puyu.errors import PuyuError

HELP = ("commands: /clear  forget the conversation | /system TEXT  set the system prompt | /image PATH  show an image with "
        "the next message | /exit  quit | /help")


class TerminalChat:
    def __init__(self, session: ChatSession, out: TextIO = sys.stdout, err: TextIO = sys.stderr, interactive: bool | None = None):
        self.session = session
        self.out, self.err = out, err
        self.interactive = sys.stdin.isatty() if interactive is None else interactive

    def _note(self, text: str) -> None:
        style = ("\033[2m", "\033[0m") if self.interactive and self.err.isatty() else ("", "")
        print(f"{style[0]}[{text}]{style[1]}", file=self.err, flush=True)

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/clear":
            self.session.clear()
            self._note("conversation cleared")
        elif name == "/system":
            if arg.strip():
                self.session.system = arg.strip()
                self._note("system prompt set")
            else:
                self._note(f"system prompt: {self.session.system or '(none)'}")
        elif name == "/image":
            try:
                self.session.attach(arg.strip())
                self._note(f"{arg.strip()} goes with your next message")
            except PuyuError as exc:
                self._note(f"error: {exc}")
        elif name == "/help":
            self._note(HELP)
        else:
            self._note(f"unknown command {name}; {HELP}")
        return True

    def answer(self, text: str) -> None:
        """Stream the reply to ``text``; Ctrl-C stops it and keeps the conversation."""
        if self.interactive:
            self.out.write("assistant> ")
        pieces = self.session.send(text)
        try:
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            pieces.close()
            self.out.write("\n")
            self._note("stopped")
        self.out.write("\n")
        self.out.flush()
        if self.session.dropped:
            self._note(f"the conversation outgrew the context window: dropped the {self.session.dropped} oldest messages")

    def run(self) -> int:
        if self.interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            self._note(f"chatting with {self.session.llm.name}; {HELP}; Ctrl-C stops a reply, Ctrl-D quits")
        while True:
            try:
                line = input("user> " if self.interactive else "")
            except EOFError:
                if self.interactive:
                    self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                self.out.write("\n")
                self._note("Ctrl-C stops a reply; /exit or Ctrl-D quits")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            try:
                self.answer(line)
            except PuyuError as exc:
                self._note(f"error: {exc}")
