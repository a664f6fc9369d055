"""`puyu chat` on the built-in model as a user runs it: through a pipe and through a terminal."""

from __future__ import annotations

import signal
import subprocess
import sys

import pexpect
import pytest

pytestmark = pytest.mark.builtin
CHAT = [sys.executable, "-m", "puyu", "chat", "--dtype", "float32", "--temperature", "0"]


@pytest.fixture(autouse=True)
def _converted(builtin_llm):
    """Make sure the GGUF conversion is cached before the subprocesses start."""


def test_piped_turns_clear_and_exit():
    script = "What is the capital of France?\n/clear\nWhat is the capital of France?\n/exit\n/system never processed\n"
    done = subprocess.run(CHAT + ["--max-new-tokens", "24"], input=script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Paris") == 2  # greedy: the same answer before and after /clear
    assert "[conversation cleared]" in done.stderr and "never processed" not in done.stderr


def test_one_shot_prompt():
    done = subprocess.run(CHAT + ["-p", "What is the capital of France?", "--max-new-tokens", "24"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Paris" in done.stdout


def test_terminal_ctrl_c_stops_the_reply_not_the_program():
    # A suite started in the background (`cmd &` in a script) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; a user's terminal starts the chat with the default disposition, so the child gets it.
    child = pexpect.spawn(CHAT[0], CHAT[1:] + ["--ignore-eos", "--max-new-tokens", "3000"], encoding="utf-8", timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        child.expect_exact("user> ")
        child.sendline("Tell me a long story about a dragon.")
        child.expect_exact("assistant> ")
        child.expect(r"\w+\s+\w+\s+\w+\s+\w+")  # the reply is streaming
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact("user> ")
        child.sendline("/clear")
        child.expect_exact("[conversation cleared]")
        child.expect_exact("user> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
