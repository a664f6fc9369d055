"""Helpers for training tests: a small alpaca file and recipes on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from puyu.train.config import Recipe, load_recipe

ROWS = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris is the capital of France."},
    {"instruction": "Add the numbers.", "input": "1234 and 1", "output": "The sum is 1235."},
    {"instruction": "Say hello.", "input": "", "output": "Hello world! How are you today?"},
    {"instruction": "Name a fox.", "input": "", "output": "The quick brown fox jumps over the lazy dog."},
    {"instruction": "Write code.", "input": "add", "output": "def add(a, b):\n    return a + b"},
    {"instruction": "Greet in Chinese.", "input": "", "output": "你好，世界！"},
]


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    path = tmp_path / "tiny_alpaca.json"
    path.write_text(json.dumps(ROWS * 4, ensure_ascii=False, indent=2))
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir, alpaca_file):
    """``tiny_recipe("lora", "train.max_steps=4", ...)``: the lora_sft recipe on the tiny model and tiny data."""

    def make(method: str, *overrides: str, run: str = "run") -> Recipe:
        base = [f"model={tiny_model_dir}", f"method={method}", f"data.train={alpaca_file}", "data.limit=0", "data.max_length=64",
                "train.precision=fp32", "train.batch_size=2", "train.grad_accum=2", "train.max_steps=6", "train.save_every=0",
                "monitor.sample_prompts=[]", "monitor.tensorboard=false", f"output_dir={tmp_path / run}", "optim.warmup_steps=1"]
        return load_recipe("lora_sft", base + list(overrides))

    return make
