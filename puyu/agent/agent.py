"""The agent loop: ask the model, run the tools it calls, show it the results, until a final answer.

>>> from puyu import LLM
>>> from puyu.agent import Agent, LocalChatModel, builtin_tools
>>> agent = Agent(LocalChatModel(LLM()), builtin_tools(["python", "solve"]), protocol="function")
>>> run = agent.run("已知2x+3=10，求x")
>>> run.answer, [s.tool for s in run.steps]

:meth:`Agent.stream` yields one :class:`Step` per tool call as it happens and a
last step carrying the final answer; :meth:`Agent.run` collects them into an
:class:`AgentRun`.  Rules: at most ``max_steps`` model turns; on the last one
the tools are withdrawn and the model is told to answer, so a run always ends
with an answer.  A reply that does not parse gets one repair retry (the model
sees its reply and what was wrong); if that fails too, the run ends with the
reply's text as the answer and the error recorded.  Tool errors (unknown tool,
bad arguments, exceptions, sandbox timeouts) are observations for the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from puyu.agent.models import ChatModel, Reply
from puyu.agent.protocols import PROTOCOLS, Decision
from puyu.agent.tools import ToolImage, ToolRegistry
from puyu.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One recorded step: a tool call and its result, or the final answer.

    Attributes:
        index: the model turn it came from (1-based).
        thought: the model's reasoning text before the call.
        tool: the tool called (None for the final answer).
        arguments: the call's arguments as the model sent them (JSON text).
        output: the tool's output.
        error: the tool's error, or a parse error the repair did not fix.
        repaired: the parse error of the first reply when a repair retry was needed.
        elapsed_s: seconds for the model turn (shared by its calls) plus this tool call.
        final_answer: set on the last step.
        images: images the tool returned (plots the python tool saved, edited pictures).
    """

    index: int
    thought: str = ""
    tool: str | None = None
    arguments: str | None = None
    output: str | None = None
    error: str | None = None
    repaired: str | None = None
    elapsed_s: float = 0.0
    final_answer: str | None = None
    images: list[ToolImage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; each image as ``{"name", "mime", "url"}`` with a data URL."""
        return {**{k: v for k, v in asdict(self).items() if k != "images"}, "images": [i.to_dict() for i in self.images]}


@dataclass
class AgentRun:
    """A finished run: the answer and every step."""

    answer: str
    steps: list[Step] = field(default_factory=list)

    @property
    def tool_calls(self) -> list[Step]:
        return [s for s in self.steps if s.tool]


class Agent:
    """A tool-using agent over any :class:`~puyu.agent.models.ChatModel`.

    Args:
        model: the chat model (local, API, or a scripted fake).
        tools: the tools it may call.
        protocol: ``react`` (text, any model), ``function`` (native tool calls) or ``internlm2``.
        language: ``en`` or ``zh`` prompts.
        max_steps: most model turns; the last one must answer.
        system: an extra system prompt.
        tool_choice: ``auto`` (the model may answer instead of calling) or ``required`` (every
            turn before the last must call a tool; with constrained decoding that call is always valid).
    """

    def __init__(self, model: ChatModel, tools: ToolRegistry, protocol: str = "function", language: str = "en",
                 max_steps: int = 6, system: str | None = None, tool_choice: str = "auto"):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown agent protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
        self.model, self.registry = model, tools
        self.protocol = PROTOCOLS[protocol](tools, language)
        if tool_choice not in ("auto", "required"):
            raise ConfigError(f"tool_choice must be auto or required, got {tool_choice!r}")
        self.max_steps, self.system, self.tool_choice = max_steps, system, tool_choice

    def _ask(self, messages: list[dict[str, Any]], last: bool) -> tuple[Reply, Decision, str | None]:
        """The model's reply and what it means, with one repair retry; returns the first parse error too."""
        tools = None if last else self.protocol.tools()
        grammar = self.protocol.grammar(last, self.tool_choice)
        reply = self.model.reply(messages, tools, self.protocol.stop, self.tool_choice, grammar)
        decision = self.protocol.parse(reply, last)
        if decision.error is None:
            return reply, decision, None
        log.info("reply did not parse (%s); asking for a repair", decision.error)
        first_error = decision.error
        retry = self.model.reply(messages + self.protocol.repair(reply, first_error), tools, self.protocol.stop, self.tool_choice, grammar)
        return retry, self.protocol.parse(retry, last), first_error

    def stream(self, task: str) -> Iterator[Step]:
        """Run ``task``, yielding each :class:`Step` as it completes (the last one has ``final_answer``)."""
        if not task.strip():
            raise ConfigError("the agent's task is empty; say what it should do")
        messages = self.protocol.start(task, self.system)
        for index in range(1, self.max_steps + 1):
            last = index == self.max_steps
            if last and index > 1:
                messages.append(self.protocol.force_final())
            start = time.perf_counter()
            reply, decision, repaired = self._ask(messages, last)
            model_s = time.perf_counter() - start
            if decision.error is not None:  # the repair failed too: end with what the model said
                yield Step(index, decision.thought, error=decision.error, repaired=repaired, elapsed_s=model_s, final_answer=reply.text)
                return
            if decision.final is not None:
                yield Step(index, decision.thought, repaired=repaired, elapsed_s=model_s, final_answer=decision.final)
                return
            results = []
            for call in decision.calls:
                result = self.registry.run(call.name, call.arguments)
                results.append(result)
                yield Step(index, decision.thought, call.name, call.arguments, result.output, result.error, repaired,
                           model_s + result.elapsed_s, images=result.images)
            self.protocol.record(messages, reply, decision, results)

    def run(self, task: str) -> AgentRun:
        """Run ``task`` to its final answer."""
        steps = list(self.stream(task))
        return AgentRun(steps[-1].final_answer or "", steps)
