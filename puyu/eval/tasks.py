"""Tasks as data: YAML files under ``puyu/eval/tasks/`` become :class:`TaskSpec` objects.

A task file names its data (files relative to the data dir, format, optional
subsets from file names with a mapping file of subset info), its prompt
(Jinja ``text``/``target``/``description`` templates; ``choices``/``gold``/
``answer``/``turns`` Jinja expressions over a row's fields), few-shot source,
output type (``multiple_choice``, ``loglikelihood``, ``rolling``, ``generate``,
``multi_turn``: one chat whose user ``turns`` are answered in order), answer
extraction, an LLM ``judge:`` (see :mod:`puyu.eval.judge`) and metrics;
``group_by`` names a field of the subset info or of the row to average by.
``modes:`` holds alternatives (``ppl``, ``gen``) that override the top-level
keys; ``default_mode`` picks one.
A row hook (``process:``) names a function in :mod:`puyu.eval.hooks` for what
templates cannot say.  :func:`load_examples` reads and validates the rows,
:func:`fewshot_pool` the few-shot rows of a subset.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from puyu.errors import ConfigError, DatasetError
from puyu.eval.data import read_rows, require_fields
from puyu.eval.expressions import evaluate_expression

TASK_DIR = Path(__file__).with_name("tasks")
OUTPUTS = ("multiple_choice", "loglikelihood", "rolling", "generate", "multi_turn")
FEWSHOT_SEED = 1234


@dataclass
class TaskSpec:
    """One benchmark in one mode (see the module docstring for the fields' meaning)."""

    name: str
    output: str
    data: dict[str, Any]
    mode: str = "ppl"
    modes: list[str] = field(default_factory=list)
    description: str = ""
    text: str = ""
    target: str | None = None
    choices: str | None = None
    gold: str | None = None
    answer: str | None = None
    turns: str | None = None
    choices_are_contexts: bool = False
    fewshot: dict[str, Any] = field(default_factory=dict)
    shots: int = 0
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    until: list[str] = field(default_factory=list)
    max_new_tokens: int = 256
    extract: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    metrics: list[str] = field(default_factory=list)
    process: str | None = None
    required: list[str] = field(default_factory=list)
    group_by: str | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)
    chat: bool = False
    program: str | None = None
    judge: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


@dataclass
class Example:
    """One row to score: ``id`` is stable across runs (``subset/index``), ``doc`` the row's fields."""

    id: str
    subset: str
    doc: dict[str, Any]


def list_tasks() -> dict[str, str]:
    """Task name -> one-line summary, for ``puyu eval --list``."""
    return {p.stem: _raw(p.stem).get("summary", "") for p in sorted(TASK_DIR.glob("*.yaml"))}


@lru_cache(maxsize=None)
def _raw(name: str) -> dict[str, Any]:
    path = TASK_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(TASK_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown task {name!r}; known tasks: {known} (puyu eval --list)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"task file {path} is not valid YAML: {exc}") from None
    return raw


def load_task(name: str, mode: str | None = None, shots: int | None = None, chat: bool | None = None,
              max_new_tokens: int | None = None) -> TaskSpec:
    """The task ``name`` in ``mode`` (default: its ``default_mode``), with optional shots/chat/answer-length overrides.

    Raises:
        ConfigError: unknown task or mode, or a task file with unknown keys.
    """
    raw = dict(_raw(name))
    modes = raw.pop("modes", {}) or {}
    default = raw.pop("default_mode", next(iter(modes), "gen" if raw.get("output") in ("generate", "multi_turn") else "ppl"))
    chosen = mode or default
    if modes and chosen not in modes:
        raise ConfigError(f"task {name} has no mode {chosen!r}; its modes: {', '.join(modes)}")
    if not modes and mode and mode != default:
        raise ConfigError(f"task {name} has no mode {mode!r}; its only mode is {default}")
    raw.update(modes.get(chosen, {}))
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"task file {name}.yaml has unknown keys {unknown}; known: {sorted(known)}")
    spec = TaskSpec(name=name, mode=chosen, modes=list(modes) or [default], **{k: v for k, v in raw.items() if k != "name"})
    if spec.output not in OUTPUTS:
        raise ConfigError(f"task {name}: output {spec.output!r} is not one of {', '.join(OUTPUTS)}")
    if shots is not None:
        if shots < 0:
            raise ConfigError(f"--shots must be >= 0, got {shots}")
        spec.shots = shots
    if chat is not None:
        spec.chat = chat
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        spec.max_new_tokens = max_new_tokens
    return spec


def _subset_info(spec: TaskSpec, root: Path) -> dict[str, dict[str, Any]]:
    mapping = spec.data.get("subset_info")
    if not mapping:
        return {}
    path = root / mapping
    if not path.is_file():
        raise DatasetError(f"task {spec.name}: subset mapping {path} is missing; check --data-dir")
    return json.loads(path.read_text(encoding="utf-8"))


def _files(spec: TaskSpec, root: Path, pattern: str) -> list[Path]:
    files = sorted(root.glob(pattern))
    if not files:
        raise DatasetError(f"task {spec.name}: no data files match {root / pattern}; check --data-dir (it should hold eval/...)")
    return files


def load_examples(spec: TaskSpec, root: Path, limit: int | None = None, seed: int = FEWSHOT_SEED) -> list[Example]:
    """The task's rows as :class:`Example` objects, processed, filtered and validated.

    ``limit`` keeps a seeded random sample of that many rows (in file order), so
    a small run covers all subsets and is the same on every run.

    Raises:
        DatasetError: missing files, unparsable rows, rows without the required fields.
    """
    from puyu.eval import hooks

    info = _subset_info(spec, root)
    pattern = spec.data.get("subset_pattern")
    examples = []
    for path in _files(spec, root, spec.data["files"]):
        subset = ""
        if pattern:
            match = re.search(pattern, path.name)
            if not match:
                continue
            subset = match.group(1)
        rows = read_rows(path, spec.data.get("format", "jsonl"), spec.data.get("columns"), spec.data.get("json_key"))
        for i, row in enumerate(rows):
            row.update(subset=subset, info=info.get(subset, {}))
            if spec.process:
                row = hooks.apply(spec.process, row, spec.name)
            if spec.data.get("filter") and not evaluate_expression(spec.data["filter"], row, spec.name):
                continue
            require_fields(row, spec.required, spec.name)
            examples.append(Example(f"{subset}/{i}" if subset else str(i), subset, row))
    if limit is not None and limit < len(examples):
        keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
        examples = [examples[i] for i in keep]
    return examples


def fewshot_pool(spec: TaskSpec, root: Path, subset: str) -> list[dict[str, Any]] | str:
    """Few-shot rows for ``subset`` (a list), or a fixed few-shot text (``prompt_file``), or ``[]``.

    Without ``files`` or ``prompt_file`` the shots come from the task's own rows
    (the caller passes them; the row being scored is left out).
    """
    source = spec.fewshot or {}
    if "prompt_file" in source:
        text = (root / source["prompt_file"].format(subset=subset)).read_text(encoding="utf-8")
        marker = source.get("strip_before")
        return text.split(marker, 1)[1].strip() if marker and marker in text else text.strip()
    if "files" not in source:
        return []
    rows = []
    for path in _files(spec, root, source["files"].format(subset=subset)):
        rows += read_rows(path, source.get("format", spec.data.get("format", "jsonl")), source.get("columns", spec.data.get("columns")))
    from puyu.eval import hooks

    out = []
    for row in rows:
        row.update(subset=subset, info={})
        row = hooks.apply(spec.process, row, spec.name) if spec.process else row
        if not source.get("filter") or evaluate_expression(source["filter"], row, spec.name):
            out.append(row)
    return out


def choose_shots(pool: list[dict[str, Any]], k: int, sampler: str, key: str, exclude: dict | None = None) -> list[dict[str, Any]]:
    """``k`` shots from ``pool``: the first ``k`` (``sampler: first``) or a sample seeded by ``key``."""
    candidates = [r for r in pool if r is not exclude and r.get("_source") != (exclude or {}).get("_source")]
    if sampler == "first":
        return candidates[:k]
    return random.Random(f"{FEWSHOT_SEED}:{key}").sample(candidates, min(k, len(candidates)))
