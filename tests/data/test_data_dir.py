"""One rule for the datasets folder (training and evaluation): explicit, else $PUYU_DATA_DIR, else an error naming both."""

from __future__ import annotations

import pytest

from puyu.data.dataset import DataConfig
from puyu.errors import ConfigError
from puyu.home import data_dir


def test_explicit_then_environment_then_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("PUYU_DATA_DIR", str(tmp_path / "env"))
    assert data_dir(tmp_path) == tmp_path and data_dir() == tmp_path / "env"
    with pytest.raises(ConfigError, match=f"data dir {tmp_path / 'nope'} does not exist; pass --data-dir DIR or set PUYU_DATA_DIR"):
        data_dir(tmp_path / "nope")
    monkeypatch.delenv("PUYU_DATA_DIR")
    with pytest.raises(ConfigError, match="no data dir: pass data.data_dir=DIR or set PUYU_DATA_DIR"):
        data_dir(None, "data.data_dir=DIR")


def test_training_paths_absolute_from_the_cwd_or_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("PUYU_DATA_DIR", raising=False)
    (tmp_path / "work" / "local").mkdir(parents=True)
    (tmp_path / "work" / "local" / "mine.json").write_text("[]")
    (tmp_path / "datasets").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    config = DataConfig(train=["local/mine.json"])
    assert config.resolve(str(tmp_path / "x.json")) == tmp_path / "x.json"  # absolute: as given, no data dir needed
    assert config.resolve("local/mine.json").resolve() == tmp_path / "work" / "local" / "mine.json"  # found from the cwd
    with pytest.raises(ConfigError, match="no data dir: pass data.data_dir=DIR or set PUYU_DATA_DIR"):
        config.resolve("sft/other.json")
    monkeypatch.setenv("PUYU_DATA_DIR", str(tmp_path / "datasets"))
    assert config.resolve("sft/other.json") == tmp_path / "datasets" / "sft" / "other.json"
    assert DataConfig(train=["a"], data_dir=str(tmp_path)).resolve("sft/other.json") == tmp_path / "sft" / "other.json"
