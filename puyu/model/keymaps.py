"""Explicit weight key maps between checkpoint layouts and puyu's native names.

Native names are the Hugging Face Llama names (see :mod:`puyu.model.transformer`).
Llama, Mistral and Qwen2 checkpoints already use them, so their map is the
identity; InternLM2 packs q/k/v into one ``wqkv`` matrix, interleaved per
key/value head as ``[kv_heads, q_per_kv + 2, head_dim, hidden]``, and renames
the rest.  GGUF tensors use llama.cpp's names, and llama.cpp stores the q/k
rows of Llama-layout models permuted for its interleaved RoPE; both are undone
here.
"""

from __future__ import annotations

import re

import torch

from puyu.errors import ModelLoadError
from puyu.model.config import ModelConfig

# (InternLM2 name part, native name part); a part without a leading dot is a key prefix.
_INTERNLM2_RENAMES = [
    ("model.tok_embeddings.", "model.embed_tokens."),
    ("output.", "lm_head."),
    (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w1.", ".mlp.gate_proj."),
    (".feed_forward.w3.", ".mlp.up_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
]

_GGUF_RENAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm",  # Qwen3
    "attn_k_norm": "self_attn.k_norm",
}
# llama.cpp permutes q/k rows for these GGUF architectures (convert_hf_to_gguf's LlamaModel.permute).
GGUF_PERMUTED_ARCHS = {"llama", "mistral", "internlm2"}


def hf_to_native(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename/split a Hugging Face state dict of ``config.arch`` into native keys."""
    if config.arch != "internlm2":
        return {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.match(r"^model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)$", key)
        if match:
            layer, kind = match.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), _split_wqkv(value, config)):
                out[f"model.layers.{layer}.self_attn.{name}.{kind}"] = part
            continue
        if key.endswith("rotary_emb.inv_freq"):
            continue
        out[_rename(key, _INTERNLM2_RENAMES)] = value
    return out


def native_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`hf_to_native`: native keys into the checkpoint layout of ``config.arch``."""
    if config.arch != "internlm2":
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    inverse = [(native, theirs) for theirs, native in _INTERNLM2_RENAMES]
    for key, value in state.items():
        match = re.match(r"^model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$", key)
        if match:
            layer, kind = match.groups()
            parts = [state[f"model.layers.{layer}.self_attn.{n}.{kind}"] for n in ("q_proj", "k_proj", "v_proj")]
            out[f"model.layers.{layer}.attention.wqkv.{kind}"] = _pack_wqkv(*parts, config)
            continue
        if re.search(r"\.self_attn\.[kv]_proj\.", key):
            continue
        out[_rename(key, inverse)] = value
    return out


def _rename(key: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if old.startswith("."):
            key = key.replace(old, new)
        elif key.startswith(old):
            key = new + key[len(old) :]
    return key


def _split_wqkv(w: torch.Tensor, c: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = c.kv_groups
    grouped = w.reshape(c.num_kv_heads, g + 2, c.head_dim, *w.shape[1:])
    q = grouped[:, :g].reshape(c.num_heads * c.head_dim, *w.shape[1:])
    k = grouped[:, g].reshape(c.num_kv_heads * c.head_dim, *w.shape[1:])
    v = grouped[:, g + 1].reshape(c.num_kv_heads * c.head_dim, *w.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def _pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    rest = q.shape[1:]
    q = q.reshape(c.num_kv_heads, c.kv_groups, c.head_dim, *rest)
    k = k.reshape(c.num_kv_heads, 1, c.head_dim, *rest)
    v = v.reshape(c.num_kv_heads, 1, c.head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest).contiguous()


def unpermute_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (``heads`` = query or key/value heads)."""
    rest = w.shape[1:]
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def permute_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row permutation (what ``convert_hf_to_gguf`` writes)."""
    rest = w.shape[1:]
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *rest).transpose(1, 2).reshape(w.shape)


def gguf_to_native(name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    match = re.match(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$", name)
    if match:
        layer, part, kind = match.groups()
        if part in _GGUF_RENAMES:
            return f"model.layers.{layer}.{_GGUF_RENAMES[part]}.{kind}"
    else:
        match = re.match(r"^(\w+)\.(weight|bias)$", name)
        if match and match.group(1) in _GGUF_RENAMES:
            return f"{_GGUF_RENAMES[match.group(1)]}.{match.group(2)}"
    raise ModelLoadError(f"GGUF tensor {name!r} has no place in a Llama-family model; is this a supported architecture?")


def native_to_gguf(name: str) -> str:
    """Inverse of :func:`gguf_to_native`."""
    inverse = {v: k for k, v in _GGUF_RENAMES.items()}
    match = re.match(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)
    if match:
        return f"blk.{match.group(1)}.{inverse[match.group(2)]}.{match.group(3)}"
    base, kind = name.rsplit(".", 1)
    return f"{inverse[base]}.{kind}"
