"""The model zoo: every architecture in puyu.model.architectures loads as published.

Two kinds of test:

- Logits: a tiny random model of each layout equals a ``transformers`` reference to 1e-4 in fp32.  Where
  transformers has the class (Qwen2, Qwen3, Llama, Mistral, InternLM3 through its Llama implementation) the
  folder is transformers' own save; for the remote-code families the folder gets the family's published
  ``config.json`` keys, and the weights of an equivalent transformers class are stored under the family's
  names by the key map documented here:

  ============== ===================================== =====================================================
  family         equivalent transformers class          key map (published name -> transformers name)
  ============== ===================================== =====================================================
  InternLM v1    LlamaForCausalLM, attention_bias=True  identity (q/k/v/o biases, ``rotary`` -> rope)
  InternLM2/2.5  LlamaForCausalLM                       tests/model/test_internlm2.py (packed ``wqkv`` ...)
  InternLM3      LlamaForCausalLM (qkv_bias == bias),   identity; ``qkv_bias`` -> q/k/v bias, ``bias`` -> o_proj
                 Qwen2ForCausalLM (qkv_bias, no bias)   and MLP biases
  ============== ===================================== =====================================================

- Key maps on the published parameter names and shapes of the real checkpoints (7B/8B configs as published,
  built on the meta device, so nothing is allocated).
"""

from __future__ import annotations

import json

import pytest
import torch

from puyu.errors import ModelLoadError
from puyu.model import ModelConfig, Transformer, load_model
from puyu.model.keymaps import hf_to_native, native_to_hf
from tests.conftest import make_hf_model

IDS = torch.randint(0, 400, (2, 20), generator=torch.Generator().manual_seed(3))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _assert_parity(hf, folder, ids=IDS, device="cpu"):
    ours, _ = load_model(folder, dtype="float32", device=device)
    hf, ids = hf.to(device), ids.to(device)
    with torch.no_grad():
        ref = hf(ids).logits
        assert (ours(ids) - ref).abs().max().item() <= 1e-4
        cache = ours.new_cache(ids.shape[0], ids.shape[1])
        stepped = torch.cat([ours(ids[:, :8], cache=cache)] + [ours(ids[:, t : t + 1], cache=cache) for t in range(8, ids.shape[1])], 1)
    assert (stepped - ref).abs().max().item() <= 1e-4
    return ours


def _rewrite_config(folder, drop=(), **published):
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k not in drop}
    (folder / "config.json").write_text(json.dumps(config | published))


CASES = {
    "qwen3-tied": dict(arch="qwen3", head_dim=32, tie_word_embeddings=True),  # head_dim != hidden / heads, as in Qwen3
    "qwen3-bias-mha": dict(arch="qwen3", head_dim=16, attention_bias=True, num_key_value_heads=4),
    "qwen2.5-tied": dict(arch="qwen2", tie_word_embeddings=True),
    "llama3.2-tied": dict(arch="llama", tie_word_embeddings=True, rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64}),
    "mistral": dict(arch="mistral", sliding_window=None),
    "mistral-window-beyond-context": dict(arch="mistral", sliding_window=4096),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_classes_match(tmp_path, tiny_tokenizer_dir, case, device):
    overrides = dict(CASES[case])
    hf = make_hf_model(tmp_path / case, tiny_tokenizer_dir, **overrides)
    ours = _assert_parity(hf, tmp_path / case, device=device)
    assert ours.config.arch == overrides["arch"]
    assert ours.config.qk_norm == (overrides["arch"] == "qwen3")
    if overrides.get("tie_word_embeddings"):
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_sliding_window_caps_the_context_where_it_equals_full_attention(tmp_path, tiny_tokenizer_dir):
    hf = make_hf_model(tmp_path / "m", tiny_tokenizer_dir, arch="mistral", sliding_window=16)
    ours = _assert_parity(hf, tmp_path / "m", IDS[:, :16])
    assert ours.config.max_position_embeddings == 16


def test_internlm_v1_published_config_on_llama_weights(tmp_path, tiny_tokenizer_dir):
    hf = make_hf_model(tmp_path / "v1", tiny_tokenizer_dir, num_key_value_heads=4, attention_bias=True, max_position_embeddings=16,
                       rope_scaling={"rope_type": "dynamic", "factor": 1.0})
    _rewrite_config(tmp_path / "v1", drop=("rope_scaling", "rope_parameters", "rope_theta", "attention_bias", "num_key_value_heads"),
                    architectures=["InternLMForCausalLM"], model_type="internlm", bias=True, rotary={"base": 10000, "type": "dynamic"})
    ours = _assert_parity(hf, tmp_path / "v1")  # 20 tokens > 16: the dynamic NTK base is in play
    assert (ours.config.arch, ours.config.qkv_bias, ours.config.o_bias, ours.config.mlp_bias) == ("internlm", True, True, False)
    assert ours.config.to_hf()["rotary"] == {"base": 10000.0, "type": "dynamic", "scaling_factor": 1.0}


@pytest.mark.parametrize("qkv_bias,bias", [(True, True), (True, False), (False, False)])
def test_internlm3_published_config(tmp_path, tiny_tokenizer_dir, qkv_bias, bias):
    if qkv_bias == bias:  # transformers runs InternLM3 with its Llama implementation
        hf = make_hf_model(tmp_path / "v3", tiny_tokenizer_dir, arch="internlm3", qkv_bias=qkv_bias, bias=bias, head_dim=16)
    else:  # biases on q/k/v only: Qwen2's layout
        hf = make_hf_model(tmp_path / "v3", tiny_tokenizer_dir, arch="qwen2", head_dim=16)
    _rewrite_config(tmp_path / "v3", drop=("attention_bias", "mlp_bias"), architectures=["InternLM3ForCausalLM"], model_type="internlm3",
                    qkv_bias=qkv_bias, bias=bias)
    ours = _assert_parity(hf, tmp_path / "v3")
    assert (ours.config.arch, ours.config.qkv_bias, ours.config.o_bias, ours.config.mlp_bias) == ("internlm3", qkv_bias, bias, bias)
    saved = ours.config.to_hf()
    assert (saved["qkv_bias"], saved["bias"], saved["architectures"]) == (qkv_bias, bias, ["InternLM3ForCausalLM"])


# ---- published names and shapes ------------------------------------------------------------------------------

INTERNLM_CHAT_7B = {"architectures": ["InternLMForCausalLM"], "bias": True, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                    "hidden_size": 4096, "intermediate_size": 11008, "max_position_embeddings": 2048, "model_type": "internlm",
                    "num_attention_heads": 32, "num_hidden_layers": 32, "pad_token_id": 0, "rms_norm_eps": 1e-06,
                    "rotary": {"base": 10000, "type": "dynamic"}, "tie_word_embeddings": False, "vocab_size": 103168}
INTERNLM2_5_7B_CHAT = {"architectures": ["InternLM2ForCausalLM"], "attn_implementation": "eager", "bias": False, "bos_token_id": 1,
                       "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                       "max_position_embeddings": 32768, "model_type": "internlm2", "num_attention_heads": 32, "num_hidden_layers": 32,
                       "num_key_value_heads": 8, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
                       "rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 1000000, "tie_word_embeddings": False,
                       "vocab_size": 92544}
INTERNLM3_8B_INSTRUCT = {"architectures": ["InternLM3ForCausalLM"], "bias": False, "head_dim": 128, "hidden_act": "silu",
                         "hidden_size": 4096, "intermediate_size": 10240, "max_position_embeddings": 32768, "model_type": "internlm3",
                         "num_attention_heads": 32, "num_hidden_layers": 48, "num_key_value_heads": 2, "qkv_bias": False,
                         "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 6.0, "rope_type": "dynamic"}, "rope_theta": 50000000,
                         "tie_word_embeddings": False, "vocab_size": 128512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
QWEN3_0_6B = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128, "hidden_size": 1024,
              "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
              "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
              "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936}


def published_shapes(hf: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the published checkpoint, as each family's modeling code declares them."""
    v, d, f, layers = hf["vocab_size"], hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    h = hf["num_attention_heads"]
    kv, hd = hf.get("num_key_value_heads") or h, hf.get("head_dim") or d // h
    kind = hf["model_type"]
    if kind == "internlm2":
        shapes = {"model.tok_embeddings.weight": (v, d), "model.norm.weight": (d,), "output.weight": (v, d)}
        for i in range(layers):
            p = f"model.layers.{i}."
            shapes |= {p + "attention.wqkv.weight": ((h + 2 * kv) * hd, d), p + "attention.wo.weight": (d, h * hd),
                       p + "feed_forward.w1.weight": (f, d), p + "feed_forward.w3.weight": (f, d), p + "feed_forward.w2.weight": (d, f),
                       p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,)}
        return shapes
    qkv_bias = {"internlm": hf.get("bias"), "internlm3": hf.get("qkv_bias"), "qwen3": hf.get("attention_bias")}[kind]
    other_bias = {"internlm": hf.get("bias"), "internlm3": hf.get("bias"), "qwen3": hf.get("attention_bias")}[kind]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not hf["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (h * hd, d), p + "self_attn.k_proj.weight": (kv * hd, d),
                   p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.o_proj.weight": (d, h * hd),
                   p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f),
                   p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
        if qkv_bias:
            shapes |= {p + "self_attn.q_proj.bias": (h * hd,), p + "self_attn.k_proj.bias": (kv * hd,),
                       p + "self_attn.v_proj.bias": (kv * hd,)}
        if other_bias:
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        if other_bias and kind == "internlm3":
            shapes |= {p + "mlp.gate_proj.bias": (f,), p + "mlp.up_proj.bias": (f,), p + "mlp.down_proj.bias": (d,)}
        if kind == "qwen3":
            shapes |= {p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)}
        if kind == "internlm":  # a non-persistent buffer in the code, but the published .bin files carry it
            shapes[p + "self_attn.rotary_emb.inv_freq"] = (hd // 2,)
    return shapes


@pytest.mark.parametrize("published", [INTERNLM_CHAT_7B, INTERNLM2_5_7B_CHAT, INTERNLM3_8B_INSTRUCT, QWEN3_0_6B],
                         ids=["internlm-chat-7b", "internlm2_5-7b-chat", "internlm3-8b-instruct", "qwen3-0.6b"])
def test_key_map_on_published_names_and_shapes(published):
    config = ModelConfig.from_hf(published)
    state = {k: torch.empty(s, device="meta") for k, s in published_shapes(published).items()}
    native = hf_to_native(state, config)
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    assert {k: tuple(v.shape) for k, v in native.items()} == expected
    back = native_to_hf(native, config)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: s for k, s in published_shapes(published).items() if "inv_freq" not in k}


def test_internlm2_split_puts_each_published_row_in_its_place():
    """wqkv rows of key/value head j are [its query heads..., its key, its value] (``(h gs d)`` in the published code)."""
    config = ModelConfig.from_hf(INTERNLM2_5_7B_CHAT | {"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2,
                                                        "intermediate_size": 32, "num_hidden_layers": 1, "vocab_size": 16})
    hd, groups = 8, 4
    rows = torch.arange((8 + 2 * 2) * hd, dtype=torch.float32)[:, None].expand(-1, 64)
    native = hf_to_native({"model.layers.0.attention.wqkv.weight": rows}, config)
    block = (groups + 2) * hd  # rows per key/value head
    for j in range(2):
        q = native["model.layers.0.self_attn.q_proj.weight"][j * groups * hd : (j + 1) * groups * hd, 0]
        assert torch.equal(q, torch.arange(j * block, j * block + groups * hd, dtype=torch.float32))
        k = native["model.layers.0.self_attn.k_proj.weight"][j * hd : (j + 1) * hd, 0]
        assert torch.equal(k, torch.arange(j * block + groups * hd, j * block + (groups + 1) * hd, dtype=torch.float32))
        v = native["model.layers.0.self_attn.v_proj.weight"][j * hd : (j + 1) * hd, 0]
        assert torch.equal(v, torch.arange(j * block + (groups + 1) * hd, (j + 1) * block, dtype=torch.float32))


def test_published_configs_read_as_published():
    v1, v2, v3, q3 = (ModelConfig.from_hf(c) for c in (INTERNLM_CHAT_7B, INTERNLM2_5_7B_CHAT, INTERNLM3_8B_INSTRUCT, QWEN3_0_6B))
    assert (v1.num_kv_heads, v1.rope_theta, v1.qkv_bias, v1.o_bias) == (32, 10000.0, True, True)
    assert v1.rope_scaling == {"rope_type": "dynamic", "factor": 1.0}
    assert (v2.num_kv_heads, v2.rope_theta, v2.rope_scaling) == (8, 1e6, {"rope_type": "dynamic", "factor": 2.0})
    assert (v3.head_dim, v3.num_kv_heads, v3.rope_theta, v3.qkv_bias, v3.mlp_bias) == (128, 2, 5e7, False, False)
    assert (q3.head_dim, q3.qk_norm, q3.tie_word_embeddings, q3.max_position_embeddings) == (128, True, True, 40960)


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(ModelLoadError, match=r"unsupported architecture \(GPTNeoXForCausalLM\).*Qwen3ForCausalLM.*InternLM2ForCausalLM"):
        ModelConfig.from_hf(QWEN3_0_6B | {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"})
