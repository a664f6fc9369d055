"""``POST /ui/agent``: run an agent on a task and stream its steps to the agent tab.

Contract: the body is an :class:`AgentRequest` (the task, the chosen built-in
tools, protocol, language, step limit, sampling); the response is server-sent
events, one ``{"type": "step", ...}`` per :class:`~puyu.agent.Step` as it
completes (``index``, ``thought``, ``tool``, ``arguments``, ``output``,
``error``, ``final_answer`` ...), then ``done`` or ``error``
(:mod:`puyu.web.events`).  The agent's model is an
:class:`~puyu.client.OpenAIClient` on ``config.api_base`` (in-process that is
the server's own endpoint, so generation stays on the engine's main-thread
loop), or ``config.agent_model(params)`` (``params``: the request's
:class:`~puyu.generation.SamplingParams`) when one is injected.  A run gets a
fresh Python sandbox, closed when the run ends or the browser stops it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from puyu.errors import ConfigError
from puyu.generation.sampling import LIMITS, SamplingParams
from puyu.web.events import Emit, event_stream

log = logging.getLogger(__name__)


class AgentRequest(BaseModel):
    """What the agent tab sends."""

    task: str
    tools: list[str] = Field(default_factory=lambda: ["python", "calculator", "solve"])
    protocol: Literal["function", "react", "internlm2"] = "function"
    language: Literal["en", "zh"] = "en"
    max_steps: int = Field(6, ge=1, le=20)
    tool_choice: Literal["auto", "required"] = "auto"
    system: str | None = None
    kb: str | None = None
    temperature: float = Field(0.0, **LIMITS["temperature"])
    max_tokens: int = Field(512, ge=1)


def add_agent_routes(app: FastAPI, config) -> None:
    """Add ``POST /ui/agent`` (see the module docstring); ``config`` is the :class:`~puyu.web.app.UIConfig`."""

    def chat_model(body: AgentRequest):
        params = SamplingParams(temperature=body.temperature, max_new_tokens=body.max_tokens, top_p=1.0)
        if config.agent_model is not None:
            return config.agent_model(params)
        from puyu.agent.models import ClientModel
        from puyu.client import OpenAIClient

        client = OpenAIClient(config.api_base, config.api_key, config.model_name())
        return ClientModel(client, params)

    def run(body: AgentRequest, emit: Emit) -> None:
        from puyu.agent import Agent, PythonSandbox, builtin_tools

        unknown = sorted(set(body.tools) - set(config.tools()))
        if unknown:
            raise ConfigError(f"tool(s) {', '.join(unknown)} are not offered here; choose from {', '.join(config.tools())}")
        if "search_kb" in body.tools and not body.kb:
            raise ConfigError("the search_kb tool needs a knowledge base: choose one under 'Knowledge base for search_kb'")
        log.info("agent run: tools %s, protocol %s, at most %d steps", body.tools, body.protocol, body.max_steps)
        with contextlib.ExitStack() as stack:
            sandbox = stack.enter_context(PythonSandbox()) if "python" in body.tools else None
            registry = builtin_tools(body.tools, sandbox=sandbox, files=config.files, kb=body.kb or None, allow=config.allow)
            agent = Agent(chat_model(body), registry, protocol=body.protocol, language=body.language, max_steps=body.max_steps,
                          system=body.system or None, tool_choice=body.tool_choice)
            for step in agent.stream(body.task):
                emit({"type": "step", **step.to_dict()})

    @app.post("/ui/agent")
    async def agent(body: AgentRequest):
        return event_stream(lambda emit: run(body, emit), name="puyu-agent")
