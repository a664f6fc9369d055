"""Run summaries as OpenCompass prints them, and side-by-side comparison of two runs.

:func:`write_summary` reads ``results/<model>/<task>.json`` of a run folder and
writes ``summary.csv`` and ``summary.md``: one row per task metric and per
group average (``mmlu/STEM``, ``ceval/hard``), one column per model, rates in
percent with two decimals.  :func:`compare_runs` puts two runs' summaries side
by side with the difference.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from puyu.errors import ConfigError
from puyu.eval.metrics import is_percentage

HEADER = ["dataset", "metric", "mode", "shots"]


def _fmt(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):  # a count, e.g. MT-Bench's judged / judge_failed turns
        return str(value)
    return f"{value * 100:.2f}" if is_percentage(metric) else f"{value:.4f}"


def summary_rows(run_dir: Path) -> tuple[list[str], list[list[str]]]:
    """Model names and table rows (``HEADER`` + one value per model) of a run folder."""
    results_dir = run_dir / "results"
    if not results_dir.is_dir():
        raise ConfigError(f"{run_dir} is not an eval run folder (no results/); give a folder written by puyu eval")
    models = sorted(p.name for p in results_dir.iterdir() if p.is_dir())
    table: dict[tuple, dict[str, str]] = {}
    for model in models:
        for path in sorted((results_dir / model).glob("*.json")):
            result = json.loads(path.read_text(encoding="utf-8"))
            key = (result["task"], result["mode"], str(result["shots"]))
            for metric, value in result["metrics"].items():
                table.setdefault((key[0], metric) + key[1:], {})[model] = _fmt(value, metric)
            main = result["main_metric"]
            for group, values in result["groups"].items():
                table.setdefault((f"{key[0]}/{group}", main) + key[1:], {})[model] = _fmt(values[main], main)
    rows = [list(key) + [cells.get(m, "-") for m in models] for key, cells in sorted(table.items())]
    return models, rows


def write_summary(run_dir: Path) -> str:
    """Write ``summary.csv`` and ``summary.md`` into ``run_dir``; return the Markdown table."""
    models, rows = summary_rows(run_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER + models)
    writer.writerows(rows)
    (run_dir / "summary.csv").write_text(buffer.getvalue(), encoding="utf-8")
    markdown = markdown_table(HEADER + models, rows)
    (run_dir / "summary.md").write_text(markdown, encoding="utf-8")
    return markdown


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def compare_runs(run_a: Path, run_b: Path) -> str:
    """A Markdown table of two runs' summaries side by side, with B - A per model present in both."""
    for run in (run_a, run_b):
        if not run.is_dir():
            raise ConfigError(f"no such run folder: {run}")
    models_a, rows_a = summary_rows(run_a)
    models_b, rows_b = summary_rows(run_b)
    index_b = {tuple(r[:4]): dict(zip(models_b, r[4:])) for r in rows_b}
    index_a = {tuple(r[:4]): dict(zip(models_a, r[4:])) for r in rows_a}
    models = sorted(set(models_a) | set(models_b))
    header = HEADER + [f"{m} ({label})" for m in models for label in ("A", "B", "B-A")]
    rows = []
    for key in sorted(set(index_a) | set(index_b)):
        row = list(key)
        for m in models:
            a, b = index_a.get(key, {}).get(m, "-"), index_b.get(key, {}).get(m, "-")
            try:
                delta = f"{float(b) - float(a):+.2f}"
            except ValueError:
                delta = "-"
            row += [a, b, delta]
        rows.append(row)
    return markdown_table(header, rows)
