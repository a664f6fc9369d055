"""Agent benchmark (issue 15): does the built-in model solve tasks through its tools, with and without agent tuning?

For each model configuration (the built-in model alone, and with the adapter ``puyu agent-tune`` saved):

* **equations**: 200 generated equation/arithmetic tasks the tuning never saw (a new seed and the held-out
  wordings, English and Chinese, :func:`puyu.agent.tuning.generate_tasks`), run through ``puyu agent``'s loop with
  the default tools (python, calculator, solve); solved when the final answer states every expected value.
* **bootcamp**: "已知2x+3=10，求x" and "Use Python to solve 2x+3=10 for x." 10 times each at temperature 0.7;
  solved when the answer says 3.5 (or 7/2).
* **gsm8k**: GSM8K *test*, the first ``--gsm8k`` items, program-aided (the agent may write Python); solved when the
  final answer's last number is the gold one.
* **probes**: 35 questions of the generated kinds in wordings that neither the training nor the held-out set has
  (checked against every template), English and Chinese: a wider look at generalisation than one held-out wording
  per kind and language gives.
* **tool choice**: the 30 prompts of tests/agent/test_builtin_tool_calls.py (right tool, right tool + arguments,
  forced constrained calls) and the held-out glaive chats (rows 250-299): the first call the reference makes,
  against the model's, given the same conversation and tools.

Agents run side by side (``--agents`` threads, each with its own sandbox); their turns are batched into one
generation whenever every live agent waits for the model (:class:`LockstepModel`), which makes 1000+ agent runs fit
in an hour on 2 cores.  Prints one table per configuration and the CPU flags.

    .venv/bin/python bench/agent.py                      # all parts, with and without the adapter "agent"
    .venv/bin/python bench/agent.py --parts equations,bootcamp --tasks 50 --no-base
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from puyu.agent import Agent, LocalChatModel, PythonSandbox, ToolRegistry, builtin_tools, calculator, solve  # noqa: E402
from puyu.agent.tuning.build import AGENT_TOOLS, GLAIVE, GLAIVE_HELD_OUT_FROM  # noqa: E402
from puyu.agent.tuning.gsm8k import gold_answer  # noqa: E402
from puyu.agent.tuning.tasks import TEMPLATES, UNITS, generate_tasks, normal_question  # noqa: E402
from puyu.api import LLM  # noqa: E402
from puyu.generation import SamplingParams  # noqa: E402
from puyu.hardware import describe_machine  # noqa: E402
from tests.agent.test_builtin_tool_calls import PROMPTS, get_weather  # noqa: E402  (the test's 30 prompts)

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
BOOTCAMP = ["已知2x+3=10，求x", "Use Python to solve 2x+3=10 for x."]
HELD_OUT_SEED = 20261202  # never used by the tuning data (its seeds are small integers)
F = Fraction
PROBES = [  # (question, expected values): percentages, price cuts, equations and conversions in other wordings
    ("请计算 165 乘以 5%", {"value": F("8.25")}), ("求出 240 的 8%", {"value": F("19.2")}),
    ("算算 1280 的 35% 等于几？", {"value": F(448)}), ("请问 655 的百分之40是多少呢", {"value": F(262)}),
    ("1505 乘以 8% 等于？", {"value": F("120.4")}), ("900 乘以 12% 的结果是多少？", {"value": F(108)}),
    ("计算一下 350 乘以 25%", {"value": F("87.5")}), ("1775 乘 50% 是多少呢？", {"value": F("887.5")}),
    ("380 的 15% 算出来是多少", {"value": F(57)}), ("560 乘以 25% 算出来是几", {"value": F(140)}),
    ("一双 960 元的鞋降价 25%，现在卖多少元？", {"value": F(720)}), ("一台 800 元的手机降价 20%，现在多少钱？", {"value": F(640)}),
    ("5x+2=37，那么 x 是几？", {"x": F(7)}), ("求方程 3y - 4 = 20 的解", {"y": F(8)}), ("2a+3=11 时 a 是多少", {"a": F(4)}),
    ("请解出 7t - 9 = 40 中的 t", {"t": F(7)}), ("x + y = 12，x - y = 4，x、y 各是多少？", {"x": F(8), "y": F(4)}),
    ("3 英里有多少千米？", {"value": F("4.828")}), ("12 磅折合几千克？", {"value": F("5.4431")}),
    ("请把 7 英尺换成米", {"value": F("2.1336")}), ("30 英寸等于几厘米？", {"value": F("76.2")}),
    ("2.5 小时有几分钟？", {"value": F(150)}), ("帮我换算：18 千米合几米", {"value": F(18000)}),
    ("How many meters is 12 feet?", {"value": F("3.6576")}), ("Turn 40 miles into kilometers.", {"value": F("64.3738")}),
    ("What do 7 pounds weigh in kilograms?", {"value": F("3.1751")}), ("15 inches equals how many centimeters?", {"value": F("38.1")}),
    ("Tell me 3.5 hours in minutes.", {"value": F(210)}), ("How many grams does 2.25 kilograms make?", {"value": F(2250)}),
    ("Could you convert 18 kilometers to meters?", {"value": F(18000)}),
    ("26 miles converts to how many kilometers?", {"value": F("41.8429")}),
    ("9 feet makes how many meters?", {"value": F("2.7432")}), ("What is 15 percent of 260?", {"value": F(39)}),
    ("Calculate 8% of 1250.", {"value": F(100)}), ("How much do you get for 35% of 980?", {"value": F(343)}),
]


class LockstepModel(LocalChatModel):
    """A local model shared by agents in threads: when every live agent waits for a reply, one batched generation
    answers them all (``LocalClient.chat_many``)."""

    def __init__(self, llm: LLM, **sampling):
        super().__init__(llm, **sampling)
        self.cond = threading.Condition()
        self.live, self.pending, self.busy = 0, [], False

    def join(self, delta: int) -> None:
        with self.cond:
            self.live += delta
            self.cond.notify_all()

    def reply(self, messages, tools=None, stop=None, tool_choice="auto", grammar=None):
        slot: dict = {}
        with self.cond:
            self.pending.append((self.request(messages, tools, stop, tool_choice, grammar), slot))
            self.cond.notify_all()
            while not slot:
                if not self.busy and self.pending and len(self.pending) >= self.live:
                    batch, self.pending, self.busy = self.pending, [], True
                    self.cond.release()
                    try:
                        results = self.client.chat_many([request for request, _ in batch])
                        for (_, waiting), result in zip(batch, results):
                            waiting["result"] = result
                    except Exception as e:  # every waiting agent sees the failure
                        for _, waiting in batch:
                            waiting["error"] = e
                    finally:
                        self.cond.acquire()
                        self.busy = False
                        self.cond.notify_all()
                else:
                    self.cond.wait(0.5)
        if "error" in slot:
            raise slot["error"]
        return self.finish(slot["result"])


def run_agents(model: LockstepModel, tasks: list[str], agents: int, timeout_s: float = 10.0, max_steps: int = 4) -> list:
    """Each task's :class:`~puyu.agent.AgentRun` (or the exception it raised), in order."""
    todo, results = queue.Queue(), [None] * len(tasks)
    for item in enumerate(tasks):
        todo.put(item)
    done = [0]

    def worker():
        with PythonSandbox(timeout_s=timeout_s) as sandbox:
            registry = builtin_tools(AGENT_TOOLS, sandbox=sandbox)
            while True:
                try:
                    index, task = todo.get_nowait()
                except queue.Empty:
                    model.join(-1)
                    return
                try:
                    results[index] = Agent(model, registry, max_steps=max_steps).run(task)
                except Exception as e:
                    results[index] = e
                done[0] += 1
                print(f"\r  {done[0]}/{len(tasks)}", end="", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(agents, len(tasks)))]
    model.join(len(threads))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(file=sys.stderr)
    return results


def _close(got: Fraction, want: Fraction) -> bool:
    return abs(got - want) <= max(Fraction(1, 100), abs(want) / 10**4)  # answers may round to 2 decimals


def _numbers(text: str) -> list[Fraction]:
    return [Fraction(n) for n in NUMBER.findall(text.replace(",", ""))]


def states(answer: str, expected: dict[str, Fraction]) -> bool:
    """Whether ``answer`` states every expected value (``x = 3.5`` per unknown; any number for ``value``)."""
    numbers = _numbers(answer)
    for name, want in expected.items():
        named = re.findall(rf"\b{name}\s*[=＝]\s*(-?[\d.,/]+)", answer) if name != "value" else []
        candidates = [Fraction(v.rstrip(".,").replace(",", "")) for v in named if NUMBER.fullmatch(v.rstrip(".,").replace(",", ""))]
        if not any(_close(v, want) for v in (candidates or numbers)):
            return False
    return True


def _tool_used(run) -> bool:
    return not isinstance(run, Exception) and bool(run.tool_calls)


def score(runs: list, checks: list) -> tuple[int, int, int]:
    """(solved, used a tool, errors)."""
    solved = sum(1 for run, check in zip(runs, checks) if not isinstance(run, Exception) and check(run.answer))
    return solved, sum(map(_tool_used, runs)), sum(isinstance(r, Exception) for r in runs)


def part_equations(llm: LLM, args) -> dict:
    tasks = generate_tasks(args.tasks, seed=HELD_OUT_SEED, phrasings="heldout")
    model = LockstepModel(llm, temperature=0.0, max_new_tokens=args.max_new_tokens)
    runs = run_agents(model, [t.question for t in tasks], args.agents)
    solved, tooled, errors = score(runs, [lambda a, t=t: states(a, t.expected) for t in tasks])
    by_kind = {}
    for t, run in zip(tasks, runs):
        ok = not isinstance(run, Exception) and states(run.answer, t.expected)
        key = f"{t.kind}/{t.language}"
        by_kind[key] = [by_kind.get(key, [0, 0])[0] + ok, by_kind.get(key, [0, 0])[1] + 1]
    examples = [(t.question, None if isinstance(r, Exception) else r.answer[:200]) for t, r in list(zip(tasks, runs))[:4]]
    return {"solved": solved, "n": len(tasks), "used_tool": tooled, "errors": errors, "by_kind": by_kind, "examples": examples}


NUMBER_FIELD, EQUATION_FIELD = r"-?\d+(?:\.\d+)?", "[-0-9a-z+*/=]+"
UNIT_FIELD = "|".join(re.escape(u) for row in UNITS for u in row[:4])
FIELDS = {"n": NUMBER_FIELD, "p": NUMBER_FIELD, "q": NUMBER_FIELD, "v": "[a-z]", "eq": EQUATION_FIELD, "eq1": EQUATION_FIELD,
          "eq2": EQUATION_FIELD, "src": UNIT_FIELD, "dst": UNIT_FIELD, "src_zh": UNIT_FIELD, "dst_zh": UNIT_FIELD}


def _template_of(question: str) -> str | None:
    """The training or held-out wording that produces ``question`` (compared without spaces and punctuation)."""
    for by_split in TEMPLATES.values():
        for template in (t for templates in by_split.values() for ts in templates.values() for t in ts):
            parts = re.split(r"(\{\w+\})", normal_question(template))
            pattern = "".join(f"(?:{FIELDS[p[1:-1]]})" if p.startswith("{") else re.escape(p) for p in parts)
            if re.fullmatch(pattern, normal_question(question)):
                return template
    return None


def part_probes(llm: LLM, args) -> dict:
    produced = {q: t for q, _ in PROBES if (t := _template_of(q))}
    if produced:
        raise SystemExit(f"probes that a generator wording produces (reword them): {produced}")
    model = LockstepModel(llm, temperature=0.0, max_new_tokens=args.max_new_tokens)
    runs = run_agents(model, [q for q, _ in PROBES], args.agents)
    solved, tooled, errors = score(runs, [lambda a, e=e: states(a, e) for _, e in PROBES])
    failed = [q for (q, e), r in zip(PROBES, runs) if isinstance(r, Exception) or not states(r.answer, e)]
    return {"solved": solved, "n": len(PROBES), "used_tool": tooled, "errors": errors, "failed": failed}


def part_bootcamp(llm: LLM, args) -> dict:
    model = LockstepModel(llm, temperature=0.7, max_new_tokens=args.max_new_tokens)
    prompts = [p for p in BOOTCAMP for _ in range(args.bootcamp_runs)]
    runs = run_agents(model, prompts, args.agents)
    out = {}
    for prompt in BOOTCAMP:
        mine = [r for p, r in zip(prompts, runs) if p == prompt]
        out[prompt] = {"solved": score(mine, [lambda a: states(a, {"x": Fraction(7, 2)})] * len(mine))[0], "n": len(mine),
                       "answers": [None if isinstance(r, Exception) else r.answer[:200] for r in mine[:3]]}
    return out


def part_gsm8k(llm: LLM, args) -> dict:
    rows = [json.loads(line) for line in (args.data_dir / "eval/gsm8k/test.jsonl").read_text().splitlines()[: args.gsm8k]]
    model = LockstepModel(llm, temperature=0.0, max_new_tokens=args.max_new_tokens)
    runs = run_agents(model, [r["question"] for r in rows], args.agents)
    checks = [lambda a, g=gold_answer(r["answer"]): bool(_numbers(a)) and _close(_numbers(a)[-1], g) for r in rows]
    solved, tooled, errors = score(runs, checks)
    return {"solved": solved, "n": len(rows), "used_tool": tooled, "errors": errors}


def _first_call(messages: list[dict]) -> tuple[list[dict], dict] | None:
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and m.get("tool_calls"):
            return messages[:i], m["tool_calls"][0]["function"]
    return None


def part_tool_choice(llm: LLM, args) -> dict:
    client = LocalChatModel(llm, max_string=40).client
    params = SamplingParams(temperature=0.0, max_new_tokens=80)
    tools = ToolRegistry([calculator, solve, get_weather]).schemas()
    done = client.chat_many([([{"role": "user", "content": p}], params, tools, "required") for p, _, _ in PROMPTS])
    right = [c.tool_calls[0].name == want if c.tool_calls else False for c, (_, want, _) in zip(done, PROMPTS)]
    right_args = [r and frag in c.tool_calls[0].arguments for r, c, (_, _, frag) in zip(right, done, PROMPTS)]
    glaive = []
    for line in (args.data_dir / GLAIVE).read_text().splitlines()[GLAIVE_HELD_OUT_FROM:]:
        row = json.loads(line)
        found = _first_call(row["messages"]) if row.get("tools") else None
        if found:
            glaive.append((found[0], row["tools"], found[1]))
    params = SamplingParams(temperature=0.0, max_new_tokens=160)
    done = client.chat_many([(messages, params, tools, "auto") for messages, tools, _ in glaive])
    g_tool = g_args = 0
    for c, (_, _, want) in zip(done, glaive):
        if c.tool_calls and c.tool_calls[0].name == want["name"]:
            g_tool += 1
            g_args += json.loads(c.tool_calls[0].arguments or "{}") == json.loads(want["arguments"] or "{}")
    return {"prompts": {"right_tool": sum(right), "right_args": sum(right_args), "n": len(PROMPTS)},
            "glaive": {"right_tool": g_tool, "right_args": g_args, "n": len(glaive)}}


PARTS = {"equations": part_equations, "probes": part_probes, "bootcamp": part_bootcamp, "gsm8k": part_gsm8k,
         "tool_choice": part_tool_choice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default="agent", help="the tuned adapter (name under $PUYU_HOME/adapters or a folder)")
    parser.add_argument("--no-base", action="store_true", help="skip the untuned model")
    parser.add_argument("--quant", default="auto", help="as puyu agent --quant: auto (w4a16 for the built-in model on a "
                        "CPU, the adapter unmerged beside it), none, w8a16, w4a16 or w8a8")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--gsm8k", type=int, default=500)
    parser.add_argument("--bootcamp-runs", type=int, default=10)
    parser.add_argument("--agents", type=int, default=16, help="agents run side by side (their turns share a batch)")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    print(describe_machine())
    configs = ([("base", None)] if not args.no_base else []) + ([("tuned", args.adapter)] if args.adapter else [])
    results = {}
    for label, adapter in configs:
        llm = LLM(args.model, adapter=adapter, quant=args.quant)
        print(f"[{label}] {args.model}: {llm.model.dtype}, quant {llm.quant}", flush=True)
        for part in args.parts.split(","):
            start = time.perf_counter()
            print(f"[{label}] {part} ...", file=sys.stderr, flush=True)
            results.setdefault(label, {})[part] = PARTS[part](llm, args) | {"wall_s": round(time.perf_counter() - start, 1)}
            print(f"[{label}] {part}: {json.dumps(results[label][part], ensure_ascii=False)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
