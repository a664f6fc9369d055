"""Pre-training from scratch: loss falls, a killed run resumes bit-identically, the result loads in transformers and puyu."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from puyu.errors import ConfigError
from puyu.train.config import load_recipe
from puyu.train.scratch import model_config, new_model
from puyu.train.trainer import Trainer, lr_factor
from tests.conftest import Killed, kill_at


def losses(run_dir) -> list[float]:
    return [m["loss"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


def test_loss_falls_below_the_unigram_entropy(pretrain_recipe):
    """From ln(512) = 6.24 (uniform: the init is right) to below 5.3 nats in 30 steps; the corpus' unigram entropy is
    5.61 nats, so the model must use the context to get there."""
    result = Trainer(pretrain_recipe("train.max_steps=30", "optim.lr=5e-3", "pretrain.val_rows=8")).fit()
    curve = losses(result.run_dir)
    assert abs(curve[0] - math.log(512)) < 0.1
    assert sum(curve[-5:]) / 5 < 5.3 and result.val_loss < 5.4
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["val_perplexity"] == pytest.approx(math.exp(result.val_loss))
    assert (result.run_dir / "loss.png").exists()
    metrics = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["tokens_per_s"] > 0 and metrics["mfu"] > 0  # (a CPU peak measured while others load the machine reads low)


def test_killed_run_resumes_to_identical_weights(pretrain_recipe):
    settings = ("train.max_steps=6", "train.save_every=2", "monitor.eval_every=2", "optim.weight_decay=0.1",
                "pretrain.mixture={en: 1, lines: 1}", "monitor.sample_prompts=[The]", "monitor.sample_every=4",
                "monitor.sample_max_new_tokens=3")
    straight = Trainer(pretrain_recipe(*settings, run="straight")).fit()
    interrupted = pretrain_recipe(*settings, run="interrupted")
    with pytest.raises(Killed):
        Trainer(interrupted, hooks=[kill_at(3)]).fit()
    resumed = Trainer(interrupted, resume=True).fit()
    expected, got = load_file(straight.output / "model.safetensors"), load_file(resumed.output / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert losses(resumed.run_dir) == losses(straight.run_dir)
    assert resumed.val_loss == straight.val_loss


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, shard_root):
    out = tmp_path_factory.mktemp("pretrained")
    recipe = load_recipe("pretrain_tiny", [f"pretrain.shards={shard_root}", "pretrain.size=pico", "pretrain.seq_len=64",
                                           "pretrain.val_rows=0", "train.batch_size=2", "train.max_steps=3", "train.save_every=0",
                                           "train.precision=fp32", "monitor.sample_prompts=[]", "monitor.tensorboard=false",
                                           "pretrain.model={qkv_bias: false, num_kv_heads: 1}", f"output_dir={out}"])
    return Trainer(recipe).fit().output


def test_saved_folder_loads_in_transformers_with_equal_logits(pretrained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from puyu.model import load_model

    ours, tokenizer = load_model(pretrained, dtype="float32", device="cpu")
    theirs = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32).eval()
    assert theirs.config.num_key_value_heads == 1 and theirs.config.tie_word_embeddings
    ids = torch.tensor([tokenizer.encode("The quick brown fox 子曰：学而时习之 Hello world! How are you today?")])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-5, rtol=1e-4)
    assert AutoTokenizer.from_pretrained(pretrained)("子曰")["input_ids"] == tokenizer.encode("子曰")


def test_pretrained_model_chats_and_fine_tunes_next(pretrained, tmp_path):
    """The folder is a puyu model: chat generates and stops, and an SFT recipe trains on it."""
    from puyu import LLM
    from tests.train.conftest import ROWS

    llm = LLM(str(pretrained), dtype="float32", device="cpu")
    assert llm.tokenizer.stop_token_ids == [0, 3]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS * 2))
    sft = load_recipe("lora_sft", [f"model={pretrained}", f"data.train={data}", "data.limit=0", "data.max_length=64", "train.max_steps=2",
                                   "train.precision=fp32", "monitor.sample_prompts=[Hi]", "monitor.sample_max_new_tokens=4",
                                   "monitor.tensorboard=false", f"output_dir={tmp_path / 'sft'}"])
    result = Trainer(sft).fit()
    assert (result.output / "adapter_model.safetensors").exists()
    replies = [json.loads(x)["reply"] for x in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(replies) == 1 and isinstance(replies[0], str)


def test_initialisation_follows_the_reference():
    config = model_config("micro", "llama", 512, 64)
    torch.manual_seed(0)
    model = new_model(config, std=0.02, scaled=True)
    residual = 0.02 / math.sqrt(2 * config.num_layers)
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert p.std().item() == pytest.approx(residual, rel=0.05), name
        elif name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.05) and abs(p.mean().item()) < 1e-3, name
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied below 1B, like SmolLM2
    plain = new_model(config, std=0.02, scaled=False)
    assert plain.model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_named_sizes_and_layouts():
    from puyu.train.scratch import parameter_count

    smol = model_config("smollm2-135m", "llama", 49152, 2048)
    assert round(parameter_count(smol)[0] / 1e6) == 135  # the built-in model's shape
    assert model_config("internlm2-1.8b", "internlm2", 92544, 4096).to_hf()["architectures"] == ["InternLM2ForCausalLM"]
    assert model_config("nano", "llama", 512, 64, {"num_layers": 6}).num_layers == 6
    with pytest.raises(ConfigError, match="unknown"):
        model_config("huge", "llama", 512, 64)
    with pytest.raises(ConfigError, match="hidden"):
        model_config("pico", "llama", 512, 64, {"hiden_size": 3})


def test_schedules():
    assert lr_factor(0, 100, 10, "wsd", 0.1) == pytest.approx(1 / 11)
    assert lr_factor(50, 100, 10, "wsd", 0.1) == 1.0 and lr_factor(79, 100, 10, "wsd", 0.1) == 1.0
    assert lr_factor(90, 100, 10, "wsd", 0.1) == pytest.approx(0.55) and lr_factor(100, 100, 10, "wsd", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "cosine", 0.0) == pytest.approx(0.5)


def test_recipe_errors_are_named(pretrain_recipe, tmp_path):
    with pytest.raises(ConfigError, match="method: full"):
        pretrain_recipe("method=lora")
    with pytest.raises(ConfigError, match="pretrain.size"):
        Trainer(pretrain_recipe("pretrain.size=huge")).fit()
    with pytest.raises(ConfigError, match="shard folder"):
        Trainer(pretrain_recipe(f"pretrain.shards={tmp_path}")).fit()
    from puyu.cli import main

    assert main(["pretrain", "lora_sft"]) == 2


def test_internlm2_layout_saves_and_loads_back(bpe, tmp_path):
    """A new model in InternLM2's weight layout (fused wqkv) round-trips through its Hugging Face folder."""
    from puyu.model import load_model, save_pretrained

    torch.manual_seed(0)
    model = new_model(model_config("pico", "internlm2", bpe.vocab_size, 64, {"tie_word_embeddings": False}), 0.02, True).eval()
    save_pretrained(model, bpe, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["InternLM2ForCausalLM"]
    loaded, _ = load_model(tmp_path / "m", dtype="float32", device="cpu")
    ids = torch.tensor([bpe.encode("子曰：学而时习之 and the quick brown fox")])
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
