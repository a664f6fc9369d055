"""LLM-as-judge (FastChat ``llm_judge`` single-answer grading) through any OpenAI-compatible server.

A task with a ``judge:`` section (MT-Bench) has its answers rated 1–10 by a
judge model, one rating per turn.  Its records (see
:func:`puyu.eval.runner.answer_turns`) carry the row's ``question_id`` and
``category`` (FastChat's question format), ``turns`` and ``answers``.

- :class:`JudgeConfig` is the judge: ``--judge-model``, ``--judge-api-base``,
  ``--judge-api-key`` (else ``$OPENAI_API_KEY``) or ``judge:`` in a run config.
- :class:`JudgeTemplates` holds the judge prompts (``judge_prompts.jsonl``, by
  name) and the reference answers (FastChat answer files: ``choices[0].turns``)
  that the task's ``judge:`` section names.  :meth:`JudgeTemplates.messages`
  picks the template for a turn — ``templates.general[turn]``, or
  ``templates.reference[turn]`` for the ``reference_categories`` (math,
  reasoning, coding) — and fills it with Python ``str.format`` as FastChat does:
  ``question``/``answer`` (the judged turn), ``question_N``/``answer_N``/
  ``ref_answer_N`` (turn N, from 1).  The template's system prompt becomes the
  system message.
- :func:`extract_rating` reads the first ``[[N]]``, else FastChat's fallback
  ``[N]``; :data:`UNRATED` (-1) when neither appears.  Unrated turns are kept,
  excluded from the averages and counted (``judge_failed``).
- :func:`judge_pending` judges every turn of the records that has no judgment
  from this judge model yet, on a small thread pool with a progress bar, and
  appends each updated record to the predictions log, so an interrupted run
  (or one rerun with ``--reuse``) never asks for a finished judgment again.

Judge calls go through :class:`~puyu.client.OpenAIClient` and are deterministic
(``temperature=0``).  Transient failures (connection errors, timeouts,
408/409/429/5xx) are retried under :class:`~puyu.client.RetryPolicy` with
exponential backoff, at most ``max_retries`` times; if they persist, or the server
refuses the key or the model, the run stops with a :class:`ConfigError` (finished
work stays saved).  A request the judge rejects as invalid (400/422, e.g. longer than its
context) is recorded as FastChat's ``$ERROR$`` judgment, unrated.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from puyu.client import ClientError, OpenAIClient, RetryPolicy
from puyu.config_files import build
from puyu.errors import ConfigError, DatasetError
from puyu.eval.data import read_rows
from puyu.generation import SamplingParams

log = logging.getLogger(__name__)

UNRATED = -1.0
API_ERROR = "$ERROR$"
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
JUDGE_METRIC = re.compile(r"judge_score(?:_turn(\d+))?|judged|judge_failed")


def missing_judge(task: str) -> ConfigError:
    """The error for a judged task run without a judge."""
    return ConfigError(f"task {task} is rated by a judge model: pass --judge-model NAME --judge-api-base URL [--judge-api-key KEY] "
                       "(any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 of `puyu serve MODEL`), or "
                       "judge: {model: NAME, api_base: URL} in the run config")


def extract_rating(judgment: str) -> float:
    """The rating in a judgment: the first ``[[N]]``, else the first ``[N]``, else :data:`UNRATED`."""
    match = RATING.search(judgment) or RATING_FALLBACK.search(judgment)
    return float(match.group(1)) if match else UNRATED


def judge_metric(records: list[dict[str, Any]], metric: str) -> float | int:
    """A judge metric over records: ``judge_score`` (mean rating over all rated turns), ``judge_score_turnN``
    (turn N only), ``judged`` (rated turns) or ``judge_failed`` (unrated turns); NaN when no turn is rated."""
    turn = JUDGE_METRIC.fullmatch(metric).group(1)
    ratings = [j["rating"] for r in records for t, j in enumerate(r["judgments"], 1) if turn is None or t == int(turn)]
    rated = [x for x in ratings if x != UNRATED]
    if metric == "judged":
        return len(rated)
    if metric == "judge_failed":
        return len(ratings) - len(rated)
    return sum(rated) / len(rated) if rated else float("nan")


@dataclass
class JudgeConfig:
    """The judge model on an OpenAI-compatible server.

    Attributes:
        model: the judge's model name on the server, e.g. ``gpt-4`` (as FastChat) or a ``puyu serve`` model.
        api_base: the server, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        api_key: the bearer token (default: ``$OPENAI_API_KEY``, else ``EMPTY``).
        concurrency: judge requests in flight at once.
        max_tokens: cap on each judgment's length (FastChat: 2048).
        max_retries: retries of a transient failure, with exponential backoff.
        timeout_s: per-request timeout.
    """

    model: str = ""
    api_base: str = ""
    api_key: str | None = None
    concurrency: int = 4
    max_tokens: int = 2048
    max_retries: int = 6
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.model or not self.api_base:
            missing = " and ".join(f for f, v in (("--judge-model", self.model), ("--judge-api-base", self.api_base)) if not v)
            raise ConfigError(f"the judge lacks {missing}: give both the judge's model name and its OpenAI-compatible server URL "
                              "(e.g. --judge-model gpt-4 --judge-api-base https://api.openai.com/v1), "
                              "or judge: {model, api_base} in the config")
        if self.concurrency < 1 or self.max_tokens < 1 or self.max_retries < 0:
            raise ConfigError("judge concurrency and max_tokens must be at least 1, max_retries at least 0")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "JudgeConfig":
        """The judge of a run config's ``judge:`` mapping (unknown keys and wrong types are ConfigErrors)."""
        return build(cls, raw, "judge")


class JudgeClient:
    """Sends judge conversations to the server; one call per judgment (``http_client``: an ``httpx2.Client`` for tests)."""

    def __init__(self, config: JudgeConfig, http_client=None):
        self.config = config
        self.params = SamplingParams(max_new_tokens=config.max_tokens, temperature=0, top_p=1.0)
        self.client = OpenAIClient(config.api_base, config.api_key or os.environ.get("OPENAI_API_KEY"), config.model,
                                   retry=RetryPolicy(max_retries=config.max_retries), timeout_s=config.timeout_s,
                                   http_client=http_client)

    def judge(self, messages: list[dict[str, str]]) -> str:
        """The judge's reply to ``messages`` (greedy), or ``$ERROR$: reason`` when it rejects the request as invalid.

        Raises:
            ConfigError: the server stays unreachable or failing after the retries, or refuses the key or the model.
        """
        try:
            return self.client.chat(messages, self.params).text
        except ClientError as exc:
            if exc.status in (400, 422):
                return f"{API_ERROR}: {exc.detail}"
            raise ConfigError(f"judge {self.config.model} at {self.config.api_base} failed: {exc.detail}; check --judge-api-base, "
                              "--judge-model and --judge-api-key; finished answers and judgments are saved, rerun with --reuse") from None


class JudgeTemplates:
    """A task's judge prompts and reference answers (see the module docstring for the ``judge:`` keys)."""

    def __init__(self, spec_judge: dict[str, Any], root: Path, task: str):
        self.task = task
        self.templates: dict[str, list[str]] = spec_judge["templates"]
        self.reference_categories = set(spec_judge.get("reference_categories", []))
        self.prompts = {row["name"]: row for row in read_rows(root / spec_judge["prompts"], "jsonl")}
        missing = sorted({name for names in self.templates.values() for name in names} - set(self.prompts))
        if missing:
            raise DatasetError(f"task {task}: judge prompts {missing} are not in {root / spec_judge['prompts']}")
        self.references: dict[Any, list[str]] = {}
        if spec_judge.get("references"):
            for row in read_rows(root / spec_judge["references"], "jsonl"):
                try:
                    self.references[row["question_id"]] = row["choices"][0]["turns"]
                except (KeyError, IndexError, TypeError):
                    raise DatasetError(f"{row['_source']}: a reference answer needs question_id and choices[0].turns") from None

    def messages(self, record: dict[str, Any], turn: int) -> tuple[str, list[dict[str, str]]]:
        """The template name and judge messages for turn ``turn`` (from 0) of a record with ``turns`` and ``answers``."""
        kind = "reference" if record["category"] in self.reference_categories else "general"
        names = self.templates[kind]
        if turn >= len(names):
            raise DatasetError(f"task {self.task}: question {record['question_id']} has {len(record['turns'])} turns but the "
                               f"judge has {kind} templates for {len(names)}")
        fields = {"question": record["turns"][turn], "answer": record["answers"][turn]}
        for n, (question, answer) in enumerate(zip(record["turns"], record["answers"]), 1):
            fields.update({f"question_{n}": question, f"answer_{n}": answer})
        if kind == "reference":
            if record["question_id"] not in self.references:
                raise DatasetError(f"task {self.task}: no reference answer for question {record['question_id']} ({record['category']})")
            fields.update({f"ref_answer_{n}": ref for n, ref in enumerate(self.references[record["question_id"]], 1)})
        template = self.prompts[names[turn]]
        try:
            user = template["prompt_template"].format(**fields)
        except (KeyError, IndexError) as exc:
            raise DatasetError(f"task {self.task}: judge template {names[turn]} needs {exc} for question {record['question_id']}") from None
        return names[turn], [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user}]


def judge_pending(records: list[dict[str, Any]], templates: JudgeTemplates, client: JudgeClient, save: Callable[[dict], None],
                  desc: str) -> None:
    """Judge every turn of ``records`` without a judgment by ``client``'s model; ``save(record)`` after each one.

    Records are updated in place: ``judgments[turn]`` becomes ``{judge_model, template, system, prompt, judgment, rating}``.
    """
    model = client.config.model
    work = []
    for record in records:
        record["judgments"] += [None] * (len(record["turns"]) - len(record["judgments"]))
        for turn, done in enumerate(record["judgments"]):
            if not done or done.get("judge_model") != model:
                name, messages = templates.messages(record, turn)
                work.append((record, turn, name, messages))
    if not work:
        return
    bar = tqdm(total=len(work), desc=desc, unit="judgment")
    failed, rated = 0, []
    pool = ThreadPoolExecutor(client.config.concurrency)
    try:
        futures = {pool.submit(client.judge, messages): (record, turn, name, messages) for record, turn, name, messages in work}
        for future in as_completed(futures):
            record, turn, name, messages = futures[future]
            judgment = future.result()
            rating = extract_rating(judgment)
            record["judgments"][turn] = {"judge_model": model, "template": name, "system": messages[0]["content"],
                                         "prompt": messages[1]["content"], "judgment": judgment, "rating": rating}
            save(record)
            failed += rating == UNRATED
            rated += [rating] if rating != UNRATED else []
            bar.set_postfix(failed=failed, mean=f"{sum(rated) / len(rated):.2f}" if rated else "-")
            bar.update()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on an error or Ctrl-C, do not wait for the queued judgments
        bar.close()
