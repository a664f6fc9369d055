"""GGUF files written here with the ``gguf`` writer load with the source model's logits,
their vocabulary becomes the same tokenizer, and the conversion is cached.  A Llama 3.1-style
file (RoPE scaling stored as llama.cpp's ``rope_freqs`` divisors) runs with the rotary
frequencies of the Hugging Face model with ``rope_scaling`` llama3."""

from __future__ import annotations

import json
import math

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from puyu.model import load_model
from puyu.model.loader import converted_folder
from tests.conftest import CORPUS, SPECIAL_TOKENS, make_hf_model

Q = gguf.GGMLQuantizationType
# Relative logit error allowed vs the unquantized source, per storage type.
TOLERANCE = {Q.F32: 1e-6, Q.F16: 2e-3, Q.BF16: 1e-2, Q.Q8_0: 2e-2, Q.Q5_0: 0.1, Q.Q5_1: 0.1, Q.Q4_0: 0.2, Q.Q4_1: 0.2}
NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
         "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(key: str) -> str:
    base, kind = key.rsplit(".", 1)
    if base.startswith("model.layers."):
        _, _, layer, rest = base.split(".", 3)
        return f"blk.{layer}.{NAMES[rest]}.{kind}"
    return f"{NAMES[base]}.{kind}"


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What convert_hf_to_gguf does to Llama q/k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_rope_freqs(config) -> np.ndarray:
    """``rope_freqs.weight`` as llama.cpp's convert_hf_to_gguf computes it (LlamaModel.generate_extra_tensors)."""
    scaling = config.rope_parameters  # transformers 5 keeps rope_theta here too
    dim = config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (scaling["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def write_gguf(path, hf, tokenizer_dir, qtype, rope_freqs: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Write ``hf`` as a GGUF (plus llama.cpp's ``rope_freqs`` divisors if given); return the state dict as the
    file stores it (after quantization)."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok["model"]["vocab"]["<|endoftext|>"])
    w.add_eos_token_id(tok["model"]["vocab"]["<|im_end|>"])
    w.add_chat_template(json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"])
    stored = {}
    for key, value in hf.state_dict().items():
        array = value.numpy().astype(np.float32)
        if key.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, c.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, c.num_key_value_heads)
        kind = qtype if array.ndim == 2 else Q.F32  # llama.cpp keeps norms in F32
        if kind == Q.F32:
            data = array
        elif kind == Q.F16:
            data = array.astype(np.float16)
        else:
            data = gguf.quants.quantize(array, kind)
        w.add_tensor(gguf_name(key), data, raw_dtype=kind if kind not in (Q.F32, Q.F16) else None)
        stored[key] = (value if kind == Q.F32
                       else torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(value.numpy(), kind), kind).copy()))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


@pytest.mark.parametrize("qtype", list(TOLERANCE), ids=lambda q: q.name)
def test_gguf_gives_the_source_logits(tmp_path, tiny_tokenizer_dir, qtype):
    hf = make_hf_model(tmp_path / "src", tiny_tokenizer_dir)
    stored = write_gguf(tmp_path / "tiny.gguf", hf, tiny_tokenizer_dir, qtype)
    ours, _ = load_model(tmp_path / "tiny.gguf", dtype="float32", device="cpu")
    ids = torch.randint(0, 400, (2, 16))
    with torch.no_grad():
        source = hf(ids).logits
        got = ours(ids)
        relative = ((got - source).norm() / source.norm()).item()
        assert relative <= TOLERANCE[qtype]
        # Exactly the stored (dequantized) weights: the name map and the q/k un-permutation are right.
        hf.load_state_dict(stored)
        assert (got - hf(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("bands", [(1.0, 4.0, 64), (2.0, 8.0, 128), (1.0, 4.0, 100)], ids=["llama3.1", "other-low", "one-blended"])
def test_llama3_rope_freqs_give_the_rope_scaling_llama3_logits(tmp_path, tiny_tokenizer_dir, bands):
    """Positions far past original_max_position_embeddings, where every scaled band matters."""
    low, high, original = bands
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": low, "high_freq_factor": high,
               "original_max_position_embeddings": original}
    hf = make_hf_model(tmp_path / "src", tiny_tokenizer_dir, rope_scaling=scaling)
    write_gguf(tmp_path / "llama31.gguf", hf, tiny_tokenizer_dir, Q.F32, rope_freqs=llama_cpp_rope_freqs(hf.config))
    ours, _ = load_model(tmp_path / "llama31.gguf", dtype="float32", device="cpu")
    assert ours.config.rope_scaling["rope_type"] == "llama3"
    converted = AutoModelForCausalLM.from_pretrained(converted_folder(tmp_path / "llama31.gguf"), dtype=torch.float32)
    ids = torch.randint(0, 400, (1, 200))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4
        assert (converted(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4  # the cached folder is a plain HF Llama
        unscaled = make_hf_model(tmp_path / "plain", tiny_tokenizer_dir)
        unscaled.load_state_dict(hf.state_dict())
        assert (ours(ids) - unscaled(ids).logits).abs().max().item() > 1e-3  # 10x the tolerance: the scaling matters here


def test_llama3_1_rope_freqs_become_the_published_rope_scaling():
    """Llama 3.1 8B's shapes: the divisors give back its config.json values exactly."""
    from puyu.model.rope import llama3_scaling_from_divisors
    from tests.conftest import hf_tiny_config

    published = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
    config = hf_tiny_config("llama", hidden_size=4096, num_attention_heads=32, rope_scaling={**published, "rope_theta": 500000.0})
    assert llama3_scaling_from_divisors(torch.from_numpy(llama_cpp_rope_freqs(config)), 500000.0, 128) == published


def test_gguf_vocabulary_becomes_the_same_tokenizer_and_template(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    hf = make_hf_model(tmp_path / "src", tiny_tokenizer_dir)
    write_gguf(tmp_path / "tiny.gguf", hf, tiny_tokenizer_dir, Q.F32)
    _, tokenizer = load_model(tmp_path / "tiny.gguf", dtype="float32", device="cpu")
    for text in CORPUS + ["<|im_start|>user\n2024 年<|im_end|>"]:
        assert tokenizer.encode(text) == tiny_tokenizer.encode(text)
    messages = [{"role": "user", "content": "Hello"}]
    assert tokenizer.render(messages, add_generation_prompt=True).ids == tiny_tokenizer.render(messages, add_generation_prompt=True).ids
    assert tokenizer.eos_token == "<|im_end|>"


def test_gguf_is_converted_once_and_cached(tmp_path, tiny_tokenizer_dir):
    hf = make_hf_model(tmp_path / "src", tiny_tokenizer_dir)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hf, tiny_tokenizer_dir, Q.Q8_0)
    load_model(path, dtype="float32", device="cpu")
    cached = converted_folder(path) / "model.safetensors"
    first = cached.stat().st_mtime_ns
    load_model(path, dtype="float32", device="cpu")
    assert cached.stat().st_mtime_ns == first


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
