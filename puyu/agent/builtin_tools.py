"""The built-in tools: Python interpreter (sandboxed), calculator, equation solver, file reader, knowledge base, and the zoo.

:func:`builtin_tools` builds a :class:`~puyu.agent.tools.ToolRegistry` from
names (:data:`BUILTIN_NAMES`: ``python``, ``calculator``, ``solve``,
``read_file``, ``search_kb`` and the zoo's ``ocr``, ``speak``, ``image_info``,
``image_edit``); tools that hold a resource (the interpreter's session, the
folder, the knowledge base) are made by factories, and a tool with effects
(:data:`~puyu.agent.tools.EFFECTS`) is refused unless ``allow`` lists them.  The
calculator walks the expression's AST (numbers, arithmetic, a few math
functions; never ``eval``); the solver checks the text against a small alphabet
before handing it to sympy, because sympy's parser evaluates Python.  The
python tool returns the images the code saved in its folder (matplotlib plots)
with its output.
"""

from __future__ import annotations

import ast
import math
import mimetypes
import operator
import re
import unicodedata
from pathlib import Path
from typing import Iterable

from puyu.agent.folder import Folder
from puyu.agent.tools import Tool, ToolImage, ToolOutput, ToolRegistry, tool
from puyu.agent.zoo import ZOO
from puyu.errors import ConfigError
from puyu.sandbox import PythonSandbox

BUILTIN_NAMES = ["python", "calculator", "solve", "read_file", "search_kb", *ZOO]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
MAX_IMAGES, MAX_IMAGE_BYTES = 4, 5 << 20
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
FUNCTIONS = {name: getattr(math, name) for name in ["sqrt", "exp", "log", "log10", "log2", "sin", "cos", "tan", "asin", "acos", "atan",
                                                   "floor", "ceil", "factorial", "fabs"]} | {"abs": abs, "round": round}
CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000


def _images(folder: Path) -> dict[Path, int]:
    """Image files in ``folder`` (at any depth) and their modification times (ns)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _saved_images(folder: Path, before: dict[Path, int]) -> list[ToolImage]:
    """Images new or rewritten in ``folder`` since ``before``, at most :data:`MAX_IMAGES` of at most 5 MiB each."""
    saved = [p for p, mtime in sorted(_images(folder).items(), key=lambda item: item[1])
             if before.get(p) != mtime and p.stat().st_size <= MAX_IMAGE_BYTES]
    return [ToolImage(str(p.relative_to(folder)), mimetypes.guess_type(p.name)[0] or "image/png", p.read_bytes())
            for p in saved[:MAX_IMAGES]]


def python_tool(sandbox: PythonSandbox) -> Tool:
    """The interpreter tool over one sandbox session (state persists between calls; saved images come back)."""

    def python(code: str) -> ToolOutput:
        """Run Python code in a sandboxed interpreter and return what it prints; variables persist between calls.

        Args:
            code: Python source; print the values you need (the last expression is shown too). Plots saved
                with matplotlib's plt.savefig('name.png') are shown to the user. Units: from puyu.sandbox.units
                import convert; convert(5, 'feet', 'm') or convert(2, '斤', '克').
        """
        before = _images(sandbox.workdir)
        result = sandbox.run(code)
        parts = [result.stdout.rstrip()] if result.stdout.strip() else []
        if result.stderr.strip():
            parts.append("stderr:\n" + result.stderr.rstrip())
        if result.error:
            raise RuntimeError(result.error + (("\n" + "\n".join(parts)) if parts else ""))
        images = _saved_images(sandbox.workdir, before)
        if images:
            parts.append("saved images: " + ", ".join(i.name for i in images))
        return ToolOutput("\n".join(parts) or "(no output; print the result)", images)

    return Tool(python)


# What NFKC leaves: multiplication/division signs, the minus sign and the Chinese enumeration comma.
MATH_SIGNS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "、": ","})


def ascii_math(text: str) -> str:
    """``text`` with full-width and typographic mathematics in ASCII (``２x＋３＝１０；x×y`` -> ``2x+3=10;x*y``): users and
    models copy equations from Chinese text, where digits, ``=``, ``;`` and ``,`` are often full-width."""
    return unicodedata.normalize("NFKC", text).translate(MATH_SIGNS)


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (limit {MAX_EXPONENT})")
        return OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords:
        return FUNCTIONS[node.func.id](*[_evaluate(a) for a in node.args])
    raise ValueError(f"unsupported expression element {ast.unparse(node)!r}; use numbers, + - * / // % **, "
                     f"{', '.join(sorted(FUNCTIONS))}, pi, e")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly as written, e.g. (3 + 4) * 2 or sqrt(2) ** 2.

    Args:
        expression: numbers with + - * / // % ** ^ and functions such as sqrt, log, sin; constants pi and e.
    """
    try:
        tree = ast.parse(ascii_math(expression).replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None
    value = _evaluate(tree)
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else str(value)


SAFE_MATH = re.compile(r"^[0-9A-Za-z_+\-*/^().,\s]*$")
SYMPY_NAMES = {"sqrt", "exp", "log", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "Abs", "abs", "factorial",
               "pi", "E", "I", "oo"}


def _sympy_text(text: str) -> str:
    """``text`` when it is plain mathematics: sympy's parser evaluates Python, so only numbers, operators,
    short variable names and a few function names get through."""
    names = re.findall(r"[A-Za-z_]\w*", text)
    if not SAFE_MATH.match(text) or any(len(n) > 2 and n not in SYMPY_NAMES or "_" in n for n in names):
        raise ValueError(f"{text!r} is not plain mathematics; use numbers, variables of one or two letters, + - * / ^ ( ), "
                         f"{', '.join(sorted(SYMPY_NAMES))} and =")
    return text


def _show(value) -> str:
    """A sympy value, with its decimal form when it is an exact fraction (7/2 = 3.5)."""
    return f"{value} = {float(value):g}" if value.is_Rational and not value.is_Integer else str(value)


@tool
def solve(equations: str, variables: str = "") -> str:
    """Solve equations or simplify an expression symbolically with sympy, e.g. 2*x + 3 = 10.

    Args:
        equations: one or more equations separated by commas or semicolons (x^2 = 4; 2x+3=10 also works).
        variables: the unknowns to solve for, comma-separated (default: all symbols).
    """
    equations, variables = ascii_math(equations), ascii_math(variables)
    import sympy
    from sympy.parsing.sympy_parser import convert_xor, implicit_multiplication_application, parse_expr, standard_transformations

    transforms = standard_transformations + (implicit_multiplication_application, convert_xor)

    def parse(text: str):
        return parse_expr(_sympy_text(text.strip()), transformations=transforms)

    parts = [p for p in re.split(r"[;,\n]", equations) if p.strip()]
    if not parts:
        raise ValueError("give at least one equation, e.g. 2*x + 3 = 10")
    system = []
    for part in parts:
        sides = part.split("=")
        if len(sides) > 2:
            raise ValueError(f"{part!r} has more than one '='")
        system.append(sympy.Eq(parse(sides[0]), parse(sides[1])) if len(sides) == 2 else parse(sides[0]))
    if len(system) == 1 and not isinstance(system[0], sympy.Equality) and not variables.strip():
        return str(sympy.simplify(system[0]))
    names = [v.strip() for v in re.split(r"[;,\s]+", variables) if v.strip()]
    if not all(re.fullmatch(r"[A-Za-z]\w{0,1}", n) for n in names):
        raise ValueError(f"variables takes the unknowns' names, e.g. 'x, y'; got {variables!r}")
    unknowns = [sympy.Symbol(n) for n in names] or None
    solutions = sympy.solve(system, unknowns, dict=True) if unknowns else sympy.solve(system, dict=True)
    if not solutions:
        return "no solution"
    return "; ".join(", ".join(f"{k} = {_show(v)}" for k, v in s.items()) for s in solutions)


def file_reader_tool(root: str | Path, max_chars: int = 20_000) -> Tool:
    """A tool that reads text files under ``root`` only (paths are resolved; links out of it are refused)."""
    folder = Folder(root, "read_file")

    def read_file(path: str) -> str:
        """Read a text file from the allowed folder.

        Args:
            path: the file's path relative to the allowed folder.
        """
        text = folder.existing(path).read_text(errors="replace")
        return text if len(text) <= max_chars else text[:max_chars] + f"\n... [cut at {max_chars} of {len(text)} characters]"

    return Tool(read_file)


def knowledge_base_tool(name: str, k: int = 4) -> Tool:
    """A tool that searches the knowledge base ``name`` (built with ``puyu kb``)."""
    from puyu.rag.kb import KnowledgeBase

    kb = KnowledgeBase.open(name)

    def search_kb(query: str) -> str:
        """Search the knowledge base for passages about a question; returns the best passages with their sources.

        Args:
            query: what to look for, in a few words.
        """
        hits = kb.search(query, k)
        return "\n\n".join(f"[{i}] ({Path(h.source).name}) {h.text}" for i, h in enumerate(hits, 1)) or "nothing found"

    return Tool(search_kb)


def builtin_tools(names: list[str], sandbox: PythonSandbox | None = None, files: str | Path | None = None,
                  kb: str | None = None, allow: Iterable[str] = ()) -> ToolRegistry:
    """A registry of the built-in tools ``names`` (see :data:`BUILTIN_NAMES`).

    Args:
        names: which tools.
        sandbox: the interpreter's session (a new :class:`PythonSandbox` when ``python`` is asked and none given).
        files: the folder ``read_file`` and the zoo's file tools work in.
        kb: the knowledge base ``search_kb`` searches.
        allow: effects the caller accepts (``network``, ``writes_files``, ``heavy``); a tool with others is refused.
    """
    registry, allow = ToolRegistry(), set(allow)
    for name in names:
        if name == "python":
            new = python_tool(sandbox or PythonSandbox())
        elif name in ("calculator", "solve"):
            new = calculator if name == "calculator" else solve
        elif name == "search_kb":
            if kb is None:
                raise ConfigError("the search_kb tool needs a knowledge base; pass --kb NAME")
            new = knowledge_base_tool(kb)
        elif name == "read_file" or name in ZOO:
            if files is None:
                raise ConfigError(f"the {name} tool needs a folder to work in; pass --files FOLDER")
            new = file_reader_tool(files) if name == "read_file" else ZOO[name](Folder(files, name))
        else:
            raise ConfigError(f"unknown tool {name!r}; built-in tools are {', '.join(BUILTIN_NAMES)}")
        registry.add(new, allow)
    return registry
