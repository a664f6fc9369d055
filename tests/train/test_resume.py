"""Kill-and-resume: a run interrupted at any step and resumed ends with the same weights, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from puyu.train.trainer import Trainer
from tests.conftest import Killed, kill_at


def result_weights(run) -> dict[str, torch.Tensor]:
    folder = run.output
    return load_file(folder / ("adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"))


@pytest.mark.parametrize("method, kill", [("lora", 5), ("lora", 2), ("full", 4)])
def test_killed_run_resumes_to_identical_weights(tiny_recipe, method, kill):
    settings = ("train.max_steps=7", "train.save_every=3", "lora.dropout=0.1", "optim.weight_decay=0.01", "data.val_fraction=0.2",
                "monitor.eval_every=2")
    straight = Trainer(tiny_recipe(method, *settings, run="straight")).fit()

    interrupted = tiny_recipe(method, *settings, run="interrupted")
    with pytest.raises(Killed):
        Trainer(interrupted, hooks=[kill_at(kill)]).fit()
    resumed = Trainer(interrupted, resume=True).fit()

    expected, got = result_weights(straight), result_weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert resumed.train_loss == straight.train_loss
    steps = [json.loads(x)["step"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(1, 8))  # the metrics file is continuous: no step twice, none missing


def test_checkpoint_is_refused_for_different_data(tiny_recipe, tmp_path, alpaca_file):
    from puyu.errors import ConfigError

    recipe = tiny_recipe("lora", "train.max_steps=4", "train.save_every=2", run="changed")
    with pytest.raises(Killed):
        Trainer(recipe, hooks=[kill_at(3)]).fit()
    changed = tiny_recipe("lora", "train.max_steps=4", "train.save_every=2", "data.max_length=32", run="changed")
    with pytest.raises(ConfigError, match="different data"):
        Trainer(changed, resume=True).fit()
