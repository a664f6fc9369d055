"""One evaluation run: several models × several tasks, from flags or a YAML config.

:class:`EvalConfig` is what a config file holds (examples: the repository's ``configs/eval/*.yaml``)::

    models:                      # each: backend (local | openai | hf) and its options
      - {name: smollm2, backend: local, model: smollm2-135m-instruct, dtype: float32}
    tasks: [arc_easy, hellaswag, gsm8k]
    mode: null                   # ppl | gen for tasks that have both (default: each task's own)
    shots: null                  # default: each task's own
    max_new_tokens: null         # cap on generated tokens (default: each task's own)
    limit: 100
    out: null                    # default: $PUYU_HOME/runs/eval
    judge: null                  # for judged tasks (mt_bench): {model, api_base, api_key, concurrency, max_tokens}

:func:`run_eval` makes ``OUT/<timestamp>/`` with ``config.yaml`` (API keys
masked), ``predictions/``, ``results/``, ``summary.md`` and ``summary.csv``; with
``reuse`` it continues an existing run folder (``latest`` = the newest).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from puyu.config_files import build, read_yaml
from puyu.errors import ConfigError
from puyu.eval.judge import JudgeConfig, missing_judge
from puyu.eval.runner import RunSettings, run_task
from puyu.eval.summary import write_summary
from puyu.eval.tasks import load_task
from puyu.home import data_dir, home_subdir

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """A run: models × tasks and the shared settings (see the module docstring)."""

    models: list[dict[str, Any]]
    tasks: list[str]
    mode: str | None = None
    shots: int | None = None
    limit: int | None = None
    chat: bool | None = None
    max_new_tokens: int | None = None
    data_dir: str | None = None
    out: str | None = None
    chunk_size: int = 32
    judge: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("an eval config needs at least one model (--model or models: in the YAML)")
        if not self.tasks:
            raise ConfigError("an eval config needs at least one task (--tasks a,b or tasks: in the YAML); see puyu eval --list")
        if self.mode not in (None, "ppl", "gen"):
            raise ConfigError(f"--mode must be ppl or gen, got {self.mode!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        for i, entry in enumerate(self.models):
            if not isinstance(entry, dict) or "model" not in entry:
                raise ConfigError(f"models[{i}] needs a 'model' key (a name, folder or .gguf; the served name for backend openai)")
        judged = [name for name in self.tasks if self.task(name).judge]
        if judged and not self.judge:
            raise missing_judge(judged[0])
        self.judge_config()

    def judge_config(self) -> JudgeConfig | None:
        """The judge for judged tasks (validated), or ``None`` when the config names none."""
        if self.judge is None:
            return None
        if not isinstance(self.judge, dict):
            raise ConfigError(f"judge: expected a mapping {{model, api_base, ...}}, got {self.judge!r}")
        return JudgeConfig.from_dict(self.judge)

    def public_dict(self) -> dict[str, Any]:
        """The config as saved in the run folder: API keys masked."""
        raw = dataclasses.asdict(self)
        for entry in raw["models"] + [raw["judge"] or {}]:
            if entry.get("api_key"):
                entry["api_key"] = "***"
        return raw

    def task(self, name: str):
        """Task ``name`` with this run's overrides (``mode`` applies to tasks that have it)."""
        mode = self.mode if self.mode in load_task(name).modes else None
        return load_task(name, mode, self.shots, self.chat, self.max_new_tokens)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "EvalConfig":
        """A run config file (see the module docstring); unknown keys and wrong types are named."""
        return build(cls, read_yaml(path, "eval config"), str(path))


def run_dir_for(config: EvalConfig, reuse: str | None) -> Path:
    """The run folder: a new ``OUT/<timestamp>``, or the one ``reuse`` names (``latest``, a name or a path)."""
    out = Path(config.out).expanduser() if config.out else home_subdir("runs") / "eval"
    if reuse:
        candidate = Path(reuse).expanduser()
        if reuse == "latest":
            runs = sorted(p for p in out.glob("*") if (p / "config.yaml").is_file())
            if not runs:
                raise ConfigError(f"--reuse latest: no earlier run in {out}")
            return runs[-1]
        for path in (candidate, out / reuse):
            if (path / "config.yaml").is_file():
                return path
        raise ConfigError(f"--reuse {reuse}: no run folder with a config.yaml there or in {out}")
    stamp = time.strftime("%Y%m%d_%H%M%S")
    path, n = out / stamp, 1
    while path.exists():
        path, n = out / f"{stamp}_{n}", n + 1
    return path


def run_eval(config: EvalConfig, reuse: str | None = None, backends: dict[str, Any] | None = None) -> Path:
    """Run every model on every task; returns the run folder (its summary.md has the table).

    Args:
        reuse: continue this run folder (``latest``, a name under ``out`` or a path) without redoing finished examples.
        backends: already built backends by model name (tests and benchmarks), else built from the entries.
    """
    from puyu.eval.backends import make_backend

    root = data_dir(config.data_dir)
    run_dir = run_dir_for(config, reuse)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not reuse:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.public_dict(), sort_keys=False, allow_unicode=True))
    settings = RunSettings(data_dir=root, run_dir=run_dir, limit=config.limit, chunk_size=config.chunk_size, judge=config.judge_config())
    for entry in config.models:
        name = entry.get("name") or Path(str(entry["model"])).name
        backend = (backends or {}).get(name) or make_backend(entry)
        for task in config.tasks:
            spec = config.task(task)
            result = run_task(backend, spec, settings, name, reuse=bool(reuse))
            log.info("%s %s: %s = %.4f", name, task, spec.main_metric, result["metrics"][spec.main_metric])
    write_summary(run_dir)
    return run_dir
