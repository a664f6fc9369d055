"""torchrun with 2 CPU processes (gloo; DDP, and FSDP) ends with the weights of 1 process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from puyu.train.trainer import Trainer
from tests.conftest import ROOT


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tiny_recipe, tmp_path, strategy):
    common = ("train.max_steps=4", "lora.dropout=0.0", "train.grad_accum=2", "optim.weight_decay=0.01")
    single = Trainer(tiny_recipe("lora", *common, "train.batch_size=2", run="one")).fit()

    two = tiny_recipe("lora", *common, "train.batch_size=1", run="two")
    overrides = [f"model={two.model}", f"data.train={two.data.train[0]}", f"output_dir={two.output_dir}"]
    flags = ["method=lora", "data.limit=0", "data.max_length=64", "train.precision=fp32", "train.save_every=0", "monitor.sample_prompts=[]",
             "monitor.tensorboard=false", "optim.warmup_steps=1", "train.batch_size=1", f"train.strategy={strategy}", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533", "-m", "puyu",
               "train", "lora_sft", *overrides, *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    expected = load_file(single.output / "adapter_model.safetensors")
    got = load_file(two.output_dir + "/adapter/adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6, rtol=1e-4), key
    assert any(v.abs().sum() > 0 for k, v in got.items() if "lora_B" in k)
