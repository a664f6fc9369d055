"""OpenAI request schemas (pydantic) and their translation to puyu's sampling parameters.

Fields puyu does not use are accepted and ignored, as OpenAI-compatible
servers do, so that every client works; fields it cannot honour (images,
``suffix``) are refused with a 400 that says so, never silently dropped.
``response_format`` ``json_object``/``json_schema`` and a required or named
``tool_choice`` become a grammar the output is decoded under
(:mod:`puyu.generation.constraints`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from puyu.errors import ConfigError
from puyu.generation import SamplingParams
from puyu.generation.constraints import json_object_grammar, json_schema_grammar, tool_call_grammar
from puyu.generation.sampling import LIMITS
from puyu.tokenizer.tokenizer import SAMPLING_KEYS
from puyu.tokenizer.tool_formats import tool_format

# What OpenAI's API samples with when a request sets nothing (top_k, min_p and repetition_penalty stay off)
OPENAI_SAMPLING = {"temperature": 1.0, "top_p": 1.0}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, **LIMITS["max_new_tokens"])
    temperature: float | None = Field(default=None, **LIMITS["temperature"])
    top_p: float | None = Field(default=None, **LIMITS["top_p"])
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, **LIMITS["presence_penalty"])
    frequency_penalty: float = Field(default=0.0, **LIMITS["frequency_penalty"])
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # Common extensions (vLLM / LMDeploy)
    top_k: int | None = Field(default=None, **LIMITS["top_k"])
    min_p: float | None = Field(default=None, **LIMITS["min_p"])
    repetition_penalty: float | None = Field(default=None, **LIMITS["repetition_penalty"])
    ignore_eos: bool = False
    loop_guard: int = Field(default=0, **LIMITS["loop_guard"])  # puyu: end a reply that repeats itself (puyu.generation.loop_guard)

    def sampling(self, max_tokens: int, index: int, recommended: dict[str, float], skip_special_tokens: bool = True,
                 grammar: str | None = None) -> SamplingParams:
        """SamplingParams for choice ``index`` (a given seed is offset per choice so choices differ).  Sampling fields
        the request leaves out take the model's ``recommended`` values, then OpenAI's defaults (as vLLM does)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        given = {name: getattr(self, name) for name in SAMPLING_KEYS if getattr(self, name) is not None}
        return SamplingParams(
            max_new_tokens=max_tokens, **{**OPENAI_SAMPLING, **recommended, **given}, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=None if self.seed is None else self.seed + index, stop=stop,
            ignore_eos=self.ignore_eos, skip_special_tokens=skip_special_tokens, grammar=grammar, loop_guard=self.loop_guard,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_puyu(self) -> dict[str, Any]:
        """The message as puyu's templates take it."""
        content = self.content
        if isinstance(content, list):
            kinds = {part.get("type") for part in content}
            if kinds - {"text", "image_url"}:
                raise ConfigError(f"message content of type {sorted(kinds - {'text', 'image_url'})[0]!r} is not supported; "
                                  "send text and image_url parts")
            if kinds == {"text"}:
                content = "".join(part.get("text", "") for part in content)
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name:
            message["name"] = self.name
        return message


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def selected_tools(self) -> list[dict[str, Any]] | None:
        """The tools shown to the model after ``tool_choice`` (``none`` hides them; a named one keeps only it)."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, dict):
            name = (self.tool_choice.get("function") or {}).get("name")
            chosen = [t for t in self.tools if (t.get("function") or {}).get("name") == name]
            if not chosen:
                raise ConfigError(f"tool_choice names the function {name!r}, which is not in tools")
            return chosen
        return self.tools

    def grammar(self, tools: list[dict[str, Any]] | None, family: str) -> str | None:
        """The grammar the reply must follow: from ``response_format``, else a required/named tool call, else None."""
        fmt = self.response_format or {"type": "text"}
        kind = fmt.get("type")
        if kind == "json_object":
            return json_object_grammar()
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise ConfigError("response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}")
            return json_schema_grammar(spec["schema"])
        if kind != "text":
            raise ConfigError(f"response_format type {kind!r} is not one of text, json_object, json_schema")
        forced = self.tool_choice == "required" or isinstance(self.tool_choice, dict)
        return tool_call_grammar(tools, family) if tools and forced and tool_format(family) else None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt as text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: text or token-id inputs, as OpenAI's client sends them."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def inputs(self) -> list[str | list[int]]:
        """Each input as text or token ids (an empty list of inputs is refused)."""
        given = self.input
        if isinstance(given, str) or (given and all(isinstance(x, int) for x in given)):
            return [given]  # type: ignore[list-item]
        if not given:
            raise ConfigError("input is empty; send a string, a list of strings or token ids")
        return list(given)  # type: ignore[arg-type]
