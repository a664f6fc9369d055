"""Build the agent-tuning set: tool-use trajectories in the exact messages the agent produces at inference.

Every trajectory is recorded by the agent's own pieces: :class:`~puyu.agent.protocols.FunctionCallingProtocol`
(the protocol ``puyu agent`` uses by default) opens the conversation and records the call and the tool
message, the tools are the built-in ``python``/``calculator``/``solve`` with their own schemas, and the
tool message carries what the tool really returned (the code runs in a :class:`~puyu.sandbox.PythonSandbox`
while building).  The final answer is written from that real output, and a row whose output disagrees with
the expected answer (GSM8K's gold, the generator's exact value) is dropped and counted.

Sources (:class:`Mix`): GSM8K *train* rows as programs (:mod:`~puyu.agent.tuning.gsm8k`), generated
equation and arithmetic tasks (:mod:`~puyu.agent.tuning.tasks`) and a share of the glaive tool-calling
chats (rows before :data:`GLAIVE_HELD_OUT_FROM` only: the rest is held out for benchmarks).  GSM8K test
and the evaluation prompts are never read.  :func:`build_agent_data` writes one JSONL of OpenAI-format
``{"messages", "tools"}`` rows (what ``puyu train`` reads) plus a report of the counts, cached under
``$PUYU_HOME/data/agent_tuning/`` by a hash of the mix and the source files.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from puyu.agent.builtin_tools import builtin_tools
from puyu.agent.models import Reply
from puyu.agent.protocols import Decision, FunctionCallingProtocol
from puyu.agent.tools import ToolRegistry, ToolResult
from puyu.agent.tuning.gsm8k import NotAProgram, gsm8k_program
from puyu.agent.tuning.tasks import Task, generate_tasks, task_key
from puyu.data.jsonl import read_jsonl
from puyu.errors import ConfigError
from puyu.home import home_subdir
from puyu.sandbox import PythonSandbox
from puyu.tokenizer.tool_formats import ToolCall

AGENT_TOOLS = ["python", "calculator", "solve"]  # what `puyu agent` offers unless --tools says otherwise
MAX_CODE_CHARS = 256  # a local agent's string cap per call at the default 512 new tokens: min(300, 512 // 2)
GSM8K_TRAIN = "eval/gsm8k/train.jsonl"
GLAIVE = "sft/chat_messages/glaive_toolcall_en.messages.jsonl"
GLAIVE_HELD_OUT_FROM = 250  # glaive rows 250-299 are held out for the tool-choice benchmark
# Shares of the kinds, from the held-out solve rates after tuning: on an even mix 84% (linear), 96% (systems), 54%
# (percentages), 44% (conversions: unit factors misremembered); with percentages and conversions twice as often,
# conversions still failed in Chinese (pounds taken for kilograms) and linear equations worded like a percentage.  Once
# conversions copied their units into convert(), three shares of them and one of systems gave conversions 49/50 but
# systems 22/50 (one equation of two copied into `solve`); with two shares of each, English conversions fell to 18/25
# (the held-out "37 feet is how many meters?" written as a GSM8K program).  Two shares of equations and three of
# percentages and conversions, half of the percentages price cuts (Mix.discounts; held-out sets keep 35%): 175/200,
# 179/200 with the wordings that balance 求/已知 (tasks.TEMPLATES), 178/200 with the grammar of Chinese shares
# (Chinese percentages 20/25 from 7, English conversions 18/25 from 25: one training is a draw of about ±8, see the
# README) and 182/200 with --seed 1 (164 before the grammar).  Rows that first show a failed equation program
# (weight 0, not trained) and then the right call did not teach recovery: the model repeated the failed call (160/200).
TASK_KINDS = ("linear", "system", "percent", "convert", "percent", "convert", "linear", "system", "convert", "percent")
VERSION = 6  # bump when the trajectories change, so cached sets are rebuilt
ANSWER = {"en": "The answer is {value}.", "zh": "答案是 {value}。"}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+|/\d+)?")  # 72, -3.5, 1e-07, 7/2 (the solver's exact fractions)


@dataclass
class Mix:
    """How many rows of each source, the seed, and the share of rows that offer ``python`` alone.

    Attributes:
        gsm8k: GSM8K train rows to keep (rows are taken in a seeded order until this many pass).
        tasks: generated equation and arithmetic tasks.
        glaive: glaive chats that offer tools (from the first :data:`GLAIVE_HELD_OUT_FROM` rows).
        seed: seeds the GSM8K order, the generator, the glaive sample and the offered tool sets.
        python_only: share of python-solved rows that offer only the ``python`` tool (``--tools python``).
        distractors: share of glaive chats also offered ``calculator`` and ``solve``, and half that share of the
            other rows also offered one glaive tool, each at a random place in the list: the right tool has to be
            picked by what the question asks, not by which tools are offered (see :func:`with_distractors`).
        discounts: share of the percentage tasks worded as a price reduction (the rest ask for a plain share).
    """

    gsm8k: int = 60
    tasks: int = 310
    glaive: int = 80
    seed: int = 0
    python_only: float = 0.5
    distractors: float = 0.6
    discounts: float = 0.5

    def __post_init__(self) -> None:
        shares = (self.python_only, self.distractors, self.discounts)
        if min(self.gsm8k, self.tasks, self.glaive) < 0 or not all(0 <= share <= 1 for share in shares):
            raise ConfigError(f"a mix needs counts >= 0 and python_only, distractors, discounts in [0, 1]; got {self}")
        if self.glaive > GLAIVE_HELD_OUT_FROM:
            raise ConfigError(f"at most {GLAIVE_HELD_OUT_FROM} glaive rows can be trained on (the rest are held out); got {self.glaive}")


@dataclass
class Report:
    """Counts of a build: rows kept per source and rows dropped per source and reason."""

    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)

    def count(self, source: str, reason: str | None) -> None:
        self.seen[source] = self.seen.get(source, 0) + 1
        if reason is None:
            self.kept[source] = self.kept.get(source, 0) + 1
        else:
            reasons = self.dropped.setdefault(source, {})
            reasons[reason] = reasons.get(reason, 0) + 1

    def summary(self) -> str:
        drops = ", ".join(f"{s} {sum(r.values())} ({', '.join(f'{k} {v}' for k, v in r.items())})" for s, r in self.dropped.items())
        return f"kept {', '.join(f'{s} {n}' for s, n in self.kept.items())}; dropped {drops or 'none'}"


def show_number(value: Fraction) -> str:
    """An exact value as a short decimal: 72, 3.5, -0.333333."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def _close(got: Fraction, want: Fraction) -> bool:
    return abs(got - want) <= Fraction(1, 10**6) * max(1, abs(want))


def output_values(text: str) -> dict[str, Fraction]:
    """Numbers a tool printed: ``{"x": ..., "y": ...}`` for ``x = 6, y = 4``, ``x = 7/2 = 3.5`` or sympy's
    ``[{x: 8, y: -9}]`` (the first number after each name, so the solver's exact fraction), and ``value``, the last
    number printed."""
    values = {name: Fraction(NUMBER.findall(part)[0]) for name, part in re.findall(r"\b([a-z])\s*[=:]\s*([^,;}]+)", text)
              if NUMBER.findall(part)}
    numbers = NUMBER.findall(text)
    return {**values, "value": Fraction(numbers[-1])} if numbers else values


def shown_values(text: str) -> dict[str, str]:
    """Each unknown's value as the tool printed it, for the answer to copy: the last number after the name (the
    solver's ``x = 7/2 = 3.5`` gives ``3.5``, sympy's ``[{x: 35/4}]`` gives ``35/4``).  Copying is what a small model
    does reliably; turning 35/4 into 8.75 in its head is not (measured: tuned on decimals it answered x = 2.5555...)."""
    return {name: NUMBER.findall(part)[-1] for name, part in re.findall(r"\b([a-z])\s*[=:]\s*([^,;}]+)", text) if NUMBER.findall(part)}


class Recorder:
    """Records one-call trajectories with the agent's protocol and the real tools (over one sandbox session)."""

    def __init__(self, sandbox: PythonSandbox):
        self.tools = builtin_tools(AGENT_TOOLS, sandbox=sandbox)

    def record(self, question: str, offered: list[str], tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], ToolResult]:
        """``({"messages", "tools"}, result)``: the user's question, the call, and the tool's real result (no answer yet)."""
        registry = ToolRegistry([self.tools.tools[name] for name in offered])
        protocol = FunctionCallingProtocol(registry)
        messages = protocol.start(question, None)
        call = ToolCall(tool, json.dumps(arguments, ensure_ascii=False), id="call_0")
        result = registry.run(tool, arguments)
        protocol.record(messages, Reply("", [call]), Decision(calls=[call]), [result])
        return {"messages": messages, "tools": registry.schemas()}, result


def _answered(row: dict[str, Any], answer: str) -> dict[str, Any]:
    row["messages"].append({"role": "assistant", "content": answer})
    return row


def _offered(tool: str, rng: random.Random, python_only: float) -> list[str]:
    """The tools a row offers: ``python`` alone for a share of python rows; some calculator/solve rows offer no
    ``python``, so the model learns to pick among other tools too (as an agent with ``--tools calculator,solve`` asks)."""
    if tool == "python":
        return ["python"] if rng.random() < python_only else AGENT_TOOLS
    return [name for name in AGENT_TOOLS if name != "python"] if rng.random() < 0.4 else AGENT_TOOLS


def with_distractors(row: dict[str, Any], extra: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """``row`` offering also the tool schemas ``extra`` (those it does not offer yet), each at a random place.

    Why: tuned on math rows that offer only math tools and glaive chats that offer only their own, the built-in model
    called ``calculator`` for all 10 weather prompts of the tool-choice benchmark when it was offered next to
    ``get_weather`` (untuned it picked the weather tool); it had learnt "call the math tool when there is one".
    """
    tools, names = list(row["tools"]), {t["function"]["name"] for t in row["tools"]}
    for schema in extra:
        if schema["function"]["name"] not in names:
            tools.insert(rng.randint(0, len(tools)), schema)
    return {**row, "tools": tools}


def gsm8k_trajectory(recorder: Recorder, row: dict, offered: list[str]) -> tuple[dict | None, str | None]:
    """``(trajectory, None)`` for a GSM8K row whose program prints the gold answer, else ``(None, reason)``."""
    try:
        program = gsm8k_program(row, MAX_CODE_CHARS)
    except NotAProgram as e:
        return None, e.reason
    trajectory, result = recorder.record(program.question, offered, "python", {"code": program.code})
    if not result.ok:
        return None, "error"
    printed = output_values(result.output).get("value")
    if printed is None or not _close(printed, program.gold):
        return None, "wrong_answer"
    return _answered(trajectory, ANSWER["en"].format(value=show_number(program.gold))), None


def task_trajectory(recorder: Recorder, task: Task, offered: list[str]) -> tuple[dict | None, str | None]:
    """``(trajectory, None)`` for a generated task whose tool output shows the expected values, else ``(None, reason)``."""
    trajectory, result = recorder.record(task.question, offered, task.tool, task.arguments)
    if not result.ok:
        return None, "error"
    printed = output_values(result.output)
    if any(name not in printed or not _close(printed[name], want) for name, want in task.expected.items()):
        return None, "wrong_answer"
    shown = shown_values(result.output)
    solution = ", ".join(f"{name} = {shown[name]}" for name in task.expected if name != "value")
    value = show_number(printed["value"]) if "value" in task.expected else ""
    return _answered(trajectory, task.answer.format(solution=solution, value=value)), None


def _read(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"no {what} file at {path}; pass --data-dir (or set PUYU_DATA_DIR) to the folder that holds "
                          f"{GSM8K_TRAIN} and {GLAIVE}")
    return [row for _, row in read_jsonl(path)]


def _tasks(mix: Mix) -> list[Task]:
    return generate_tasks(mix.tasks, mix.seed, kinds=TASK_KINDS, discount_share=mix.discounts)


def _cache_key(mix: Mix, files: list[Path]) -> str:
    # The generated tasks themselves, not only the mix: a changed share of kinds or a new wording rebuilds the set.
    tasks = [task_key(task) for task in _tasks(mix)]
    digest = hashlib.sha256(json.dumps([VERSION, asdict(mix), tasks], ensure_ascii=False).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_rows(mix: Mix, data_dir: Path, progress: bool = True) -> tuple[list[dict], Report]:
    """The trajectories of ``mix`` and the counts (see the module docstring); runs every program for real."""
    from tqdm import tqdm

    gsm8k, glaive = _read(data_dir / GSM8K_TRAIN, "GSM8K train"), _read(data_dir / GLAIVE, "glaive tool-calling")
    rng, report, rows = random.Random(mix.seed), Report(), []
    order = rng.sample(range(len(gsm8k)), len(gsm8k))
    bar = tqdm(total=mix.gsm8k + mix.tasks + mix.glaive, desc="agent data", unit="row", disable=not progress, dynamic_ncols=True)

    with_tools = [row for row in glaive[:GLAIVE_HELD_OUT_FROM] if row.get("tools")]  # chats without tools teach no tool use
    if mix.glaive > len(with_tools):
        raise ConfigError(f"the glaive file has {len(with_tools)} chats with tools before row {GLAIVE_HELD_OUT_FROM}; "
                          f"asked for {mix.glaive}")
    other_tools = list({t["function"]["name"]: t for row in with_tools for t in row["tools"]}.values())
    math_tools = builtin_tools(["calculator", "solve"]).schemas()  # no python: it would start a sandbox for a schema

    def add(source: str, row: dict | None, reason: str | None) -> None:
        report.count(source, reason)
        if row is not None:
            if source != "glaive" and rng.random() < mix.distractors / 2:
                row = with_distractors(row, [rng.choice(other_tools)], rng)
            rows.append(row)
            bar.update()
        bar.set_postfix(kept=len(rows), dropped=sum(report.seen.values()) - len(rows), refresh=False)

    with PythonSandbox() as sandbox:
        recorder = Recorder(sandbox)
        for index in order:
            if report.kept.get("gsm8k", 0) >= mix.gsm8k:
                break
            add("gsm8k", *gsm8k_trajectory(recorder, gsm8k[index], _offered("python", rng, mix.python_only)))
        for task in _tasks(mix):
            add(task.kind, *task_trajectory(recorder, task, _offered(task.tool, rng, mix.python_only)))
    for index in sorted(rng.sample(range(len(with_tools)), mix.glaive)):
        chat = with_tools[index]
        add("glaive", with_distractors(chat, math_tools, rng) if rng.random() < mix.distractors else chat, None)
    bar.close()
    return rows, report


def build_agent_data(mix: Mix, data_dir: str | Path, out_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, Report]:
    """Write the set of ``mix`` as JSONL (cached: an existing file for the same mix and sources is reused).

    Returns:
        the JSONL path and the build's :class:`Report` (also saved next to it as ``.report.json``).
    """
    data_dir = Path(data_dir)
    out = Path(out_dir) if out_dir else home_subdir("data") / "agent_tuning"
    key = _cache_key(mix, [data_dir / GSM8K_TRAIN, data_dir / GLAIVE]) if (data_dir / GSM8K_TRAIN).is_file() else "missing"
    path, report_path = out / f"agent_tuning-{key}.jsonl", out / f"agent_tuning-{key}.report.json"
    if path.is_file() and report_path.is_file():
        return path, Report(**json.loads(report_path.read_text()))
    rows, report = build_rows(mix, data_dir, progress)
    out.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    report_path.write_text(json.dumps(asdict(report), indent=2))
    partial.replace(path)
    return path, report
