"""Run tasks on a backend, example by example, resumably; score and write OpenCompass-style outputs.

For each task, examples are processed in fixed chunks (by position, so a
resumed run batches exactly as an uninterrupted one).  After each chunk its
records are appended to ``predictions/<model>/<task>.jsonl`` — prompt,
prediction, extracted answer, gold, correct, metrics — so an interrupted run
loses at most one chunk; with ``reuse`` the finished examples are read back
instead of recomputed.  Then ``results/<model>/<task>.json`` gets the task
metrics and group averages (subset categories such as MMLU's STEM, and named
groups such as C-Eval's hard).  A progress bar per task shows examples/s.

A ``multi_turn`` task answers each row's user turns in one chat; with a
``judge:`` section its records are then rated turn by turn by the judge model
(:mod:`puyu.eval.judge`), each judgment appended to the same predictions log,
so a resumed run neither regenerates finished answers nor re-asks finished
judgments (the last line of an id is its current record).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from puyu.eval.backends.base import Backend
from puyu.eval.judge import JudgeClient, JudgeConfig, JudgeTemplates, judge_pending, missing_judge
from puyu.eval.metrics import INVALID, aggregate, answers_match, choice_metrics, extract, rolling_counts
from puyu.eval.prompts import Prepared, prepare, render, uses_own_rows
from puyu.eval.tasks import Example, TaskSpec, fewshot_pool, load_examples

log = logging.getLogger(__name__)


@dataclass
class RunSettings:
    """Where data and outputs live and how much to run.

    Attributes:
        data_dir: the benchmark data folder.
        run_dir: this run's output folder (``OUT/<timestamp>``).
        limit: examples per task (a seeded sample), all when ``None``.
        chunk_size: examples per scoring chunk (the resume granularity).
        code_timeout_s: wall-clock limit per HumanEval/MBPP program.
        judge: the judge model for tasks with a ``judge:`` section (MT-Bench).
    """

    data_dir: Path
    run_dir: Path
    limit: int | None = None
    chunk_size: int = 32
    code_timeout_s: float = 10.0
    judge: JudgeConfig | None = None


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/")) or "model"


def _read_done(path: Path) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the interruption: recompute that example
                continue
            done[record["id"]] = record
    return done


def append_record(out, record: dict[str, Any]) -> None:
    """Append one record to the predictions log and flush it, so a crash loses nothing written before."""
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def run_task(backend: Backend, spec: TaskSpec, settings: RunSettings, model_name: str, reuse: bool = False) -> dict[str, Any]:
    """Score ``spec`` on ``backend``; returns (and writes) the task's results."""
    examples = load_examples(spec, settings.data_dir, settings.limit)
    predictions = settings.run_dir / "predictions" / safe_name(model_name) / f"{spec.name}.jsonl"
    predictions.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(predictions) if reuse else {}
    if not reuse:
        predictions.write_text("")
    pools: dict[str, list | str] = {}
    all_rows = None
    bar = tqdm(total=len(examples), desc=f"{safe_name(model_name)}/{spec.name}", unit="ex", initial=sum(e.id in done for e in examples))
    start = time.perf_counter()
    with predictions.open("a", encoding="utf-8") as out:
        for first in range(0, len(examples), settings.chunk_size):
            chunk = [e for e in examples[first:first + settings.chunk_size] if e.id not in done]
            if not chunk:
                continue
            prepared = []
            for example in chunk:
                if example.subset not in pools:
                    pools[example.subset] = fewshot_pool(spec, settings.data_dir, example.subset)
                pool = pools[example.subset]
                if spec.shots and uses_own_rows(spec):
                    all_rows = all_rows or [e.doc for e in load_examples(spec, settings.data_dir)]
                    pool = [r for r in all_rows if r.get("subset") == example.subset]
                prepared.append(prepare(spec, example, pool, backend.render_chat))
            for record in score_chunk(backend, spec, prepared, settings):
                append_record(out, record)
                done[record["id"]] = record
            bar.update(len(chunk))
        bar.close()
        records = [done[e.id] for e in examples]
        if spec.judge:
            judge_records(spec, records, settings, out, f"{safe_name(model_name)}/{spec.name} judge")
    results = summarize_task(spec, records, examples)
    results.update(model=model_name, seconds=round(time.perf_counter() - start, 2))
    if spec.judge:
        results["judge"] = settings.judge.model
    target = settings.run_dir / "results" / safe_name(model_name) / f"{spec.name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def judge_records(spec: TaskSpec, records: list[dict], settings: RunSettings, out, desc: str) -> None:
    """Rate the records' unjudged turns with the run's judge, appending each updated record to ``out``."""
    if settings.judge is None:
        raise missing_judge(spec.name)
    judge_pending(records, JudgeTemplates(spec.judge, settings.data_dir, spec.name), JudgeClient(settings.judge),
                  lambda record: append_record(out, record), desc)


def answer_turns(backend: Backend, spec: TaskSpec, prepared: list[Prepared]) -> list[dict[str, Any]]:
    """Answer each example's user turns in one chat: turn k's request holds the earlier turns and their answers.

    Turn k of every example in the chunk goes to the backend in one ``generate_until`` call (chat messages,
    so the model's chat template applies; greedy).
    """
    answers: list[list[str]] = [[] for _ in prepared]
    for turn in range(max(len(p.requests) for p in prepared)):
        active = [i for i, p in enumerate(prepared) if turn < len(p.requests)]
        requests = []
        for i in active:
            messages = []
            for question, answer in zip(prepared[i].requests, answers[i]):
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": prepared[i].requests[turn]})
            requests.append((messages, spec.until, spec.max_new_tokens))
        for i, text in zip(active, backend.generate_until(requests)):
            answers[i].append(text.strip())
    return [{"id": p.example.id, "subset": p.example.subset, "prompt": p.prompt, "question_id": p.example.doc.get("question_id"),
             "category": p.example.doc.get("category"), "turns": p.requests, "answers": a, "judgments": [], "metrics": {}}
            for p, a in zip(prepared, answers)]


def score_chunk(backend: Backend, spec: TaskSpec, prepared: list[Prepared], settings: RunSettings) -> list[dict[str, Any]]:
    """Send a chunk's requests in one call per kind and turn the outputs into records."""
    kind = prepared[0].kind
    if kind == "multi_turn":
        return answer_turns(backend, spec, prepared)
    flat = [r for p in prepared for r in p.requests]
    if kind == "loglikelihood":
        outputs = backend.loglikelihood(flat)
    elif kind == "rolling":
        outputs = backend.loglikelihood_rolling(flat)
    else:
        outputs = backend.generate_until(flat)
    records, i = [], 0
    for p in prepared:
        mine, i = outputs[i:i + len(p.requests)], i + len(p.requests)
        records.append(_record(spec, p, mine, settings))
    return records


def _record(spec: TaskSpec, p: Prepared, outputs: list, settings: RunSettings) -> dict[str, Any]:
    record: dict[str, Any] = {"id": p.example.id, "subset": p.example.subset, "prompt": p.prompt, "gold": p.gold}
    if p.kind == "rolling":
        record.update(loglikelihood=outputs[0], **rolling_counts(p.requests[0]))
        record["metrics"] = {}
        return record
    if spec.output == "loglikelihood":
        (ll, greedy), = outputs
        record.update(loglikelihood=ll, prediction=greedy, correct=greedy, metrics={"acc": float(greedy)})
        return record
    if p.kind == "loglikelihood":
        lls = [ll for ll, _ in outputs]
        labels = p.example.doc.get("mc2_labels") if "mc2" in spec.metrics else None
        metrics = choice_metrics(lls, p.choices, p.gold, labels)
        pred = metrics.pop("pred")
        record.update(choices=p.choices, loglikelihoods=lls, prediction=p.choices[pred], extracted=pred,
                      correct=bool(metrics["acc"]), metrics=metrics)
        return record
    text = outputs[0]
    record["prediction"] = text
    if spec.program:
        program = render(spec.program, dict(p.example.doc, completion=text), spec.name)
        outcome = run_program(program, settings.code_timeout_s)
        record.update(program=program, extracted=outcome or "passed", correct=outcome is None)
        record["metrics"] = {"pass@1": float(outcome is None)}
        return record
    answer = extract(text, spec.extract)
    correct = answer != INVALID and answers_match(answer, str(p.gold), spec.extract)
    record.update(extracted=answer, correct=correct, metrics={"exact_match": float(correct)})
    return record


def run_program(program: str, timeout_s: float) -> str | None:
    """Run a HumanEval/MBPP program in a fresh sandbox session; ``None`` when it passes, else the error."""
    from puyu.sandbox import PythonSandbox

    with PythonSandbox(timeout_s=timeout_s, cpu_s=timeout_s, memory_mb=1024) as sandbox:
        return sandbox.run(program).error


def summarize_task(spec: TaskSpec, records: list[dict], examples: list[Example]) -> dict[str, Any]:
    """Task metrics over all records, plus the main metric per group (category or named group)."""
    results: dict[str, Any] = {"task": spec.name, "mode": spec.mode, "shots": spec.shots, "n": len(records),
                               "main_metric": spec.main_metric, "metrics": {m: aggregate(records, m) for m in spec.metrics}}
    groups: dict[str, list[dict]] = {}
    for record, example in zip(records, examples):
        if spec.group_by:  # a field of the subset info (MMLU's category), else of the row itself (MT-Bench's category)
            group = example.doc.get("info", {}).get(spec.group_by, example.doc.get(spec.group_by, "other"))
            groups.setdefault(str(group), []).append(record)
        for name, members in spec.groups.items():
            if example.subset in members:
                groups.setdefault(name, []).append(record)
    results["groups"] = {name: {"n": len(rs), spec.main_metric: aggregate(rs, spec.main_metric)} for name, rs in sorted(groups.items())}
    return results
