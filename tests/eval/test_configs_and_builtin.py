"""The example run configs (configs/eval/) validate, bad keys are named, and one small real run of the built-in model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from puyu.errors import ConfigError
from puyu.eval.pipeline import EvalConfig, run_eval
from tests.conftest import DATASETS, ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = EvalConfig.from_yaml(path)
    assert config.models and config.tasks


def test_config_keys_and_types_are_checked_by_name(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("models: [{model: x, dtype: null}]\ntasks: arc_easy\nlimit: many\n")
    with pytest.raises(ConfigError, match=f"{path}: key 'limit' must be int, got 'many'"):
        EvalConfig.from_yaml(path)
    path.write_text("models: [{model: x, dtype: null}]\ntasks: arc_easy\nshotz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['shotz'\]; valid keys: models, tasks, mode, shots"):
        EvalConfig.from_yaml(path)
    path.write_text("models: [{model: x, dtype: null}]\ntasks: arc_easy\n")
    assert EvalConfig.from_yaml(path).tasks == ["arc_easy"]


@pytest.mark.builtin
def test_builtin_model_on_arc_easy(builtin_llm, tmp_path):
    from puyu.eval.backends.local import LocalBackend

    config = EvalConfig(models=[{"name": "smollm2", "model": "smollm2-135m-instruct"}], tasks=["arc_easy"], limit=40,
                        data_dir=str(DATASETS), out=str(tmp_path))
    run = run_eval(config, backends={"smollm2": LocalBackend(builtin_llm)})
    result = json.loads(Path(run / "results/smollm2/arc_easy.json").read_text())
    assert result["n"] == 40
    assert result["metrics"]["acc"] > 0.4  # well above chance (0.25): SmolLM2-135M scores ~0.6 on ARC-Easy
