"""Constrained decoding: grammars that a sequence's tokens must follow, applied as a logits mask.

A grammar is a string in llguidance's format (Lark text with ``%json {schema}``
embedding, or the JSON from ``LLMatcher.grammar_from_*``) and travels in
:attr:`SamplingParams.grammar <puyu.generation.SamplingParams>`; the sequence's
:class:`~puyu.generation.sampling.SequenceState` builds a
:class:`GrammarMatcher` from it, masks disallowed tokens before each draw and
advances the matcher with the chosen token.  Builders here make the grammars
puyu needs:

- :func:`json_schema_grammar` / :func:`json_object_grammar`: the whole reply is
  JSON (OpenAI ``response_format``);
- :func:`tool_call_grammar`: one tool call in the template family's own format
  (:mod:`puyu.tokenizer.tool_formats` holds the formats), the
  call JSON checked against the tool's parameter schema; with
  ``required=False`` the model may answer in plain text instead;
- :func:`arguments_schema` and :func:`json_rule`: pieces for other grammars
  that embed a tool's arguments (the agent's ReAct grammar).

Every grammar caps what it generates (:class:`Caps`): strings, arrays and
numbers get limits where the schema sets none, so a small model that starts
repeating inside a string is made to close it instead of running on until
``max_new_tokens`` with an unparseable reply.

Why llguidance: computing which of ~50k tokens can continue a JSON-schema
grammar is commodity work that a well-kept library does in microseconds per
token (measured on the built-in model's 49,152-token vocabulary on CPU: about
0.07 ms per token including the mask, about 2 ms for a sequence's first token), and it handles
tokens that span grammar boundaries, which a hand-written character matcher
would get wrong.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any

import llguidance
import numpy as np
import torch

from puyu.errors import ConfigError
from puyu.tokenizer.tool_formats import FORMATS, ToolFormat, tool_format

log = logging.getLogger(__name__)
_LL_TOKENIZERS: "weakref.WeakKeyDictionary[Any, dict[int, llguidance.LLTokenizer]]" = weakref.WeakKeyDictionary()
# Compact JSON as OpenAI writes it: flexible whitespace lets a small model wander into
# endless blanks; unknown keywords (``format``, ...) are ignored rather than refused.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}


def ll_tokenizer(tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of ``tokenizer`` (its ``tokenizers`` backend), built once per tokenizer and vocabulary size.

    Args:
        tokenizer: a :class:`puyu.tokenizer.Tokenizer`.
        vocab_size: the model's vocabulary (rows of its logits; may exceed the tokenizer's).
    """
    per_size = _LL_TOKENIZERS.setdefault(tokenizer, {})
    if vocab_size not in per_size:
        stops = tokenizer.stop_token_ids or ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
        if not stops:
            raise ConfigError("constrained decoding needs a stop token; this tokenizer has no EOS or template stop token")
        per_size[vocab_size] = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=list(stops))
    return per_size[vocab_size]


def check_grammar(grammar: str, tokenizer=None, vocab_size: int | None = None) -> None:
    """Raise :class:`ConfigError` naming the problem when ``grammar`` does not compile."""
    ll = ll_tokenizer(tokenizer, vocab_size or tokenizer.vocab_size) if tokenizer is not None else None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, ll)
    if failed:
        raise ConfigError(f"the output grammar is invalid: {messages[0]}")


class GrammarMatcher:
    """One sequence's position in a grammar: which tokens may come next, and the tokens taken so far.

    Args:
        grammar: llguidance grammar text (see the module docstring).
        tokenizer: the :class:`puyu.tokenizer.Tokenizer` the sequence is decoded with.
        vocab_size: width of the logits rows ``V``.
    """

    def __init__(self, grammar: str, tokenizer, vocab_size: int):
        self.vocab_size = vocab_size
        self.matcher = llguidance.LLMatcher(ll_tokenizer(tokenizer, vocab_size), grammar, log_level=0)
        if self.matcher.is_error():
            raise ConfigError(f"the output grammar is invalid: {self.matcher.get_error()}")

    def _allowed(self) -> np.ndarray:
        return np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8)[: self.vocab_size] > 0

    def allowed(self) -> torch.Tensor:
        """Boolean mask ``[V]``: True where the token may come next."""
        return torch.from_numpy(self._allowed().copy())

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``[V]`` (float32) with disallowed tokens set to ``-inf`` (all stay when the grammar has failed)."""
        if self.matcher.is_error():
            return logits
        allowed = self._allowed()[: logits.shape[-1]]
        if logits.device.type == "cpu":
            # numpy, single-threaded: torch's parallel kernels on a 49k row stall for tens of ms
            # while llguidance's worker threads still hold the cores (measured on 2 cores).
            masked = logits.numpy().copy()
            masked[~allowed] = -np.inf
            return torch.from_numpy(masked)
        return logits.masked_fill(~torch.from_numpy(allowed.copy()).to(logits.device), float("-inf"))

    def advance(self, token: int) -> None:
        """Take the sampled ``token``; a token the grammar refuses leaves the matcher failed (logged once)."""
        if self.matcher.is_error() or self.matcher.is_stopped():
            return
        if not self.matcher.consume_token(token):
            log.warning("constrained decoding stopped: %s", self.matcher.get_error())

    @property
    def done(self) -> bool:
        """The grammar is complete (only a stop token can follow)."""
        return self.matcher.is_accepting()


def json_schema_grammar(schema: dict[str, Any] | None, caps: Caps | None = None) -> str:
    """Grammar of a reply that is one JSON value valid against ``schema`` (``None``: any JSON object).

    Args:
        caps: limits put on the schema's strings, arrays and numbers where it sets none
            (default :data:`RESPONSE_CAPS`); see :func:`cap_schema`.
    """
    if schema is not None and not isinstance(schema, dict):
        raise ConfigError(f"a JSON schema must be an object, got {type(schema).__name__}")
    capped = cap_schema(schema if schema is not None else {"type": "object"}, caps or RESPONSE_CAPS)
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(capped, defaults=JSON_OPTIONS)
    except ValueError as e:
        raise ConfigError(f"invalid JSON schema: {e}") from None


def json_object_grammar() -> str:
    """Grammar of a reply that is any JSON object (OpenAI ``response_format: json_object``)."""
    return json_schema_grammar(None)


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function", tool)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConfigError(f"a tool must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}, got {tool!r}")
    return function


@dataclass(frozen=True)
class Caps:
    """Length limits a grammar puts on generated JSON where the schema sets none.

    Attributes:
        string: most characters in a string (``maxLength``).
        items: most items in an array (``maxItems``).
        magnitude: numbers lie in ``[-magnitude, magnitude]`` (bounds the integer digits).
        decimals: most digits after the decimal point (``multipleOf``).

    With every string, array and number bounded, a value of a schema whose objects list their
    properties has a bounded length, so a small model that starts repeating inside a value still
    closes the call.  An object with free keys (``{"type": "object"}`` alone) is bounded by the
    generation budget only: llguidance cannot cap its number of keys.
    """

    string: int = 300
    items: int = 16
    magnitude: int = 10**15
    decimals: int = 6

    def __post_init__(self) -> None:
        if min(self.string, self.items, self.magnitude, self.decimals) < 1:
            raise ConfigError(f"grammar caps must be positive, got {self}")


TOOL_CAPS = Caps()  # tool-call arguments (local agents and ``puyu serve``)
RESPONSE_CAPS = Caps(string=4000, items=256)  # ``response_format`` replies, which may be long


def cap_schema(schema: Any, caps: Caps) -> Any:
    """``schema`` with ``caps`` on every string, array and number that has no limit of its own."""
    if isinstance(schema, list):
        return [cap_schema(s, caps) for s in schema]
    if not isinstance(schema, dict):
        return schema
    capped = {k: cap_schema(v, caps) if k not in ("enum", "const", "default", "examples") else v for k, v in schema.items()}
    if "enum" in capped or "const" in capped:
        return capped
    kind = capped.get("type")
    if kind == "string":
        capped.setdefault("maxLength", caps.string)
    elif kind == "array":
        capped.setdefault("maxItems", caps.items)
    elif kind in ("integer", "number") and "minimum" not in capped and "maximum" not in capped:
        capped.update(minimum=-caps.magnitude, maximum=caps.magnitude)
        if kind == "number":
            capped.setdefault("multipleOf", 10.0**-caps.decimals)
    return capped


def _string_slots(schema: Any, items: int) -> int:
    """How many uncapped strings a value of ``schema`` can hold at most (an array of strings counts ``items``)."""
    if not isinstance(schema, dict) or "enum" in schema or "const" in schema:
        return 0
    if schema.get("type") == "string":
        return 0 if "maxLength" in schema else 1
    if schema.get("type") == "array":
        return schema.get("maxItems", items) * _string_slots(schema.get("items"), items)
    options = [_string_slots(o, items) for o in schema.get("anyOf", [])]
    return sum(_string_slots(p, items) for p in (schema.get("properties") or {}).values()) + max(options, default=0)


def arguments_schema(tool: dict[str, Any], caps: Caps) -> dict[str, Any]:
    """The capped JSON schema of ``tool``'s arguments (OpenAI format); exactly the documented keys.

    ``caps.string`` is shared by all the call's uncapped strings (``solve(equations, variables)``
    gets half each), so that the whole call stays within about ``caps.string`` characters of text.
    """
    function = _function(tool)
    parameters = dict(function.get("parameters") or {"type": "object", "properties": {}})
    parameters.setdefault("additionalProperties", False)
    slots = _string_slots(parameters, caps.items)
    return cap_schema(parameters, replace(caps, string=max(1, caps.string // max(1, slots))))


def json_rule(schema: dict[str, Any]) -> str:
    """The llguidance Lark body that embeds ``schema`` as compact JSON: ``%json {...}``."""
    return f"%json {json.dumps({**schema, 'x-guidance': JSON_OPTIONS}, ensure_ascii=False)}"


def _format(family: str) -> ToolFormat:
    fmt = tool_format(family)
    if fmt is None:
        raise ConfigError(f"no tool-call format for template family {family!r}; use one of {sorted(FORMATS)}")
    return fmt


def call_schema(tools: list[dict[str, Any]], family: str, max_string: int = TOOL_CAPS.string) -> dict[str, Any]:
    """JSON schema of one call ``{"name": ..., "arguments"|"parameters": {...}}`` to one of ``tools`` (OpenAI format).

    Args:
        max_string: characters of a call's string arguments together, where the tool sets no limit
            (see :func:`arguments_schema`); arrays and numbers get :data:`TOOL_CAPS`.  A small model that
            starts repeating inside a value then still closes the call in time.
    """
    if not tools:
        raise ConfigError("a tool-call grammar needs at least one tool")
    key = _format(family).argument_key
    caps = replace(TOOL_CAPS, string=max_string)
    options = [{"type": "object", "properties": {"name": {"const": _function(tool)["name"]}, key: arguments_schema(tool, caps)},
                "required": ["name", key], "additionalProperties": False} for tool in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(tools: list[dict[str, Any]], family: str, required: bool = True, max_string: int = TOOL_CAPS.string) -> str:
    """Lark grammar of one tool call in ``family``'s format (``chatml``, ``internlm2`` or ``llama3``).

    Args:
        tools: OpenAI-format tools (``{"type": "function", "function": {...}}``).
        family: the chat template family whose call format the model was taught.
        required: only a call may be produced; with False the reply may instead be
            plain text that does not start like a call.
        max_string: see :func:`call_schema`; the default caps ``puyu serve``'s forced calls too.
    """
    fmt = _format(family)
    if not fmt.has_grammar:
        raise ConfigError(f"a {family} tool call cannot be forced by a grammar (its markers are special tokens); "
                          "use tool_choice 'auto' and the call is parsed from the reply")
    call = " ".join(part for part in [fmt.grammar_open, "call_json", fmt.grammar_close] if part)
    lines = [f"call: {call}", f"call_json: {json_rule(call_schema(tools, family, max_string))}"]
    if required:
        return "\n".join(["start: call", *lines])
    first = fmt.answer_first
    # Plain text may not begin like a call, so the model commits to one or the other on its first character.
    text = f"/[^{first}\\s][\\s\\S]*/" if first else r"/[\s\S]+/"
    return "\n".join(["start: call | answer", f"answer: {text}", *lines])
