"""The run's progress shows before the first optimizer step: set-up note, fractional steps and tokens/s per micro-batch."""

from __future__ import annotations

import json

from puyu.train.monitor import Monitor
from puyu.train.trainer import Trainer


def test_micro_batches_move_the_bar_and_show_tokens_per_second(tmp_path, capsys):
    monitor = Monitor(tmp_path, total_steps=2, start_step=0, tensorboard=False)
    monitor.note("precision fp32 (auto: this CPU has no native bf16)")
    assert "precision fp32" in capsys.readouterr().out

    monitor.micro_batch(1, 4, tokens=100, seconds=0.5)  # a quarter of step 1, 200 tok/s
    assert monitor.bar.n == 0.25 and monitor.bar.postfix == "micro=1/4, tok_s=200"
    monitor.micro_batch(2, 4, tokens=100, seconds=1.0)
    assert monitor.bar.n == 0.5 and "tok_s=200" in monitor.bar.postfix
    monitor.step(1, loss=2.5, lr=1e-4, grad_norm=1.0, tokens=400, seconds=2.0, log_now=True)
    assert monitor.bar.n == 1 and "loss=2.5000" in monitor.bar.postfix and "micro" not in monitor.bar.postfix
    monitor.micro_batch(1, 4, tokens=50, seconds=1.0)  # a new window after the log: 50 tok/s
    assert monitor.bar.n == 1.25 and "tok_s=50" in monitor.bar.postfix
    monitor.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["tokens_per_s"] == 200.0


def test_trainer_reports_precision_and_progress_within_the_first_step(tiny_recipe, monkeypatch):
    seen = []
    original = Monitor.micro_batch

    def spy(self, index, count, tokens, seconds):
        seen.append((self.bar.n, index, count))
        original(self, index, count, tokens, seconds)

    monkeypatch.setattr(Monitor, "micro_batch", spy)
    recipe = tiny_recipe("lora", "train.max_steps=1", "train.precision=auto")
    result = Trainer(recipe).fit()
    assert seen[0] == (0, 1, 2) and seen[1] == (0.5, 2, 2)  # the bar moved after the first micro-batch
    assert json.loads((result.run_dir / "summary.json").read_text())["precision"] in ("fp32", "bf16")
