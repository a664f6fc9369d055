"""Read GGUF files (llama.cpp's format) into a config, native fp32 weights and tokenizer metadata.

Tensors are dequantized with the ``gguf`` package (F32, F16, BF16, Q4_0/Q4_1,
Q5_0/Q5_1, Q8_0, the K-quants and whatever else it supports), renamed from
llama.cpp names, and the q/k rows llama.cpp permutes are put back.  Supported
``general.architecture`` values: ``llama``, ``qwen2``, ``qwen3``, ``internlm2``.  Llama 3.1+
files carry their RoPE scaling as per-frequency divisors (``rope_freqs.weight``), which
become the equivalent ``llama3`` ``rope_scaling`` (see
:func:`puyu.model.rope.llama3_scaling_from_divisors`), so the converted folder is a plain
Hugging Face Llama folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from puyu.errors import ModelLoadError
from puyu.model.config import ModelConfig
from puyu.model.keymaps import GGUF_PERMUTED_ARCHS, gguf_to_native, unpermute_rope_rows
from puyu.model.rope import llama3_scaling_from_divisors

ROPE_FREQS = "rope_freqs.weight"
SUPPORTED_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "internlm2": "internlm2"}


def _open(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/struct.error/IndexError on damage
        raise ModelLoadError(f"cannot read {path} as GGUF ({type(exc).__name__}: {exc}); the file is damaged or not a GGUF model") from None


def read_metadata(reader) -> dict[str, Any]:
    """All key/value fields with decoded Python values."""
    return {name: field.contents() for name, field in reader.fields.items()}


def config_from_metadata(meta: dict[str, Any], tensor_names: set[str], rope_freqs: torch.Tensor | None = None) -> ModelConfig:
    """The model config of a GGUF's metadata.

    Args:
        tensor_names: the file's tensor names (which biases and heads exist).
        rope_freqs: the values of ``rope_freqs.weight`` where the file has one; without them the config of such a
            file has no RoPE scaling (enough for estimates, not for running it).

    Raises:
        ModelLoadError: an unsupported architecture, a missing key, or rope_freqs that are not Llama 3 scaling.
    """
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelLoadError(f"unsupported GGUF architecture {arch!r}; puyu reads {', '.join(SUPPORTED_ARCHS)}")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"the GGUF lacks the key {arch}.{key}; the file is incomplete")
        return value

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or hidden // heads)
    theta = float(meta.get(f"{arch}.rope.freq_base") or 10000.0)
    scaling = None
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind and kind != "none":
        if rope_freqs is not None:
            raise ModelLoadError(f"this GGUF has both {kind} RoPE scaling and rope_freqs divisors; puyu runs one or the other")
        scaling = {"rope_type": kind, "factor": float(get("rope.scaling.factor"))}
        if kind == "yarn":
            scaling["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
    elif rope_freqs is not None:
        scaling = llama3_scaling_from_divisors(rope_freqs, theta, head_dim)
    tokens = meta.get("tokenizer.ggml.tokens")
    return ModelConfig(
        arch=SUPPORTED_ARCHS[arch],
        vocab_size=int(meta.get(f"{arch}.vocab_size") or len(tokens or [])),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(get("context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        o_bias="blk.0.attn_output.bias" in tensor_names,
    )


def _dequantize(tensor, path: Path) -> torch.Tensor:
    """One reader tensor as fp32 in PyTorch's dimension order."""
    import gguf

    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, ValueError) as exc:
        raise ModelLoadError(f"cannot dequantize {tensor.name} ({tensor.tensor_type.name}) in {path}: {exc}") from None
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return torch.from_numpy(np.array(array, dtype=np.float32)).reshape(shape)  # a copy: the reader memory-maps the file


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """``(config, native fp32 state dict, metadata)`` of a GGUF file."""
    path = Path(path)
    reader = _open(path)
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    rope_freqs = _dequantize(tensors.pop(ROPE_FREQS), path) if ROPE_FREQS in tensors else None
    config = config_from_metadata(meta, set(tensors), rope_freqs)
    permute = meta.get("general.architecture") in GGUF_PERMUTED_ARCHS
    state: dict[str, torch.Tensor] = {}
    for tensor in tensors.values():
        value = _dequantize(tensor, path)
        name = gguf_to_native(tensor.name)
        if permute and name.endswith("self_attn.q_proj.weight"):
            value = unpermute_rope_rows(value, config.num_heads)
        elif permute and name.endswith("self_attn.k_proj.weight"):
            value = unpermute_rope_rows(value, config.num_kv_heads)
        state[name] = value
    return config, state, meta
