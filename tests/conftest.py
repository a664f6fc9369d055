"""Shared fixtures: a tiny byte-level BPE tokenizer, tiny random HF models, the built-in model.

Tiny models (2 layers, hidden 64) keep the suite fast; tests marked
``builtin`` share one load of the built-in model per session.  ``PUYU_HOME``
points at a per-session folder so tests never touch the user's home, except
that the built-in model's GGUF conversion is cached across runs in
``$PUYU_TEST_CACHE`` (default ``.pytest_cache/puyu-home``) to keep reruns fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("PUYU_DATA_DIR", ROOT.parent / "shared" / "datasets"))
os.environ.setdefault("PUYU_HOME", str(Path(os.environ.get("PUYU_TEST_CACHE", ROOT / ".pytest_cache" / "puyu-home"))))

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<s>", "<|action_start|>", "<|action_end|>", "<|plugin|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital.",
    "Hello world! How are you today? I am fine, thank you. 1234567890 numbers and symbols: {}[]()<>.,;:'\"",
    "你好，世界！今天天气很好。我们一起去公园散步吧。中文文本需要正确地流式输出。",
    "Emoji test: 😀🎉🚀👍🏽 and mixed 中文 English text. Function calls use JSON: {\"name\": \"add\", \"arguments\": {\"a\": 1}}",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
]


class Killed(Exception):
    """A training run stopped on purpose (:func:`kill_at`), as a crash would stop it."""


def kill_at(step: int):
    """A trainer step hook that raises :class:`Killed` once ``step`` steps are done."""
    def hook(done: int, metrics: dict) -> None:
        if done == step:
            raise Killed(step)

    return hook


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder with tokenizer.json + tokenizer_config.json (ChatML template) of a 400-token byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    tok.save(str(folder / "tokenizer.json"))
    from puyu.tokenizer.templates import BUILTIN_TEMPLATES

    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
              "chat_template": BUILTIN_TEMPLATES["chatml"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from puyu.tokenizer import Tokenizer

    return Tokenizer.from_folder(tiny_tokenizer_dir)


def hf_tiny_config(arch: str, vocab_size: int = 400, **overrides):
    """A transformers config of a 2-layer, hidden-64 model of ``arch`` (a transformers ``model_type``: llama, qwen2, qwen3, mistral ...)."""
    from transformers import AutoConfig

    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)
    base.update(overrides)
    return AutoConfig.for_model(arch, **base)


def make_hf_model(folder: Path, tokenizer_dir: Path, arch: str = "llama", seed: int = 0, **overrides):
    """Save a random transformers model plus the tiny tokenizer in ``folder``; return the HF model (fp32, eval)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_tiny_config(arch, **overrides), dtype=torch.float32).eval()
    with torch.no_grad():  # non-trivial norms and biases so the parity tests see them
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return model


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer_dir) -> Path:
    folder = tmp_path / "tiny-llama"
    make_hf_model(folder, tiny_tokenizer_dir)
    return folder


@pytest.fixture
def tiny_llm(tiny_model_dir):
    from puyu import LLM

    return LLM(str(tiny_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def builtin_llm():
    """The built-in model, loaded once per session in fp32 on the CPU."""
    from puyu import LLM

    return LLM("smollm2-135m-instruct", dtype="float32", device="cpu")
