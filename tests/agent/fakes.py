"""A scripted chat model for agent tests: replies in order and records what it was asked."""

from __future__ import annotations

from puyu.agent.models import Reply
from puyu.tokenizer.tool_formats import ToolCall


class ScriptedModel:
    """Returns ``replies`` in turn (a str is a text reply; a Reply is used as is) and logs every request."""

    def __init__(self, replies: list[str | Reply]):
        self.replies = list(replies)
        self.requests: list[dict] = []

    def reply(self, messages, tools=None, stop=None, tool_choice="auto", grammar=None) -> Reply:
        self.requests.append({"messages": [dict(m) for m in messages], "tools": tools, "stop": stop, "tool_choice": tool_choice,
                              "grammar": grammar})
        if not self.replies:
            raise AssertionError("the scripted model ran out of replies")
        reply = self.replies.pop(0)
        return Reply(reply, raw=reply) if isinstance(reply, str) else reply


def call(name: str, arguments: str, text: str = "") -> Reply:
    return Reply(text, [ToolCall(name, arguments)], raw=text)
