"""Row hooks: the small pieces of Python a task YAML names with ``process:`` where templates cannot say it.

Each hook takes a row (dict of fields, plus ``_source``, ``subset``, ``info``)
and returns it with derived fields; it raises :class:`DatasetError` naming the
row for malformed input.  Only the hooks in :data:`HOOKS` can be named, so a
task file cannot run arbitrary code.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Callable

from puyu.errors import ConfigError, DatasetError

Row = dict[str, Any]


def _bad(row: Row, task: str, what: str) -> DatasetError:
    return DatasetError(f"{row.get('_source', '?')}: task {task}: {what}")


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: drop WikiHow ``[title]`` markers and ``[...]`` artefacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: Row, task: str) -> Row:
    if not isinstance(row.get("endings"), list) or "query" not in row:
        raise _bad(row, task, "needs 'query' and a list 'endings'")
    row["query"] = _hellaswag_clean(row["query"])
    row["endings"] = [_hellaswag_clean(e) for e in row["endings"]]
    return row


def truthfulqa(row: Row, task: str) -> Row:
    """From the original CSV: MC choices = best answer + incorrect answers (mc1), ``labels`` for mc2."""
    best, correct, wrong = row.get("Best Answer", ""), row.get("Correct Answers", ""), row.get("Incorrect Answers", "")
    if not best or not wrong:
        raise _bad(row, task, "needs 'Best Answer' and 'Incorrect Answers'")
    split = lambda s: [a.strip() for a in s.split(";") if a.strip()]  # noqa: E731
    trues = [a for a in split(correct) if a != best]
    falses = split(wrong)
    row["mc1_choices"] = [best] + falses
    row["mc2_choices"] = [best] + trues + falses
    row["mc2_labels"] = [1] * (1 + len(trues)) + [0] * len(falses)
    return row


def agieval(row: Row, task: str) -> Row:
    """Parse the options list (stored as a Python literal) and the passage (``'None'`` when absent)."""
    passage = row.get("passage")
    row["passage"] = "" if passage in (None, "None") else str(passage)
    options = row.get("options")
    if options in (None, "None", ""):
        row["options"] = []
    elif isinstance(options, str):
        try:
            row["options"] = [str(o) for o in ast.literal_eval(options)]
        except (ValueError, SyntaxError):
            raise _bad(row, task, f"options {options[:40]!r} is not a list literal") from None
    label = row.get("label")
    row["label"] = "" if label in (None, "None") else str(label)
    row["answer"] = "" if row.get("answer") in (None, "None") else str(row["answer"])
    return row


def mbpp(row: Row, task: str) -> Row:
    if not isinstance(row.get("test_list"), list) or len(row["test_list"]) < 1:
        raise _bad(row, task, "needs a non-empty list 'test_list'")
    row["tests"] = "\n".join(row["test_list"])
    return row


HOOKS: dict[str, Callable[[Row, str], Row]] = {"hellaswag": hellaswag, "truthfulqa": truthfulqa, "agieval": agieval, "mbpp": mbpp}


def apply(name: str, row: Row, task: str) -> Row:
    if name not in HOOKS:
        raise ConfigError(f"task {task}: unknown process hook {name!r}; known: {', '.join(HOOKS)}")
    return HOOKS[name](row, task)
