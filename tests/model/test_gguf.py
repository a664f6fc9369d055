"""GGUF files written here with the ``gguf`` writer load with the source model's logits,
their vocabulary becomes the same tokenizer, and the conversion is cached."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

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


def write_gguf(path, hf, tokenizer_dir, qtype) -> dict[str, torch.Tensor]:
    """Write ``hf`` as a GGUF; return the state dict as the file stores it (after quantization)."""
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
