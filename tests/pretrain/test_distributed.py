"""torchrun with 2 CPU processes (gloo; DDP and FSDP) pre-trains along the loss curve of 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from puyu.train.trainer import Trainer
from tests.conftest import ROOT


def curve(run_dir) -> list[float]:
    return [m["loss"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in m]



@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_loss_curve_of_one(pretrain_recipe, shard_root, tmp_path, strategy):
    common = ["train.max_steps=5", "train.grad_accum=2", "pretrain.val_rows=4", "monitor.eval_every=0", "optim.weight_decay=0.1"]
    single = Trainer(pretrain_recipe(*common, "train.batch_size=2", run="one")).fit()

    two = pretrain_recipe(*common, "train.batch_size=1", run="two")
    flags = [f"pretrain.shards={shard_root}", "pretrain.size=pico", "pretrain.seq_len=64", "pretrain.val_rows=4", "train.batch_size=1",
             "train.save_every=0", "train.precision=fp32", "optim.warmup_steps=2", "monitor.log_every=1", "monitor.sample_prompts=[]",
             "monitor.tensorboard=false", f"output_dir={two.output_dir}", f"train.strategy={strategy}", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29547", "-m", "puyu",
               "pretrain", "pretrain_tiny", *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    run_two = single.run_dir.with_name("two")
    assert torch.allclose(torch.tensor(curve(run_two)), torch.tensor(curve(single.run_dir)), rtol=1e-5, atol=1e-6)
    assert len(curve(run_two)) == 5
    expected, got = load_file(single.output / "model.safetensors"), load_file(run_two / "model" / "model.safetensors")
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-5, rtol=0), key  # Adam amplifies summation-order noise
    val = [json.loads(x) for x in (run_two / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert abs(val[-1]["val_loss"] - single.val_loss) < 1e-5  # validation shared over the ranks, same mean
