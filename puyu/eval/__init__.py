"""Evaluation like OpenCompass / lm-evaluation-harness: tasks as YAML, three-method backends, resumable runs.

>>> from puyu.eval import EvalConfig, run_eval
>>> run = run_eval(EvalConfig(models=[{"model": "smollm2-135m-instruct"}], tasks=["arc_easy"], limit=50))
>>> print((run / "summary.md").read_text())
"""

from puyu.eval.pipeline import EvalConfig, run_eval
from puyu.eval.summary import compare_runs, write_summary
from puyu.eval.tasks import list_tasks, load_task

__all__ = ["EvalConfig", "compare_runs", "list_tasks", "load_task", "run_eval", "write_summary"]
