"""Every shipped recipe loads and its data builds; bad recipes name the wrong key; the CLI trains and resumes."""

from __future__ import annotations

import json

import pytest

from puyu.cli import main
from puyu.data.dataset import TrainData
from puyu.errors import ConfigError
from puyu.train.config import RECIPES_DIR, load_recipe
from puyu.train.trainer import Trainer
from tests.conftest import DATASETS, make_hf_model

# agent_tuning trains on data that `puyu agent-tune` builds first: tests/agent/test_tuning_data.py runs it end to end.
# Pre-training recipes (pretrain_*) train on token shards: tests/pretrain runs them.
RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem != "agent_tuning" and not p.stem.startswith("pretrain"))


def test_the_issue_recipes_are_shipped():
    assert {"lora_sft", "qlora_sft", "full_sft", "continued_pretrain", "self_cognition", "tool_use_sft"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid_and_its_data_builds(name, tiny_tokenizer):
    recipe = load_recipe(name, [f"data.data_dir={DATASETS}", "data.limit=6", "data.val_fraction=0"])
    data = TrainData.build(recipe.data, tiny_tokenizer, recipe.seed)
    assert data.rows and all(len(r.ids) <= recipe.data.max_length for r in data.rows)
    assert sum(t != -100 for r in data.rows for t in r.targets) > 0
    if name == "self_cognition":
        text = tiny_tokenizer.decode([i for r in data.rows for i in r.ids], skip_special_tokens=False)
        assert "Puyu" in text and "{{name}}" not in text and "{{author}}" not in text
    if name == "tool_use_sft":
        text = tiny_tokenizer.decode([t for r in data.rows for t in r.targets if t != -100], skip_special_tokens=False)
        assert "<tool_call>" in text  # assistant tool calls are trained


@pytest.fixture(scope="module")
def long_context_tiny_model(tmp_path_factory, tiny_tokenizer_dir):
    """The tiny random model with room for the recipes' own max_length (up to 2048 tokens)."""
    folder = tmp_path_factory.mktemp("recipes") / "tiny"
    make_hf_model(folder, tiny_tokenizer_dir, max_position_embeddings=2048)
    return folder


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_trains_a_step_with_its_own_settings(name, long_context_tiny_model, tmp_path):
    """Precision, batch sizes, packing, LoRA/QLoRA/full, samples: all as shipped; only the model and the length differ."""
    recipe = load_recipe(name, [f"model={long_context_tiny_model}", f"data.data_dir={DATASETS}", "data.limit=16",
                                "train.max_steps=1", f"output_dir={tmp_path / 'run'}", "monitor.sample_max_new_tokens=4"])
    assert recipe.train.precision == "auto"
    result = Trainer(recipe).fit()
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["precision"] in ("fp32", "bf16")
    assert result.output is not None and result.output.exists()
    assert json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])["tokens"] > 0


def test_wrong_key_is_named_with_the_valid_ones(capsys):
    with pytest.raises(ConfigError) as info:
        load_recipe("lora_sft", ["lora.rank=4"])
    assert "'lora.rank'" in str(info.value) and "r, alpha, dropout, targets" in str(info.value)
    assert main(["train", "lora_sft", "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "'optim.learning_rate'" in err and "lr, weight_decay" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match="'train.batch_size' must be int"):
        load_recipe("lora_sft", ["train.batch_size=four"])
    with pytest.raises(ConfigError, match="no recipe file"):
        load_recipe("no_such_recipe")


def test_cli_trains_then_resumes_a_finished_run_idempotently(tiny_model_dir, alpaca_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
    args = ["train", "tool_use_sft", f"model={tiny_model_dir}", f"data.train={alpaca_file}", "data.max_length=64", "train.max_steps=3",
            "train.save_every=2", "train.precision=fp32", "monitor.tensorboard=false", "monitor.sample_prompts=[Hi]",
            "monitor.sample_every=2"]
    assert main(args) == 0
    runs = list((tmp_path / "home" / "runs" / "train").glob("tool_use_sft-*"))
    assert len(runs) == 1
    run = runs[0]
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "loss.png").exists()
    assert [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()] == [2, 3]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert main(args + ["--resume"]) == 0  # picks the latest run of the recipe and continues from step 2
    assert "trained 3 steps" in capsys.readouterr().out
