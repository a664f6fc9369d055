"""GGUF export: what we write loads back through our GGUF reader (llama.cpp conventions) with the same logits."""

from __future__ import annotations

import pytest
import torch

from puyu.cli import main
from puyu.model import load_model

TOKENS = torch.tensor([[1, 5, 17, 99, 3, 250, 42, 7, 311]])


@pytest.mark.parametrize("outtype, tolerance", [("f32", 1e-5), ("f16", 2e-3), ("q8_0", 3e-2)])
def test_exported_gguf_has_the_same_logits(tiny_model_dir, tmp_path, monkeypatch, outtype, tolerance):
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
    out = tmp_path / f"model-{outtype}.gguf"
    assert main(["export", str(tiny_model_dir), str(out), "--outtype", outtype]) == 0
    model, tokenizer = load_model(tiny_model_dir, dtype="float32", device="cpu")
    back, back_tokenizer = load_model(out, dtype="float32", device="cpu")
    with torch.no_grad():
        expected, got = model(TOKENS), back(TOKENS)
    scale = expected.abs().max()
    assert (expected - got).abs().max() / scale < tolerance
    text = "Hello world! 1234 你好 <|im_end|>"
    assert back_tokenizer.encode(text) == tokenizer.encode(text)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert back_tokenizer.render(chat).ids == tokenizer.render(chat).ids
    assert back_tokenizer.eos_id == tokenizer.eos_id


def test_export_with_adapter_matches_the_merged_model(tiny_model_dir, tiny_llm, tmp_path, monkeypatch):
    from puyu.model.adapters import save_adapter
    from puyu.model.lora import add_lora, lora_modules
    from puyu.train.config import LoraConfig

    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
    add_lora(tiny_llm.model, LoraConfig(r=2, targets=["q_proj", "k_proj"]))
    for layer in lora_modules(tiny_llm.model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.3)
    with torch.no_grad():
        expected = tiny_llm.model(TOKENS)
    save_adapter(tiny_llm.model, tmp_path / "adapter")
    assert main(["export", str(tiny_model_dir), str(tmp_path / "out.gguf"), "--outtype", "f32",
                 "--adapter", str(tmp_path / "adapter")]) == 0
    back, _ = load_model(tmp_path / "out.gguf", dtype="float32", device="cpu")
    with torch.no_grad():
        assert torch.allclose(back(TOKENS), expected, atol=1e-4)  # q/k rows permuted and un-permuted consistently


def test_llama3_rope_scaling_is_written_as_the_rope_freqs_llama_cpp_computes(tmp_path, tiny_tokenizer_dir, monkeypatch):
    """Llama 3.x models keep their RoPE scaling in GGUF as per-frequency divisors: the exported ones equal those of
    llama.cpp's convert_hf_to_gguf, and the file loads back with the same scaling and logits."""
    import gguf

    from tests.conftest import make_hf_model
    from tests.model.test_gguf import llama_cpp_rope_freqs

    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf = make_hf_model(tmp_path / "llama31", tiny_tokenizer_dir, rope_scaling=dict(scaling), max_position_embeddings=512)
    out = tmp_path / "llama31.gguf"
    assert main(["export", str(tmp_path / "llama31"), str(out), "--outtype", "f32"]) == 0
    freqs = next(t for t in gguf.GGUFReader(out).tensors if t.name == "rope_freqs.weight")
    assert torch.allclose(torch.tensor(freqs.data), torch.from_numpy(llama_cpp_rope_freqs(hf.config)).float(), rtol=1e-5)
    back, _ = load_model(out, dtype="float32", device="cpu")
    assert back.config.rope_scaling == scaling
    long = torch.arange(300)[None] % 400
    with torch.no_grad():
        assert torch.allclose(back(long), hf(long).logits, atol=1e-4)
