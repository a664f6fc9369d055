"""Tools an agent can call: ``@tool`` turns a typed, documented function into a tool with a JSON schema.

>>> @tool
... def add(a: int, b: int = 0) -> int:
...     '''Add two numbers.
...
...     Args:
...         a: the first number.
...         b: the second number.
...     '''
...     return a + b
>>> add.schema()["function"]["parameters"]["required"]
['a']

The schema comes from the type hints (``int``, ``float``, ``str``, ``bool``,
``list[...]``, ``dict``, ``Literal[...]``, ``X | None``) and the Google
docstring (summary → description, ``Args:`` → parameter descriptions).  A
:class:`ToolRegistry` holds tools by name and runs calls: arguments are checked
against the schema, and unknown tools, bad arguments and exceptions come back as
a :class:`ToolResult` with ``error`` set (the agent shows it to the model),
never as an exception.  A tool may return a :class:`ToolOutput` to hand back
images (plots, edited pictures) beside its text; they travel in the result and
in the agent's step record.  A tool that needs the network, writes files or is
heavy declares it in ``effects`` (:data:`EFFECTS`); such tools are only built
when the caller allows that effect (``--allow``).
"""

from __future__ import annotations

import base64
import inspect
import json
import re
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import jsonschema

from puyu.errors import ConfigError

PRIMITIVES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}
EFFECTS = {"network": "needs the network", "writes_files": "writes files", "heavy": "loads a large model or runs long"}


def _json_type(hint: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in PRIMITIVES:
        return {"type": PRIMITIVES[hint]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _json_type(options[0]) if len(options) == 1 else {"anyOf": [_json_type(a) for a in options]}
    if origin is list:
        return {"type": "array", "items": _json_type(args[0])} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    raise ConfigError(f"tool parameter type {hint!r} has no JSON schema; use int, float, str, bool, list, dict or Literal")


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {argument: description}) from a Google docstring."""
    doc = inspect.cleandoc(doc or "")
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    described: dict[str, str] = {}
    section = re.split(r"^\s*Args:\s*$", doc, maxsplit=1, flags=re.MULTILINE)
    name = None
    for line in (section[1] if len(section) > 1 else "").splitlines():
        if re.match(r"^\S.*:\s*$", line):  # the next section (Returns:, Raises:)
            break
        match = re.match(r"^\s+(\w+)(?:\s*\(.*?\))?:\s*(.*)$", line)
        if match and (name is None or len(line) - len(line.lstrip()) <= 4):
            name, described[match.group(1)] = match.group(1), match.group(2).strip()
        elif name and line.strip():
            described[name] += " " + line.strip()
    return summary, described


@dataclass
class ToolImage:
    """An image a tool produced: its file ``name``, MIME type and bytes."""

    name: str
    mime: str
    data: bytes

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"

    def to_dict(self) -> dict[str, str]:
        """JSON form (the agent's step records, ``--json``, the web UI): name, mime and a data URL."""
        return {"name": self.name, "mime": self.mime, "url": self.data_url()}


@dataclass
class ToolOutput:
    """What a tool may return instead of a string: text for the model and images for the user."""

    text: str
    images: list[ToolImage] = field(default_factory=list)


@dataclass
class ToolResult:
    """The outcome of one call: ``output`` (text for the model) or ``error`` (``"Kind: message"``), and any images."""

    tool: str
    arguments: dict[str, Any]
    output: str = ""
    error: str | None = None
    elapsed_s: float = 0.0
    images: list[ToolImage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def observation(self) -> str:
        """What the model reads back."""
        return self.output if self.ok else f"Error: {self.error}"


class Tool:
    """A named function with a JSON schema for its arguments.

    Args:
        func: the function; its return value becomes text (``str`` as is, other values as JSON).
        name: the name the model calls (default: the function's).
        description: what it does (default: the docstring summary).
        parameters: JSON schema of the arguments (default: from hints and docstring).
        effects: what calling it does beyond computing (keys of :data:`EFFECTS`).
    """

    def __init__(self, func: Callable[..., Any], name: str | None = None, description: str | None = None,
                 parameters: dict[str, Any] | None = None, effects: Iterable[str] = ()):
        self.func = func
        self.name = name or func.__name__
        self.effects = frozenset(effects)
        if not self.effects <= EFFECTS.keys():
            raise ConfigError(f"tool {self.name!r}: unknown effects {sorted(self.effects - EFFECTS.keys())}; use {', '.join(EFFECTS)}")
        summary, described = _docstring(func.__doc__ or "")
        self.description = description or summary
        if not self.description:
            raise ConfigError(f"tool {self.name!r} needs a description: give the function a docstring")
        self.parameters = parameters or self._schema_from_signature(described)

    def _schema_from_signature(self, described: dict[str, str]) -> dict[str, Any]:
        hints = typing.get_type_hints(self.func)
        properties, required = {}, []
        for param in inspect.signature(self.func).parameters.values():
            if param.name not in hints:
                raise ConfigError(f"tool {self.name!r}: parameter {param.name!r} needs a type hint")
            properties[param.name] = {**_json_type(hints[param.name]),
                                      **({"description": described[param.name]} if param.name in described else {})}
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
        return {"type": "object", "properties": properties, "required": required}

    def schema(self) -> dict[str, Any]:
        """The tool in OpenAI's ``tools`` format."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def run(self, arguments: dict[str, Any]) -> ToolResult:
        """Check ``arguments`` against the schema and call; errors come back in the result."""
        start = time.perf_counter()
        result = ToolResult(self.name, arguments)
        try:
            jsonschema.validate(arguments, self.parameters)
        except jsonschema.ValidationError as e:
            result.error = f"InvalidArguments: {e.message}; the schema is {json.dumps(self.parameters, ensure_ascii=False)}"
            return result
        try:
            value = self.func(**arguments)
            if isinstance(value, ToolOutput):
                value, result.images = value.text, value.images
            result.output = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        except Exception as e:  # a tool's failure is information for the model, not a crash of the agent
            result.error = f"{type(e).__name__}: {e}"
        result.elapsed_s = time.perf_counter() - start
        return result

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def tool(func: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         effects: Iterable[str] = ()):
    """Decorator: ``@tool`` or ``@tool(name=..., description=..., effects=...)`` makes a :class:`Tool`."""
    if func is None:
        return lambda f: Tool(f, name, description, effects=effects)
    return Tool(func, name, description, effects=effects)


class ToolRegistry:
    """Tools by name; runs calls by name with arguments as a dict or JSON text."""

    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools or []:
            self.add(t)

    def add(self, new: Tool | Callable[..., Any], allow: Iterable[str] | None = None) -> Tool:
        """Add a tool; with ``allow`` given, a tool whose effects are not all allowed is refused."""
        new = new if isinstance(new, Tool) else Tool(new)
        refused = sorted(new.effects - set(allow)) if allow is not None else []
        if refused:
            raise ConfigError(f"tool {new.name!r} {' and '.join(EFFECTS[e] for e in refused)}; it is off unless you allow it "
                              f"(--allow {','.join(refused)})")
        if new.name in self.tools:
            raise ConfigError(f"two tools are named {new.name!r}; rename one")
        self.tools[new.name] = new
        return new

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    def run(self, name: str, arguments: dict[str, Any] | str | None) -> ToolResult:
        """Call tool ``name``; an unknown name or arguments that are not a JSON object give an error result."""
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return ToolResult(name, {}, error=f"InvalidArguments: not valid JSON ({e.msg}); send a JSON object")
        arguments = {} if arguments is None else arguments
        if not isinstance(arguments, dict):
            return ToolResult(name, {}, error=f"InvalidArguments: expected a JSON object, got {type(arguments).__name__}")
        if name not in self.tools:
            return ToolResult(name, arguments, error=f"UnknownTool: there is no tool {name!r}; the tools are {', '.join(self.names)}")
        return self.tools[name].run(arguments)
