"""Config files that map 1:1 onto dataclasses: YAML in, a validated dataclass out.

- :func:`read_yaml` reads a file's top-level mapping.
- :func:`apply_override` sets ``section.key=value`` in such a mapping (the value is parsed as YAML).
- :func:`build` makes a dataclass from a mapping (from a file or any dict): nested
  dataclass fields are built from nested mappings, values are checked against
  the field types (``int``, ``float``, ``str``, ``bool``, lists, dicts,
  optional), and a key the dataclass lacks is named with the valid keys of its
  section.

Every problem raises :class:`~puyu.errors.ConfigError` whose message starts
with ``where`` (a file, or a name such as ``recipe`` or ``judge``), e.g.
``recipe: unknown keys ['lora.rank']; valid keys in lora: r, alpha, dropout, targets``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from puyu.errors import ConfigError


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file: ``{}``); ``what`` names the file's kind in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such {what} file: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must be a mapping of {what} keys, got {type(values).__name__}")
    return values


def apply_override(values: dict[str, Any], override: str) -> None:
    """Set ``a.b=value`` in the nested mapping ``values`` (the value is parsed as YAML: ``[a, b]``, ``3``, ``true``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key=value (e.g. train.max_steps=20)")
    key, raw = override.split("=", 1)
    *parents, last = key.strip().split(".")
    target = values
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    target[last] = yaml.safe_load(raw) if raw.strip() else None


def build(cls: type, values: Any, where: str, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from the mapping ``values`` (``prefix``: the section's dotted name)."""
    section = f" in {prefix}" if prefix else ""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix or 'the config'} must be a mapping of keys to values, got {values!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [_dotted(prefix, key) for key in values if key not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys{section}: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _coerce(value, hints[key], where, _dotted(prefix, key)) for key, value in values.items()})


def _dotted(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """``value`` as type ``hint`` (see :func:`build`); ``key`` is its dotted name for errors."""
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is Any:
        return value
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ConfigError(f"{where}: key {key!r} cannot be empty")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, key)
    if origin in (typing.Union, types.UnionType) and args:
        for arg in args[:-1]:  # the first type the value converts to; the last one's error if none
            try:
                return _coerce(value, arg, where, key)
            except ConfigError:
                pass
        return _coerce(value, args[-1], where, key)
    if origin is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key {key!r} must be a list, got {value!r}")
        return [_coerce(v, args[0], where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key {key!r} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], where, f"{key}.{k}") for k, v in value.items()}
    try:
        if hint is bool and not isinstance(value, bool):
            raise ValueError
        if hint in (int, float) and isinstance(value, bool):
            raise ValueError
        return hint(value) if hint in (int, float, str) else value
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: key {key!r} must be {hint.__name__}, got {value!r}") from None
