"""Backends against the transformers reference, resumable runs, summaries and CLI errors (tiny random model)."""

from __future__ import annotations

import pytest
import torch

from puyu.errors import ConfigError
from puyu.eval.backends.base import Backend
from puyu.eval.backends.local import HFBackend, LocalBackend
from puyu.eval.pipeline import EvalConfig, run_eval
from puyu.eval.summary import compare_runs
from tests.conftest import DATASETS

REQUESTS = [("The capital of France is", " Paris"), ("Hello world! ", "How are you today?"), ("", "1234567890 numbers"),
            ("def add(a, b):\n", "    return a + b"), ("你好，世界！", "今天天气很好。")]


@pytest.fixture
def local(tiny_llm):
    return LocalBackend(tiny_llm, batch_size=3)


def test_loglikelihood_matches_transformers(local, tiny_model_dir):
    reference = HFBackend(str(tiny_model_dir), dtype="float32", batch_size=2)
    ours, theirs = local.loglikelihood(REQUESTS), reference.loglikelihood(REQUESTS)
    assert [g for _, g in ours] == [g for _, g in theirs]
    assert [s for s, _ in ours] == pytest.approx([s for s, _ in theirs], abs=1e-4)
    text = "The quick brown fox jumps over the lazy dog. " * 40  # longer than the 256-token window
    assert len(local.rolling_windows(text)) > 1
    assert local.loglikelihood_rolling([text, "short"]) == pytest.approx(reference.loglikelihood_rolling([text, "short"]), abs=1e-3)
    prompts = [("Hello world!", ["\n"], 12), ("def add(a, b):", ["return"], 10)]
    assert local.generate_until(prompts) == reference.generate_until(prompts)


def test_batching_does_not_change_scores(tiny_llm):
    one = LocalBackend(tiny_llm, batch_size=1).loglikelihood(REQUESTS)
    many = LocalBackend(tiny_llm, batch_size=8).loglikelihood(REQUESTS)
    assert [s for s, _ in one] == pytest.approx([s for s, _ in many], abs=1e-4)


def test_kv_quant_scores_read_the_quantized_cache_back(tiny_llm):
    """Scoring with kv_quant goes through the engine: int8 stays close to the float scores, int4 moves further, and
    every continuation past the first prefill chunk is scored over keys read back from the quantized cache."""
    text = "The quick brown fox jumps over the lazy dog. " * 12  # several 32-token prefill chunks
    requests = REQUESTS + [(text, " And then it slept.")]
    float_scores = [s for s, _ in LocalBackend(tiny_llm).loglikelihood(requests)]
    errors = {}
    for kv in ("int8", "int4"):
        backend = LocalBackend(tiny_llm, kv_quant=kv)
        scores = backend.loglikelihood(requests)
        engine = backend.engine("score")
        assert engine.cache.kv_quant == kv and engine.blocks.num_free == engine.blocks.num_blocks
        errors[kv] = max(abs(s - f) for (s, _), f in zip(scores, float_scores))
    assert 0 < errors["int8"] < 0.05 and errors["int8"] < errors["int4"]


def test_continuation_logits_are_the_model_logits_at_each_span(local):
    tokens = torch.randint(0, 400, (3, 10))
    spans = [(2, 5), (0, 10), (9, 10)]
    full = local.llm.model(tokens)
    got = local.continuation_logits(tokens, spans)
    assert [g.shape[0] for g in got] == [3, 10, 1]
    assert all(torch.allclose(g, full[row, start:end], atol=1e-5) for row, (g, (start, end)) in enumerate(zip(got, spans)))


def test_lm_eval_tokenization_moves_trailing_spaces(local):
    context, continuation = local.encode_pair("Answer: ", "Paris")
    assert local.tokenizer.decode(context) == "Answer:" and local.tokenizer.decode(continuation) == " Paris"
    assert local.encode_pair("", "Paris")[0] == [local.prefix_id]


class Interrupting(Backend):
    """Delegates to a real backend and raises KeyboardInterrupt on call number ``fail_at`` (an interrupted run)."""

    def __init__(self, inner: Backend, fail_at: int | None = None):
        self.inner, self.tokenizer, self.fail_at, self.calls = inner, inner.tokenizer, fail_at, 0

    @property
    def max_length(self) -> int:
        return self.inner.max_length

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt

    def loglikelihood_tokens(self, pairs):
        self._tick()
        return self.inner.loglikelihood_tokens(pairs)

    def generate_until(self, requests):
        self._tick()
        return self.inner.generate_until(requests)


def _config(out) -> EvalConfig:
    return EvalConfig(models=[{"name": "tiny", "model": "unused"}], tasks=["arc_easy", "gsm8k", "mmlu"], shots=0, limit=12,
                      max_new_tokens=16, data_dir=str(DATASETS), out=str(out), chunk_size=4)


def test_interrupted_run_resumes_to_the_same_summary(local, tmp_path):
    full = run_eval(_config(tmp_path / "a"), backends={"tiny": Interrupting(local)})
    interrupted = Interrupting(local, fail_at=5)  # arc_easy done (3 chunks), gsm8k stops in its 2nd chunk
    with pytest.raises(KeyboardInterrupt):
        run_eval(_config(tmp_path / "b"), backends={"tiny": interrupted})
    resumed_backend = Interrupting(local)
    resumed = run_eval(_config(tmp_path / "b"), reuse="latest", backends={"tiny": resumed_backend})
    assert resumed_backend.calls == 2 + 3  # only gsm8k's last two chunks and mmlu's three were computed
    assert (resumed / "summary.csv").read_text() == (full / "summary.csv").read_text()
    for name in ("config.yaml", "summary.md", "predictions/tiny/gsm8k.jsonl", "results/tiny/mmlu.json"):
        assert (resumed / name).is_file()
    header = (full / "summary.csv").read_text().splitlines()[0]
    assert header == "dataset,metric,mode,shots,tiny"
    assert "mmlu/STEM" in (full / "summary.csv").read_text()
    table = compare_runs(full, resumed)
    assert "| arc_easy | acc | ppl | 0 |" in table and "+0.00" in table


def test_prediction_details_are_recorded(local, tmp_path):
    run = run_eval(EvalConfig(models=[{"name": "tiny", "model": "unused"}], tasks=["arc_easy"], limit=2, data_dir=str(DATASETS),
                              out=str(tmp_path)), backends={"tiny": local})
    import json

    record = json.loads((run / "predictions/tiny/arc_easy.jsonl").read_text().splitlines()[0])
    assert {"id", "prompt", "prediction", "extracted", "gold", "correct", "loglikelihoods", "metrics"} <= set(record)
    assert record["correct"] == (record["extracted"] == record["gold"])


def test_code_task_runs_programs_in_the_sandbox():
    from puyu.eval.runner import run_program

    assert run_program("def f():\n    return 1\nassert f() == 1\n", 10) is None
    assert run_program("def f():\n    return 2\nassert f() == 1\n", 10).startswith("AssertionError")
    assert run_program("while True:\n    pass\n", 2).startswith(("TimeoutError", "CPUTimeExceeded"))


def test_bad_input_is_reported(tmp_path, capsys):
    from puyu.cli import main

    assert main(["eval", "--tasks", "nope", "--data-dir", str(DATASETS)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["eval", "--tasks", "arc_easy", "--data-dir", str(tmp_path / "missing")]) == 2
    assert f"data dir {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path)]) == 2
    config = tmp_path / "bad.yaml"
    config.write_text("models: [{model: x}]\ntasks: [arc_easy]\nshotz: 3\n")
    assert main(["eval", str(config)]) == 2
    assert "unknown keys ['shotz']" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--limit must be at least 1"):
        EvalConfig(models=[{"model": "x"}], tasks=["arc_easy"], limit=0)


def test_eval_quantizes_the_local_model_as_serve_does(tiny_model_dir, tmp_path, capsys):
    from puyu.cli import main

    argv = ["eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "3", "--data-dir", str(DATASETS),
            "--dtype", "float32", "--out", str(tmp_path / "runs")]
    assert main([*argv, "--quant", "w8a16", "--kv-quant", "int8"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert "arc_easy" in (run / "summary.md").read_text()
    saved = (run / "config.yaml").read_text()
    assert "quant: w8a16" in saved and "kv_quant: int8" in saved
    capsys.readouterr()
    assert main([*argv, "--backend", "hf", "--kv-quant", "int8"]) == 2
    assert "quant/kv_quant apply to backend local" in capsys.readouterr().err


def test_list_shows_every_task(capsys):
    from puyu.cli import main

    assert main(["eval", "--list"]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "[ppl/gen]" in out and "humaneval" in out
