"""Jinja templates and expressions over a dataset row, as task YAMLs write them.

``render("Q: {{question}}", row, task)`` and
``evaluate_expression("'ABCD'.index(answer)", row, task)`` run in a sandboxed
environment with strict undefined fields: a field a row lacks raises a
:class:`~puyu.errors.DatasetError` naming the row's source and the task.
Tasks (filters) and prompts (text, targets, choices) both use them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from puyu.errors import ConfigError, DatasetError

ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=512)
def _template(source: str) -> jinja2.Template:
    try:
        return ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"bad template {source!r}: {exc}") from None


@lru_cache(maxsize=512)
def _expression(source: str):
    try:
        return ENV.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"bad expression {source!r}: {exc}") from None


def render(source: str, doc: dict[str, Any], task: str) -> str:
    """Render template ``source`` with a row's fields."""
    try:
        return _template(source).render(**doc)
    except (jinja2.UndefinedError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise DatasetError(f"{doc.get('_source', '?')}: task {task}: cannot render {source[:60]!r}: {exc}") from None


def evaluate_expression(source: str, doc: dict[str, Any], task: str) -> Any:
    """Evaluate Jinja expression ``source`` (e.g. ``'ABCD'.index(answer)``) over a row's fields."""
    try:
        value = _expression(source)(**doc)
    except (jinja2.UndefinedError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise DatasetError(f"{doc.get('_source', '?')}: task {task}: cannot evaluate {source!r}: {exc}") from None
    if isinstance(value, jinja2.Undefined):
        raise DatasetError(f"{doc.get('_source', '?')}: task {task}: {source!r} is undefined for this row")
    return value
