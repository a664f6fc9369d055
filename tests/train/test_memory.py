"""``train.grad_checkpointing``: the result never depends on it, and ``auto`` decides from measured activations."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import puyu.train.memory as memory
from puyu.errors import ConfigError
from puyu.model import load_model
from puyu.train.config import load_recipe
from puyu.train.objective import prepare_model
from puyu.train.trainer import Trainer


def test_checkpointing_on_or_off_trains_the_same_adapter(tiny_recipe):
    common = ("train.max_steps=3", "lora.dropout=0.1")  # dropout: the recomputed forward must replay the same masks
    runs = [Trainer(tiny_recipe("lora", *common, f"train.grad_checkpointing={on}", run=f"ckpt-{on}")).fit() for on in ("true", "false")]
    adapters = [load_file(run.output / "adapter_model.safetensors") for run in runs]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_probe_predicts_what_a_whole_forward_saves(tiny_recipe, method):
    recipe = tiny_recipe(method)
    model, _ = load_model(recipe.model, dtype="float32", device="cpu")
    prepare_model(model, recipe.method, recipe.lora, "fp32")
    model.train()
    rng = torch.get_rng_state()
    per_token = memory.saved_bytes_per_token(model, torch.autocast("cpu", enabled=False))
    assert torch.equal(torch.get_rng_state(), rng)  # the probe leaves the run's random stream alone
    tokens = torch.randint(0, 300, (3, 96))
    measured = memory.saved_bytes(model, lambda: model(tokens, output="hidden"))
    predicted = per_token * tokens.numel() * model.config.num_layers
    assert 0.8 * measured < predicted < 1.05 * measured, (predicted, measured)


def test_auto_turns_checkpointing_off_only_when_the_activations_fit(tiny_recipe, monkeypatch):
    recipe = tiny_recipe("lora")
    model, _ = load_model(recipe.model, dtype="float32", device="cpu")
    prepare_model(model, recipe.method, recipe.lora, "fp32")
    off = torch.autocast("cpu", enabled=False)
    need = memory.saved_bytes_per_token(model, off) * 4 * 1024 * model.config.num_layers * memory.ALLOCATOR_OVERHEAD["cpu"]
    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(need / memory.BUDGET_SHARE * 1.1))
    plan = memory.plan_checkpointing("auto", model, 4 * 1024, off, cpu)
    assert not plan.on and plan.reason.startswith("auto: off") and "GB available" in plan.reason
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(need / memory.BUDGET_SHARE * 0.9))
    assert memory.plan_checkpointing("auto", model, 4 * 1024, off, cpu).on
    assert memory.plan_checkpointing(False, model, 4 * 1024, off, cpu) == memory.CheckpointPlan(False, "set in the recipe")
    assert memory.plan_checkpointing(True, model, 4 * 1024, off, cpu).on


def test_recipe_values(tiny_recipe):
    assert tiny_recipe("lora").train.grad_checkpointing == "auto"
    assert tiny_recipe("lora", "train.grad_checkpointing=true").train.grad_checkpointing is True
    assert tiny_recipe("lora", "train.grad_checkpointing=false").train.grad_checkpointing is False
    with pytest.raises(ConfigError, match="grad_checkpointing 'sometimes' is unknown; use true, false or auto"):
        load_recipe("lora_sft", ["train.grad_checkpointing=sometimes"])
