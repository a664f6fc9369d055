"""A seeded generator of equation and arithmetic tasks in English and Chinese, each with its tool calls.

:func:`generate_tasks(n, seed, phrasings) <generate_tasks>` returns :class:`Task` objects: the user's
question, the tool that solves it (``python``, ``solve`` or ``calculator``), the call's arguments, the exact expected
values (fractions, computed here and never by the tools) and an answer template.  Kinds: linear
equations (``已知2x+5=17，求x``), 2x2 systems, percentages and unit conversions.  The same
``(n, seed, phrasings)`` always gives the same tasks.  ``phrasings="train"`` uses the wordings the
tuning data is built from; ``"heldout"`` uses other wordings, for a benchmark of tasks the tuning never
saw (with a new seed too).  The bootcamp equation 2x+3=10 and the evaluation prompts in
:data:`HELD_OUT_PROMPTS` are never produced.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from puyu.errors import ConfigError

PHRASINGS = ("train", "heldout")
# Prompts that evaluations ask (the bootcamp demo, the built-in model's tool-call test): never trained on.
HELD_OUT_PROMPTS = ("已知2x+3=10，求x", "Use Python to solve 2x+3=10 for x.", "Solve 2x + 3 = 10 for x.", "Solve 2x+3=10",
                    "Solve x + y = 10 and x - y = 2.", "Solve the equation 5x - 7 = 18.", "Solve 4a + 2 = 14.",
                    "求解方程 x - 8 = 2", "What is 7% of 300?", "What value of y satisfies 3y = 27?", "Solve for z: z/4 = 6.")
HELD_OUT_EQUATIONS = {(2, 3, 10)}  # a*x + b = c of the bootcamp demo


def _wordings(asks: tuple[str, ...], bodies: tuple[str, ...], ends: tuple[str, ...], held_out: str) -> list[str]:
    """Every ``ask + body + end`` with an asking word or an ending (or both), but the held-out wording: the asking
    word, the question's body and its ending are learnt apart from each other, so no single word (求) decides the tool
    by itself."""
    return [f"{ask}{body}{end}" for ask in asks for body in bodies for end in ends
            if (ask or end) and f"{ask}{body}{end}" != held_out]


# Chinese plain shares come from this small grammar.  Measured with 14 fixed Chinese share wordings: the tuned model
# wrote the equation program for the held-out "求 N 乘以 P% 的结果" 16 of 16 times, and also for "计算 N 乘以 P% 的
# 结果", "求 N 乘 P%" and "求 N 的 P% 的结果", none of them held out; with the grammar it solved 20 of 25 held-out
# Chinese percentages (7 before) and 8 of the 10 Chinese shares among bench/agent.py's probes (5 before; all probes 30
# of 35, 29 before).  The same grammar for the conversions (92 English wordings) did worse: 15 of 25 held-out English
# conversions, 22 of 35 probes.
ZH_SHARE_HELD_OUT = "求 {n} 乘以 {p}% 的结果"
ZH_SHARES = _wordings(("", "求 ", "计算 ", "请算出 ", "算一下 ", "请帮我求 ", "帮我算 "),
                      ("{n} 的 {p}%", "{n} 的百分之{p}", "{n} 乘以 {p}%", "{n} 乘 {p}%", "{n} × {p}%", "{p}% 的 {n}",
                       "{n} 乘以百分之{p}"),
                      ("", " 是多少？", " 等于多少？", " 得多少？", " 的值", " 的结果", " 是几？", " 为多少？"), ZH_SHARE_HELD_OUT)
ZH_SHARES += ["{n} 元的 {p}% 是多少元？", "{n} 人中的 {p}% 是多少人？", "已知一个数是 {n}，求它的 {p}%"]

# {kind: {phrasings: {language: [templates]}}}; fields are filled with str.format.  Percentages come in two
# wordings: "discount" (the price after a reduction) and "percent" (a plain share); a task picks by its numbers.
# Many train wordings per kind: a small model learns the task, not one sentence (measured: with 2-4 wordings the
# tuned model solved 4 of 25 held-out Chinese percentage questions, taking plain shares for discounts; with 8 plain and
# 4 discount wordings 15 of 25, and with 12 and 8 (降价 among them) 14 of 25: the held-out price cut "一件 N 元的
# 商品降价 P% 后卖多少元" was still taken for a share).  The question words 求 and 已知 were in eight equation wordings
# and one percentage wording, so a small model can read 求 as "solve an equation"; the percentages, price cuts and
# conversions now have them too (measured, same mix otherwise: held-out price cuts 8 of 9 right, up from 1 of 9; the
# held-out share "求 N 乘以 P% 的结果" was still written as the equation program, 0 of 16, until the grammar above).
TEMPLATES = {
    "linear": {
        "train": {"en": ["Solve {eq} for {v}.", "Find {v} if {eq}.", "Use Python to find {v}: {eq}", "What is {v} when {eq}?",
                         "Please solve {eq}.", "{eq}. What is {v}?", "I need the value of {v} in {eq}.",
                         "Work out {v} given that {eq}.", "Use Python to solve {eq} for {v}."],
                  "zh": ["已知{eq}，求{v}", "解方程 {eq}", "求 {eq} 中 {v} 的值", "用 Python 求解：{eq}，{v} 等于多少？",
                         "{eq}，求 {v} 的值。", "请帮我解 {eq}", "由 {eq} 求出 {v}", "方程 {eq} 中，{v} 等于几？",
                         "用 Python 解方程 {eq}", "{eq}，那么 {v} 是多少？", "如果 {eq}，{v} 等于多少？", "设 {eq}，{v} 为多少？"]},
        "heldout": {"en": ["Given {eq}, what is {v}?", "Determine {v} from the equation {eq}."],
                    "zh": ["若 {eq}，则 {v} 是多少？", "方程 {eq} 的解是什么？"]},
    },
    "system": {
        "train": {"en": ["Solve the system {eq1} and {eq2}.", "Find x and y: {eq1}, {eq2}", "Solve these equations: {eq1}; {eq2}",
                         "Find the values of x and y such that {eq1} and {eq2}.", "Use Python to solve {eq1}, {eq2}.",
                         "{eq1}; {eq2}. What are x and y?"],
                  "zh": ["解方程组：{eq1}，{eq2}", "已知 {eq1} 且 {eq2}，求 x 和 y", "求解：{eq1}，{eq2}",
                         "x 和 y 满足 {eq1} 与 {eq2}，求 x、y", "用 Python 解方程组 {eq1}，{eq2}", "解方程组：{eq1}；{eq2}",
                         "{eq1}；{eq2}。x 和 y 各是多少？"]},
        "heldout": {"en": ["If {eq1} and {eq2}, what are x and y?"], "zh": ["求方程组 {eq1}；{eq2} 的解"]},
    },
    "percent": {
        "train": {"en": ["What is {p}% of {n}?", "Compute {p} percent of {n}.", "Find {p}% of {n}.", "What's {p} percent of {n}?",
                         "{p}% of {n} equals what?", "Take {p}% of {n}. What do you get?"],
                  "zh": ZH_SHARES},
        "heldout": {"en": ["How much is {p}% of {n}?"], "zh": [ZH_SHARE_HELD_OUT]},
    },
    "discount": {
        "train": {"en": ["A price of {n} is reduced by {p}%. What is the new price?",
                         "An item costs {n}. It is {p}% off. What is the sale price?",
                         "A {n} dollar jacket is on sale at {p}% off; how much does it cost now?",
                         "The price {n} drops by {p}%. What is it now?"],
                  "zh": ["原价 {n} 元，打折减少 {p}%，现价是多少元？", "商品标价 {n} 元，优惠 {p}%，实付多少元？",
                         "{n} 元的东西便宜了 {p}%，现在多少钱？", "价格 {n} 元，下降 {p}% 后是多少元？",
                         "一台 {n} 元的电脑减价 {p}%，现在卖多少钱？", "{n} 元的衣服降价 {p}%，降价后多少元？",
                         "票价 {n} 元，降低 {p}% 以后是多少元？", "工资 {n} 元减少 {p}% 后还剩多少元？",
                         "原价 {n} 元，降价 {p}% 后，求现价", "已知一双鞋 {n} 元，打折减价 {p}%，求现在的价格"]},
        "heldout": {"en": ["After a {p}% discount, what does an item priced {n} cost?"],
                    "zh": ["一件 {n} 元的商品降价 {p}% 后卖多少元？"]},
    },
    "convert": {
        "train": {"en": ["Convert {q} {src} to {dst}.", "How many {dst} are in {q} {src}?", "What is {q} {src} in {dst}?",
                         "Express {q} {src} in {dst}.", "Change {q} {src} into {dst}.",
                         "I have {q} {src}. How much is that in {dst}?", "{q} {src} = ? {dst}"],
                  "zh": ["把 {q} {src_zh}换算成{dst_zh}", "{q} {src_zh}等于多少{dst_zh}？", "{q} {src_zh}合多少{dst_zh}？",
                         "请把 {q} {src_zh}转换为{dst_zh}", "{q} {src_zh}换成{dst_zh}是多少？", "已知 {q} {src_zh}，求合多少{dst_zh}"]},
        "heldout": {"en": ["{q} {src} is how many {dst}?"], "zh": ["{q} {src_zh}是多少{dst_zh}？"]},
    },
}
# (unit, unit in Chinese, target, target in Chinese, exact factor: the expected values, never what the tool computes)
UNITS = [("miles", "英里", "kilometers", "千米", Fraction("1.609344")),
         ("kilometers", "千米", "meters", "米", Fraction(1000)),
         ("hours", "小时", "minutes", "分钟", Fraction(60)),
         ("kilograms", "千克", "grams", "克", Fraction(1000)),
         ("pounds", "磅", "kilograms", "千克", Fraction("0.45359237")),
         ("inches", "英寸", "centimeters", "厘米", Fraction("2.54")),
         ("feet", "英尺", "meters", "米", Fraction("0.3048"))]
ANSWERS = {
    "solution": {"en": "The solution is {solution}.", "zh": "解得 {solution}。"},
    "value": {"en": "The answer is {value}.", "zh": "答案是 {value}。"},
    "convert": {"en": "{q} {src} is {value} {dst}.", "zh": "{q} {src_zh}等于 {value} {dst_zh}。"},
}
VARIABLES = ["x", "y", "z", "a", "n", "t"]
CONVERT_IMPORT = "from puyu.sandbox.units import convert"
Made = tuple[dict, str, dict, dict, str]  # (phrasing fields, tool, arguments, expected values, answer kind)


@dataclass
class Task:
    """One generated task.

    Attributes:
        kind: linear, system, percent or convert.
        language: en or zh.
        question: the user's message.
        tool: python or solve.
        arguments: the call's arguments.
        expected: ``{name: exact value}`` the tool's output must show (a name per unknown, or ``value``).
        answer: the final answer's template (``{solution}`` or ``{value}`` filled from the tool's real output).
    """

    kind: str
    language: str
    question: str
    tool: str
    arguments: dict[str, str]
    expected: dict[str, Fraction]
    answer: str


def normal_question(text: str) -> str:
    """``text`` without spaces and punctuation, lower-cased: questions that differ only there are the same question."""
    return re.sub(r"[\s,，.。?？:：]", "", text).lower()


HELD_OUT_NORMAL = {normal_question(p) for p in HELD_OUT_PROMPTS}


def _term(coefficient: int, variable: str) -> str:
    return variable if coefficient == 1 else f"-{variable}" if coefficient == -1 else f"{coefficient}{variable}"


def _signed(value: int) -> str:
    return f"+ {value}" if value >= 0 else f"- {-value}"


def sympy_program(equations: list[str]) -> str:
    """The Python that solves ``equations`` as the question writes them (``2x+3=10``: sympy parses implicit products
    and the equals sign); it prints ``[{x: 7/2}]``.

    One short fixed program around the equations copied verbatim, in single quotes (nothing to escape inside the JSON
    arguments): a small model learns to copy far more reliably than to rearrange an equation into arithmetic
    (measured: tuned on rearranged code, the built-in model solved none of 24 held-out tasks), and a shorter fixed
    part is learnt in fewer steps.
    """
    return (f"from sympy import solve, parse_expr\n"
            f"print(solve([parse_expr(e, transformations='all') for e in {equations!r}], dict=True))")


def _linear(rng: random.Random, use_python: bool, language: str) -> Made | None:
    v = rng.choice(VARIABLES)
    a, b, c = rng.choice([k for k in range(-9, 13) if k not in (0, 1)]), rng.randint(-30, 30), rng.randint(-40, 60)
    if (a, b, c) in HELD_OUT_EQUATIONS or b == 0:
        return None
    eq = f"{_term(a, v)}{'+' if b > 0 else '-'}{abs(b)}={c}" if rng.random() < 0.5 else f"{_term(a, v)} {_signed(b)} = {c}"
    fields = {"eq": eq, "v": v}
    expected = {v: Fraction(c - b, a)}
    if use_python:
        return fields, "python", {"code": sympy_program([eq])}, expected, "solution"
    return fields, "solve", {"equations": eq}, expected, "solution"


def _system(rng: random.Random, use_python: bool, language: str) -> Made | None:
    x, y = rng.randint(-9, 12), rng.randint(-9, 12)
    a, b, d, e = (rng.choice([k for k in range(-5, 6) if k]) for _ in range(4))
    if a * e - b * d == 0:
        return None
    c, f = a * x + b * y, d * x + e * y
    eq1, eq2 = f"{_term(a, 'x')} {_signed(b)[0]} {_term(abs(b), 'y')} = {c}", f"{_term(d, 'x')} {_signed(e)[0]} {_term(abs(e), 'y')} = {f}"
    expected = {"x": Fraction(x), "y": Fraction(y)}
    if use_python:
        return {"eq1": eq1, "eq2": eq2}, "python", {"code": sympy_program([eq1, eq2])}, expected, "solution"
    return {"eq1": eq1, "eq2": eq2}, "solve", {"equations": f"{eq1}, {eq2}"}, expected, "solution"


def _percent(rng: random.Random, use_python: bool, language: str, discount_share: float = 0.35) -> Made:
    p, n = rng.choice([5, 10, 12, 15, 20, 25, 30, 35, 40, 50, 60, 75, 80, 8, 3, 45]), rng.choice(range(20, 2001, 5))
    discount = rng.random() < discount_share
    value = Fraction(n) * (100 - p) / 100 if discount else Fraction(n) * p / 100
    expression = f"{n} * (100 - {p}) / 100" if discount else f"{p} / 100 * {n}"
    fields = {"p": p, "n": n, "discount": discount}
    if use_python:
        return fields, "python", {"code": f"print({expression})"}, {"value": value}, "value"
    return fields, "calculator", {"expression": expression}, {"value": value}, "value"


def _convert(rng: random.Random, use_python: bool, language: str) -> Made:
    """Always through ``python`` with :func:`puyu.sandbox.units.convert`, the units copied from the question: tuned to
    write ``q * factor`` (python or calculator) the model recalled the factors badly (measured: 15 of 25 held-out
    Chinese conversions, 磅 and 英里 converted with 1000)."""
    src, src_zh, dst, dst_zh, exact = rng.choice(UNITS)
    q = rng.choice([rng.randint(2, 120), rng.randint(1, 40) + rng.choice([0.5, 0.25])])
    fields = {"q": q, "src": src, "src_zh": src_zh, "dst": dst, "dst_zh": dst_zh}
    units = (src, dst) if language == "en" else (src_zh, dst_zh)
    code = f"{CONVERT_IMPORT}\nprint(round(convert({q}, {units[0]!r}, {units[1]!r}), 4))"  # rounded: a short number to copy
    return fields, "python", {"code": code}, {"value": round(Fraction(str(q)) * exact, 4)}, "convert"


KINDS = {"linear": _linear, "system": _system, "percent": _percent, "convert": _convert}


def _phrase(kind: str, fields: dict, tool: str, phrasings: str, language: str, rng: random.Random) -> str:
    wording = "discount" if kind == "percent" and fields["discount"] else kind
    templates = [t for t in TEMPLATES[wording][phrasings][language] if tool == "python" or "Python" not in t]
    return rng.choice(templates).format(**fields)


def generate_tasks(n: int, seed: int = 0, phrasings: str = "train", kinds: tuple[str, ...] = tuple(KINDS),
                   python_share: float = 0.6, discount_share: float = 0.35) -> list[Task]:
    """``n`` tasks, half English and half Chinese, cycling through ``kinds`` (see the module docstring).

    Args:
        n: how many tasks.
        seed: the random seed (the same seed gives the same tasks).
        phrasings: ``train`` or ``heldout`` wordings.
        kinds: which kinds of task, in turn (a kind listed twice comes twice as often).
        python_share: share of equations and percentages solved with ``python``; the others call ``solve``
            (equations) or ``calculator`` (percentages).  Conversions always use ``python`` (see :func:`_convert`).
        discount_share: share of percentages worded as a price reduction rather than a plain share.
    """
    if phrasings not in PHRASINGS:
        raise ConfigError(f"phrasings must be one of {', '.join(PHRASINGS)}, got {phrasings!r}")
    unknown = set(kinds) - KINDS.keys()
    if n < 0 or not kinds or unknown:
        raise ConfigError(f"generate_tasks needs n >= 0 and kinds from {', '.join(KINDS)}; got n={n}, kinds={kinds}")
    rng, tasks, seen = random.Random(seed), [], set()
    makers = dict(KINDS, percent=functools.partial(_percent, discount_share=discount_share))
    while len(tasks) < n:
        kind, language = kinds[len(tasks) % len(kinds)], ("en", "zh")[(len(tasks) // len(kinds)) % 2]
        made = makers[kind](rng, rng.random() < python_share, language)
        if made is None:
            continue
        fields, tool, arguments, expected, answer = made
        question = _phrase(kind, fields, tool, phrasings, language, rng)
        key = normal_question(question)
        if key in HELD_OUT_NORMAL or key in seen:
            continue
        seen.add(key)
        answer_text = ANSWERS[answer][language].format(**fields, value="{value}", solution="{solution}")
        tasks.append(Task(kind, language, question, tool, arguments, expected, answer_text))
    return tasks


def task_key(task: Task) -> str:
    """A stable text form of a task (for checking determinism and caching)."""
    return json.dumps([task.kind, task.language, task.question, task.tool, task.arguments], ensure_ascii=False)
