"""ChatSession and TerminalChat driven in-process with a tiny model: history, commands, trimming."""

from __future__ import annotations

import io

import pytest

from puyu.chat.session import ChatSession
from puyu.chat.terminal import TerminalChat
from puyu.errors import ContextLengthError
from puyu.generation import SamplingParams

PARAMS = SamplingParams(max_new_tokens=8, temperature=0)


def test_turns_accumulate_and_clear(tiny_llm):
    session = ChatSession(tiny_llm, params=PARAMS, system="Be brief.")
    for text in ["Hello", "How are you?"]:
        reply = "".join(session.send(text))
        assert session.turns[-1] == {"role": "assistant", "content": reply}
    assert [t["role"] for t in session.turns] == ["user", "assistant", "user", "assistant"]
    assert session.messages()[0] == {"role": "system", "content": "Be brief."}
    session.clear()
    assert session.messages() == [{"role": "system", "content": "Be brief."}]


def test_history_longer_than_the_context_is_trimmed_oldest_first(tiny_llm):
    session = ChatSession(tiny_llm, params=PARAMS, system="Be brief.")
    long_message = "The quick brown fox jumps over the lazy dog. " * 6  # ~70 tokens in the tiny vocabulary
    drops = []
    for i in range(5):
        "".join(session.send(f"{i}: {long_message}"))
        drops.append(session.dropped)
        assert len(tiny_llm.prompt_ids(session.messages())) <= tiny_llm.context_length
    assert any(drops)
    assert session.turns[0]["role"] == "user" and session.turns[-2]["content"].startswith("4:")
    assert session.messages()[0]["role"] == "system"


def test_a_message_that_cannot_fit_is_refused_and_not_kept(tiny_llm):
    session = ChatSession(tiny_llm, params=PARAMS)
    with pytest.raises(ContextLengthError, match="context window is 256"):
        "".join(session.send("word " * 400))
    assert session.turns == []


def test_terminal_commands(tiny_llm, monkeypatch):
    lines = iter(["Hello", "/system You are a pirate.", "/system", "/bogus", "/clear", "Hi again", "/exit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(tiny_llm, params=PARAMS)
    assert TerminalChat(session, out=out, err=err, interactive=False).run() == 0
    notes = err.getvalue()
    assert "[system prompt set]" in notes and "[system prompt: You are a pirate.]" in notes
    assert "unknown command /bogus" in notes and "[conversation cleared]" in notes
    assert [t["content"] for t in session.turns if t["role"] == "user"] == ["Hi again"]  # cleared before it
    assert next(lines) == "never read"
