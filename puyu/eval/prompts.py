"""Prompts and requests: a task and an example become backend requests; outputs become a scored record.

Prompt layout (as lm-evaluation-harness builds it)::

    description + (text(shot) + target_delimiter + target(shot) + fewshot_delimiter) * k + text(doc)

A ``multiple_choice`` task asks the backend for ``loglikelihood(context,
target_delimiter + choice)`` of each choice (or, with
``choices_are_contexts``, of one continuation after each choice, as WinoGrande
does); ``loglikelihood`` scores one continuation; ``rolling`` the whole text;
``generate`` asks ``generate_until`` and extracts an answer; ``multi_turn``
carries the row's user ``turns``, answered one after the other in one chat
(always through the chat template, see :func:`puyu.eval.runner.answer_turns`).
With ``chat`` on, the prompt is one user message rendered through the model's
chat template and continuations lose their leading delimiter.  Templates and expressions are Jinja
(:mod:`puyu.eval.expressions`); an undefined field raises a :class:`DatasetError` naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from puyu.errors import ConfigError, DatasetError
from puyu.eval.expressions import evaluate_expression, render
from puyu.eval.tasks import Example, TaskSpec, choose_shots


@dataclass
class Prepared:
    """An example turned into requests: ``kind`` names the backend method, ``requests`` its arguments."""

    example: Example
    kind: str  # loglikelihood | rolling | generate | multi_turn
    requests: list[Any]
    prompt: str
    gold: Any = None
    choices: list[str] = field(default_factory=list)


def choices_of(spec: TaskSpec, doc: dict[str, Any]) -> list[str]:
    choices = evaluate_expression(spec.choices, doc, spec.name)
    if not isinstance(choices, (list, tuple)) or not choices:
        raise DatasetError(f"{doc.get('_source', '?')}: task {spec.name}: choices must be a non-empty list, got {choices!r}")
    return [str(c) for c in choices]


def gold_of(spec: TaskSpec, doc: dict[str, Any]) -> Any:
    """The gold answer: an index for choice tasks, a string for generation tasks."""
    if spec.output == "multiple_choice":
        gold = evaluate_expression(spec.gold, doc, spec.name)
        n = len(choices_of(spec, doc))
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < n:
            raise DatasetError(f"{doc.get('_source', '?')}: task {spec.name}: gold {gold!r} is not an index into {n} choices")
        return gold
    if spec.answer:
        return str(evaluate_expression(spec.answer, doc, spec.name))
    return render(spec.target, doc, spec.name) if spec.target else None


def shot_target(spec: TaskSpec, doc: dict[str, Any]) -> str:
    if spec.target:
        return render(spec.target, doc, spec.name)
    if spec.choices_are_contexts:
        raise ConfigError(f"task {spec.name}: few-shot needs a target template")
    return choices_of(spec, doc)[gold_of(spec, doc)]


def uses_own_rows(spec: TaskSpec) -> bool:
    """Whether few-shot examples come from the task's own rows (no few-shot files or prompt file)."""
    return not ({"files", "prompt_file"} & set(spec.fewshot))


def build_context(spec: TaskSpec, example: Example, pool: list[dict] | str, text: str | None = None) -> str:
    """The prompt text before the answer: description, shots and the example's ``text``."""
    doc = example.doc
    parts = [render(spec.description, doc, spec.name)] if spec.description else []
    if isinstance(pool, str):
        parts.append(pool + spec.fewshot_delimiter if spec.shots else "")
    elif spec.shots:
        if len(pool) < spec.shots + (1 if uses_own_rows(spec) else 0):
            raise ConfigError(f"task {spec.name}: {spec.shots} shots asked but only {len(pool)} few-shot rows exist")
        for shot in choose_shots(pool, spec.shots, spec.fewshot.get("sampler", "random"), example.id, doc):
            parts.append(render(spec.text, shot, spec.name) + spec.target_delimiter + shot_target(spec, shot) + spec.fewshot_delimiter)
    parts.append(render(spec.text, doc, spec.name) if text is None else text)
    return "".join(parts)


def prepare(spec: TaskSpec, example: Example, pool: list[dict] | str, chat_render=None) -> Prepared:
    """The requests for one example (see the module docstring).

    Args:
        chat_render: ``f(messages) -> str`` of the model's template, for loglikelihood requests when ``spec.chat`` is on
            (generation requests carry the messages and the backend applies the template).
    """
    doc = example.doc
    if spec.output == "rolling":
        text = render(spec.text, doc, spec.name)
        return Prepared(example, "rolling", [text], text)
    if spec.output == "multi_turn":
        turns = evaluate_expression(spec.turns, doc, spec.name)
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
            raise DatasetError(f"{doc.get('_source', '?')}: task {spec.name}: turns must be a non-empty list of texts, got {turns!r}")
        return Prepared(example, "multi_turn", turns, turns[0])
    delimiter = "" if spec.chat else spec.target_delimiter
    wrap = (lambda c: chat_render([{"role": "user", "content": c}])) if spec.chat else (lambda c: c)
    if spec.output == "generate":
        context = build_context(spec, example, pool)
        request = [{"role": "user", "content": context}] if spec.chat else context  # backends apply the template
        return Prepared(example, "generate", [(request, spec.until, spec.max_new_tokens)], context, gold_of(spec, doc))
    if spec.output == "loglikelihood":
        context = build_context(spec, example, pool)
        return Prepared(example, "loglikelihood", [(wrap(context), delimiter + render(spec.target, doc, spec.name))], context,
                        gold_of(spec, doc))
    choices = choices_of(spec, doc)
    gold = gold_of(spec, doc)
    if spec.choices_are_contexts:
        continuation = delimiter + render(spec.target, doc, spec.name)
        contexts = [wrap(build_context(spec, example, pool, text=c)) for c in choices]
        return Prepared(example, "loglikelihood", [(c, continuation) for c in contexts], contexts[gold], gold, choices)
    context = build_context(spec, example, pool)
    return Prepared(example, "loglikelihood", [(wrap(context), delimiter + c) for c in choices], context, gold, choices)
