"""GSM8K solutions as Python programs: each calculator annotation ``<<48/2=24>>`` becomes one line.

:func:`gsm8k_program(row) <gsm8k_program>` turns ``{"question", "answer"}`` (the answer ends with
``#### 72``) into a :class:`Program` (``a = 48 / 2``, ``b = 48 + a``, ``print(b)``): a number
that an earlier line produced is written as that line's variable, so the program computes instead
of copying.  A row that cannot become a program raises :class:`NotAProgram` with the reason (no
annotations, an annotation that is not plain arithmetic, a program longer than the agent's code cap),
which the builder counts.  Whether the program is *right* is decided by running it (see
:mod:`puyu.agent.tuning.build`), never here.
"""

from __future__ import annotations

import ast
import re
import string
from dataclasses import dataclass
from fractions import Fraction

ANNOTATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>")
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)(?![\w.])")
ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div,
           ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd)
NAMES = [c for c in string.ascii_lowercase if c not in "lo"]  # l and o read like 1 and 0


class NotAProgram(ValueError):
    """A GSM8K row that does not become a program; ``reason`` is a short key for the builder's counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Program:
    """A GSM8K row as code: the ``question``, the ``code`` and the ``gold`` answer (exact)."""

    question: str
    code: str
    gold: Fraction


def gold_answer(answer: str) -> Fraction:
    """The number after ``####`` (commas and a ``$`` removed)."""
    tail = answer.rsplit("####", 1)
    if len(tail) != 2:
        raise NotAProgram("no_gold", "the answer has no '#### <number>' line")
    text = tail[1].strip().replace(",", "").replace("$", "")
    try:
        return Fraction(text)
    except ValueError:
        raise NotAProgram("no_gold", f"the gold answer {text!r} is not a number") from None


def _expression(text: str, results: dict[str, str]) -> str:
    """``text`` as Python with earlier results replaced by their variables; raises NotAProgram if not arithmetic."""
    source = text.strip().replace("x", "*").replace("×", "*").replace("÷", "/").replace("^", "**").replace(",", "")
    source = re.sub(r"(\d)\s*%", r"\1/100", source.replace("$", ""))
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        raise NotAProgram("not_arithmetic", f"<<{text}>> does not parse") from None
    if not all(isinstance(node, ALLOWED) for node in ast.walk(tree)) or any(isinstance(n, ast.Name) for n in ast.walk(tree)):
        raise NotAProgram("not_arithmetic", f"<<{text}>> is not plain arithmetic")
    # a literal that equals an earlier step's result (not a one-digit number, which is more often a constant) becomes it
    written = NUMBER.sub(lambda m: results.get(m.group(1), m.group(1)) if len(m.group(1)) > 1 else m.group(1), source)
    return ast.unparse(ast.parse(written, mode="eval"))


def gsm8k_program(row: dict, max_chars: int) -> Program:
    """A GSM8K train row as a :class:`Program` of at most ``max_chars`` characters (see the module docstring).

    Raises:
        NotAProgram: the row has no gold answer, no annotations, an annotation that is not arithmetic,
            more steps than variable names, or a program longer than ``max_chars``.
    """
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise NotAProgram("malformed", "a GSM8K row needs string fields 'question' and 'answer'")
    gold = gold_answer(row["answer"])
    steps = ANNOTATION.findall(row["answer"])
    if not steps:
        raise NotAProgram("no_annotations", "the solution has no <<expression=result>> annotations")
    if len(steps) > len(NAMES):
        raise NotAProgram("too_long", f"{len(steps)} steps")
    results: dict[str, str] = {}
    lines = []
    for name, (expression, result) in zip(NAMES, steps):
        lines.append(f"{name} = {_expression(expression, results)}")
        results[result.strip().replace(",", "")] = name
    code = "\n".join([*lines, f"print({NAMES[len(steps) - 1]})"])
    if len(code) > max_chars:
        raise NotAProgram("too_long", f"the program has {len(code)} characters, more than the cap of {max_chars}")
    return Program(row["question"].strip(), code, gold)
