"""The InternLM2 key map: a Llama state dict rewritten in InternLM2's layout (packed ``wqkv``,
``w1/w2/w3``, ``tok_embeddings``, ``output``) by this test's own code loads to the same logits,
and saving writes that layout back."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from puyu.model import load_model, save_pretrained
from tests.conftest import make_hf_model

RENAMES = {"model.embed_tokens.": "model.tok_embeddings.", "lm_head.": "output.", "self_attn.o_proj": "attention.wo",
           "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3", "mlp.down_proj": "feed_forward.w2",
           "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm"}


def to_internlm2(state, heads, kv_heads, head_dim):
    """InternLM2 packs, per key/value head, its query heads then its key then its value ("(h gs d)")."""
    groups = heads // kv_heads
    out = {}
    for key, value in state.items():
        if ".self_attn.q_proj." in key:
            prefix = key.split(".self_attn.")[0]
            q, k, v = (state[f"{prefix}.self_attn.{n}_proj.weight"] for n in "qkv")
            rows = []
            for j in range(kv_heads):
                for g in range(groups):
                    h = j * groups + g
                    rows.append(q[h * head_dim : (h + 1) * head_dim])
                rows.append(k[j * head_dim : (j + 1) * head_dim])
                rows.append(v[j * head_dim : (j + 1) * head_dim])
            out[f"{prefix}.attention.wqkv.weight"] = torch.cat(rows)
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            for old, new in RENAMES.items():
                key = key.replace(old, new)
            out[key] = value
    return out


def test_internlm2_layout_loads_to_llama_logits_and_saves_back(tmp_path, tiny_tokenizer_dir):
    hf = make_hf_model(tmp_path / "llama", tiny_tokenizer_dir)
    c = hf.config
    packed = to_internlm2({k: v.clone() for k, v in hf.state_dict().items()}, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
    folder = tmp_path / "internlm2"
    folder.mkdir()
    save_file(packed, folder / "model.safetensors")
    config = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "vocab_size": c.vocab_size,
              "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
              "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads, "bias": False,
              "rms_norm_eps": c.rms_norm_eps, "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)

    ours, tokenizer = load_model(folder, dtype="float32", device="cpu")
    assert ours.config.arch == "internlm2"
    ids = torch.randint(0, 400, (2, 12))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4

    save_pretrained(ours, tokenizer, tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert set(saved) == set(packed)
    assert all(torch.equal(saved[k], packed[k]) for k in packed)
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == ["InternLM2ForCausalLM"]
