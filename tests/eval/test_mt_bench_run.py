"""MT-Bench end to end: the tiny model answers, a real `puyu serve` subprocess (another tiny model) judges.

A random judge writes no ratings, so the test checks the bookkeeping: every turn judged once, unrated turns
counted, all categories summarized, and resumed runs asking neither the model nor the judge again.
"""

from __future__ import annotations

import json
import math
import re

import httpx
import pytest

from puyu.errors import ConfigError
from puyu.eval.backends.local import LocalBackend
from puyu.eval.judge import UNRATED, extract_rating
from puyu.eval.pipeline import EvalConfig, run_eval
from tests.conftest import DATASETS, make_hf_model
from tests.eval.test_backends_and_runs import Interrupting
from tests.serve.conftest import API_KEY, free_port, start_server, stop_server

QUESTIONS, CHUNK = 32, 16  # a seeded sample of 32 of the 80 questions covers all 8 categories
CATEGORIES = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


class Recording(Interrupting):
    """Counts backend calls (see :class:`Interrupting`) and keeps the generation requests."""

    def __init__(self, inner):
        super().__init__(inner)
        self.requests: list = []

    def generate_until(self, requests):
        self.requests += requests
        return super().generate_until(requests)


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("judge") / "tiny-judge"
    make_hf_model(folder, tiny_tokenizer_dir, seed=1, max_position_embeddings=4096)  # the longest judge prompt: ~3.7k tiny tokens
    server = start_server(folder, log=folder.parent / "server.log")
    yield server
    stop_server(server)


def finished_requests(server) -> int:
    """The judge server's count of finished requests, from its Prometheus /metrics."""
    text = httpx.get(f"{server.base}/metrics", timeout=30).text
    return int(float(re.search(r"^puyu_requests_total (\S+)$", text, re.MULTILINE).group(1)))


def _config(out, judge_url: str) -> EvalConfig:
    return EvalConfig(models=[{"name": "tiny", "model": "unused"}], tasks=["mt_bench"], limit=QUESTIONS, max_new_tokens=8,
                      data_dir=str(DATASETS), out=str(out), chunk_size=CHUNK,
                      judge={"model": "tiny", "api_base": judge_url, "api_key": API_KEY, "max_tokens": 8, "max_retries": 0})


def _current_records(run) -> list[dict]:
    latest = {}
    for line in (run / "predictions/tiny/mt_bench.jsonl").read_text().splitlines():
        record = json.loads(line)
        latest[record["id"]] = record
    return list(latest.values())


def test_judged_run_counts_failures_and_resumes_without_new_requests(tiny_llm, judge_server, tmp_path):
    tmp_path = tmp_path / "eval"  # its own folder: tiny_llm's model folder sits in the test's tmp_path too
    local = LocalBackend(tiny_llm, batch_size=16)
    answering = Recording(local)
    with pytest.raises(ConfigError, match="judge tiny at .* failed"):  # nothing listens there: answers are saved, judging stops
        run_eval(_config(tmp_path, f"http://127.0.0.1:{free_port()}/v1"), backends={"tiny": answering})
    assert answering.calls == 2 * QUESTIONS // CHUNK  # one generate_until per turn and chunk
    (first_run,) = tmp_path.iterdir()
    first = _current_records(first_run)[0]
    second_turn = [r for r in answering.requests if r[0][0]["content"] == first["turns"][0] and len(r[0]) == 3][0]
    assert second_turn[0] == [{"role": "user", "content": first["turns"][0]}, {"role": "assistant", "content": first["answers"][0]},
                              {"role": "user", "content": first["turns"][1]}]  # turn 2 sees turn 1's answer

    before = finished_requests(judge_server)
    resumed = Recording(local)
    run = run_eval(_config(tmp_path, judge_server.url), reuse="latest", backends={"tiny": resumed})
    assert resumed.calls == 0  # no answer regenerated
    assert finished_requests(judge_server) - before == 2 * QUESTIONS  # one judgment per turn

    records = _current_records(run)
    assert len(records) == QUESTIONS
    for record in records:
        assert len(record["answers"]) == 2 and len(record["judgments"]) == 2
        reference = record["category"] in ("math", "reasoning", "coding")
        assert [j["template"] for j in record["judgments"]] == (["single-math-v1", "single-math-v1-multi-turn"] if reference
                                                               else ["single-v1", "single-v1-multi-turn"])
        for turn, judgment in enumerate(record["judgments"]):
            assert judgment["judge_model"] == "tiny" and judgment["rating"] == extract_rating(judgment["judgment"])
            assert f"\n{record['answers'][turn]}\n" in judgment["prompt"]
    rated = sum(j["rating"] != UNRATED for r in records for j in r["judgments"])

    result = json.loads((run / "results/tiny/mt_bench.json").read_text())
    metrics = result["metrics"]
    assert result["judge"] == "tiny" and result["n"] == QUESTIONS
    assert (metrics["judged"], metrics["judge_failed"]) == (rated, 2 * QUESTIONS - rated)
    assert math.isnan(metrics["judge_score"]) == (rated == 0)
    assert set(result["groups"]) == CATEGORIES and sum(g["n"] for g in result["groups"].values()) == QUESTIONS
    summary = (run / "summary.csv").read_text()
    assert f"mt_bench,judge_failed,gen,0,{2 * QUESTIONS - rated}\n" in summary
    assert all(f"mt_bench/{c},judge_score,gen,0," in summary for c in CATEGORIES)
    assert "***" in (run / "config.yaml").read_text() and API_KEY not in (run / "config.yaml").read_text()

    before = finished_requests(judge_server)
    again = Recording(local)
    rerun = run_eval(_config(tmp_path, judge_server.url), reuse="latest", backends={"tiny": again})
    assert again.calls == 0 and finished_requests(judge_server) == before  # nothing asked twice
    assert (rerun / "summary.csv").read_text() == summary
