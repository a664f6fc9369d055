"""Command-line flags generated from config dataclasses.

``add_dataclass_flags(parser, SamplingParams)`` adds ``--temperature``,
``--top-p`` ... with help taken from the class docstring's ``Attributes:``
section and defaults from the fields; ``dataclass_from_args(SamplingParams,
args)`` builds the instance back, so validation errors name the option.  Every
subcommand (chat, serve, eval, ...) gets the same flags from the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any


def _field_docs(cls: type) -> dict[str, str]:
    doc = cls.__doc__ or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    docs: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^\s{4,8}(\w+): (.*)$", line)
        if match:
            name, docs[match.group(1)] = match.group(1), match.group(2).strip().replace("``", "")
        elif name and line.strip():
            docs[name] += " " + line.strip().replace("``", "")
    return docs


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, group: str | None = None, defaults: Any = None,
                        overrides: dict[str, Any] | None = None) -> None:
    """Add one ``--flag`` per field of dataclass ``cls``; defaults (shown in the help too) are the field defaults,
    or ``defaults``'s values when a command has its own (an instance of ``cls``), or ``overrides``' values: ones
    the command resolves before building ``cls`` (``serve``'s ``--quant auto``; None: after loading the model, as
    ``chat``'s sampling, which the model's recommendation fills)."""
    target = parser.add_argument_group(group) if group else parser
    docs = {name: text.replace("%", "%%") for name, text in _field_docs(cls).items()}  # argparse %-formats help
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        base = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        default = shown = (overrides or {}).get(f.name, base)
        if f.name in (overrides or {}) and default is None:  # resolved once the model is loaded (chat's sampling)
            shown = f"the model's recommendation, else {base}"
        help_text = f"{docs.get(f.name, '')} (default: {shown})"
        if kind is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=docs.get(f.name))
            continue
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is list:
            target.add_argument(flag, type=args[0], action="append", default=None, help=help_text + "; repeat for more")
        else:
            target.add_argument(flag, type=args[0] if args else kind, default=default, help=help_text)


def _field_default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``cls``'s flags that are set (a flag whose default is None and was not given is left out)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """An instance of ``cls`` from the flags :func:`add_dataclass_flags` added."""
    return cls(**flag_values(cls, args))
