"""Hugging Face folders: sharded checkpoints load, and a missing shard is a clear error."""

from __future__ import annotations

import json

import pytest
import torch

from puyu.errors import ModelLoadError
from puyu.model import load_model
from tests.conftest import make_hf_model


def test_sharded_checkpoint_loads_with_the_same_logits(tmp_path, tiny_tokenizer_dir):
    hf = make_hf_model(tmp_path / "one", tiny_tokenizer_dir)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    for f in tiny_tokenizer_dir.iterdir():
        (tmp_path / "sharded" / f.name).write_bytes(f.read_bytes())
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    ours, _ = load_model(tmp_path / "sharded", dtype="float32", device="cpu")
    ids = torch.randint(0, 400, (1, 8))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4

    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "sharded" / shard).unlink()
    with pytest.raises(ModelLoadError, match=f"shard {shard} named by the index is missing"):
        load_model(tmp_path / "sharded", dtype="float32", device="cpu")


def test_weights_from_another_model_are_refused(tmp_path, tiny_tokenizer_dir):
    make_hf_model(tmp_path / "m", tiny_tokenizer_dir)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["intermediate_size"] = 96
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="shape"):
        load_model(tmp_path / "m", dtype="float32", device="cpu")
