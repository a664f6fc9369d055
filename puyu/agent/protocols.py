"""How an agent and its model talk: ReAct text, native function calls, InternLM2 actions.

A protocol builds the opening messages, says which ``tools`` to pass natively
and which ``stop`` strings to use, parses a :class:`~puyu.agent.models.Reply`
into a :class:`Decision` (tool calls, a final answer, or a parse error to
repair), and appends a step's turn and its observations to the conversation.

- :class:`ReActProtocol`: Lagent's ReAct text protocol (``Thought`` /
  ``Action`` / ``Action Input`` / ``Observation`` / ``Final Answer``; prompts in
  English and Chinese; the Chinese keywords 思考/行动/行动输入/最终答案 are
  understood too).  Works with any chat model, no tool template needed; a local
  model's turn is generated under :func:`~puyu.agent.react_grammar.react_grammar`
  (:meth:`~ReActProtocol.grammar`), so its action always parses.
- :class:`FunctionCallingProtocol`: the model's own ``tools``/``tool_calls``
  (through the chat template locally, or the OpenAI API).
- :class:`InternLM2Protocol`: function calling in InternLM2's action format,
  also accepting ``<|action_start|><|interpreter|>`` code blocks as calls to
  the ``python`` tool.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from puyu.agent.models import Reply
from puyu.agent.react_grammar import ReActCaps, is_code_tool, react_grammar
from puyu.agent.tools import ToolRegistry, ToolResult
from puyu.errors import ConfigError
from puyu.tokenizer.tool_formats import INTERNLM2_INTERPRETER, ToolCall

REACT_PROMPT = {
    "en": """You can use these tools:
{tools}

Answer the question by thinking step by step in this format:
Thought: what you need to do next
Action: the tool to use, one of [{names}]
Action Input: the tool's arguments as a JSON object (for {code_tools}: the code in a ```python block)
Observation: the tool's result (given to you; do not write it yourself)
... (Thought/Action/Action Input/Observation can repeat)
Thought: I now know the final answer
Final Answer: the answer to the question""",
    "zh": """你可以使用以下工具：
{tools}

请一步一步思考，并严格按照以下格式回答：
Thought: 你接下来要做什么
Action: 要使用的工具，必须是 [{names}] 之一
Action Input: 工具的参数，一个 JSON 对象（{code_tools} 的参数是 ```python 代码块）
Observation: 工具返回的结果（由系统给出，不要自己编写）
……（Thought/Action/Action Input/Observation 可以重复多次）
Thought: 我已经知道最终答案了
Final Answer: 对问题的最终回答""",
}
REACT_REPAIR = {
    "en": "Your reply did not follow the format ({error}). "
          "Reply again with either 'Action:' and 'Action Input:' (a JSON object) or 'Final Answer:'.",
    "zh": "你的回复不符合格式（{error}）。请重新回复：要么给出 'Action:' 和 'Action Input:'（JSON 对象），要么给出 'Final Answer:'。",
}
FORCE_FINAL = {
    "en": "You have no tool calls left. Give your best answer now, starting with 'Final Answer:'.",
    "zh": "你已经不能再调用工具了。请现在给出你的最佳答案，以 'Final Answer:' 开头。",
}
FUNCTION_REPAIR = "Your tool call could not be parsed ({error}). Call the tool again with valid JSON arguments, or answer directly."
KEYWORDS = {
    "thought": r"(?:Thought|思考)\s*[:：]",
    "action": r"(?:Action|行动|工具)\s*[:：]",
    "input": r"(?:Action Input|行动输入|工具输入)\s*[:：]",
    "final": r"(?:Final Answer|最终答案)\s*[:：]",
}
FENCE = re.compile(r"^```[\w-]*\n?(.*?)\n?```$", re.DOTALL)


@dataclass
class Decision:
    """What a reply means: ``calls`` to run, a ``final`` answer, or an ``error`` to repair."""

    thought: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    final: str | None = None
    error: str | None = None


def _strip_fence(text: str) -> str:
    text = text.strip()
    match = FENCE.match(text)
    return match.group(1).strip() if match else text


class FunctionCallingProtocol:
    """Native tool calls; a reply without calls is the final answer."""

    stop: list[str] = []

    def __init__(self, registry: ToolRegistry, language: str = "en"):
        self.registry, self.language = registry, language

    def tools(self) -> list[dict[str, Any]] | None:
        return self.registry.schemas() or None

    def grammar(self, last: bool, tool_choice: str) -> None:
        """None: a local model's calls are constrained through ``tools`` (the model's own call format)."""
        return None

    def start(self, task: str, system: str | None) -> list[dict[str, Any]]:
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": task}]

    def parse(self, reply: Reply, last: bool) -> Decision:
        if reply.tool_calls and not last:
            return Decision(reply.text, list(reply.tool_calls))
        if reply.malformed and not last:
            return Decision(reply.text, error="the call is not a JSON object with 'name' and 'arguments'")
        return Decision(final=reply.text)

    def record(self, messages: list[dict[str, Any]], reply: Reply, decision: Decision, results: list[ToolResult]) -> None:
        messages.append({"role": "assistant", "content": reply.text, "tool_calls": [c.to_openai() for c in decision.calls]})
        for call, result in zip(decision.calls, results):
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result.observation()})

    def repair(self, reply: Reply, error: str) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": reply.raw}, {"role": "user", "content": FUNCTION_REPAIR.format(error=error)}]

    def force_final(self) -> dict[str, Any]:
        return {"role": "user", "content": FORCE_FINAL[self.language]}


class InternLM2Protocol(FunctionCallingProtocol):
    """InternLM2's ``<|plugin|>`` calls (parsed by the model backend) plus ``<|interpreter|>`` code."""

    def parse(self, reply: Reply, last: bool) -> Decision:
        match = INTERNLM2_INTERPRETER.search(reply.text)
        if match and not last:
            thought = reply.text[: match.start()].strip()
            return Decision(thought, [ToolCall("python", json.dumps({"code": _strip_fence(match.group(1))}, ensure_ascii=False))])
        return super().parse(reply, last)


class ReActProtocol:
    """Lagent's ReAct text protocol; tools are described in the system prompt, not passed natively."""

    stop = ["Observation:", "Observation：", "\nObservation"]

    def __init__(self, registry: ToolRegistry, language: str = "en"):
        if language not in REACT_PROMPT:
            raise ConfigError(f"ReAct prompts exist in {', '.join(REACT_PROMPT)}, not {language!r}")
        self.registry, self.language = registry, language

    def tools(self) -> None:
        return None

    def grammar(self, last: bool, tool_choice: str) -> Callable[[int], str]:
        """The turn's grammar for a token budget: act or answer; act only under ``required``; answer on the last step."""
        schemas = self.registry.schemas()
        mode = "answer" if last or not schemas else "act" if tool_choice == "required" else "auto"
        return lambda max_new_tokens: react_grammar(schemas, mode, ReActCaps.for_budget(max_new_tokens))

    def start(self, task: str, system: str | None) -> list[dict[str, Any]]:
        functions = [s["function"] for s in self.registry.schemas()]
        described = "\n".join(
            f"- {f['name']}: {f['description']} " + ("Action Input: the code in a ```python block." if is_code_tool(f) else
                                                     f"Arguments (JSON schema): {json.dumps(f['parameters'], ensure_ascii=False)}")
            for f in functions)
        code_tools = ", ".join(f["name"] for f in functions if is_code_tool(f)) or "python"
        prompt = REACT_PROMPT[self.language].format(tools=described, names=", ".join(self.registry.names), code_tools=code_tools)
        return [{"role": "system", "content": (system + "\n\n" if system else "") + prompt}, {"role": "user", "content": task}]

    def _section(self, text: str, key: str) -> str | None:
        following = "|".join(v for k, v in KEYWORDS.items() if k != key)
        match = re.search(rf"{KEYWORDS[key]}(.*?)(?=(?:{following})|Observation\s*[:：]|$)", text, re.DOTALL)
        return match.group(1).strip() if match else None

    def _arguments(self, tool_name: str, raw: str) -> tuple[str | None, str | None]:
        """(JSON arguments, error); a bare value for a tool with one required string argument is wrapped."""
        text = _strip_fence(raw)
        try:
            value = json.loads(text)
            if isinstance(value, dict):
                return json.dumps(value, ensure_ascii=False), None
        except json.JSONDecodeError:
            value = text
        tool = self.registry.tools.get(tool_name)
        required = tool.parameters.get("required", []) if tool else []
        if tool and len(required) == 1 and tool.parameters["properties"][required[0]].get("type") == "string":
            return json.dumps({required[0]: value if isinstance(value, str) else json.dumps(value)}, ensure_ascii=False), None
        return None, f"Action Input is not a JSON object: {text[:200]!r}"

    def parse(self, reply: Reply, last: bool) -> Decision:
        text = reply.text
        thought = self._section(text, "thought") or ""
        action, action_input, final = (self._section(text, k) for k in ("action", "input", "final"))
        action_at = re.search(KEYWORDS["action"], text)
        final_at = re.search(KEYWORDS["final"], text)
        acts_first = action and action_at and (not final_at or action_at.start() < final_at.start())
        if acts_first and not last:
            name = action.splitlines()[0].strip().strip("`[]\"' ")
            if action_input is None:
                return Decision(thought, error="'Action:' without 'Action Input:'")
            arguments, error = self._arguments(name, action_input)
            if error:
                return Decision(thought, error=error)
            return Decision(thought, [ToolCall(name, arguments)])
        if final is not None:
            return Decision(thought, final=final)
        if last:  # the forced last step: whatever the model said is its answer
            return Decision(thought, final=re.sub(KEYWORDS["thought"], "", text).strip())
        return Decision(thought, error="neither 'Action:' with 'Action Input:' nor 'Final Answer:' was found")

    def record(self, messages: list[dict[str, Any]], reply: Reply, decision: Decision, results: list[ToolResult]) -> None:
        messages.append({"role": "assistant", "content": reply.text})
        messages.append({"role": "user", "content": "\n".join(f"Observation: {r.observation()}" for r in results)})

    def repair(self, reply: Reply, error: str) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": reply.text}, {"role": "user", "content": REACT_REPAIR[self.language].format(error=error)}]

    def force_final(self) -> dict[str, Any]:
        return {"role": "user", "content": FORCE_FINAL[self.language]}


PROTOCOLS = {"react": ReActProtocol, "function": FunctionCallingProtocol, "internlm2": InternLM2Protocol}
