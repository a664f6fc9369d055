"""Write a model as a GGUF file that llama.cpp (and :func:`puyu.model.load_model`) runs.

Follows llama.cpp's ``convert_hf_to_gguf`` conventions for Llama-layout
models: ``general.architecture = llama`` (``qwen2`` for Qwen2), llama.cpp
tensor names (see :func:`puyu.model.keymaps.native_to_gguf`), q/k rows
permuted for its RoPE layout (Llama only; Qwen2 is stored as is), 1-D tensors
(norms, biases) always F32, and the tokenizer as ``tokenizer.ggml.*``
metadata: byte-level BPE (``gpt2``) with tokens, token types, merges, the
pre-split type and the chat template.  Tensor types: ``f32``, ``f16`` and
``q8_0`` (quantized with the ``gguf`` package, llama.cpp's own reference).
RoPE scaling: linear and YaRN as metadata, Llama 3.x's ``llama3`` as the
``rope_freqs.weight`` divisors llama.cpp reads.  InternLM2 (fused q/k/v in
llama.cpp) is not written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from puyu.errors import ConfigError
from puyu.model.gguf_io import ROPE_FREQS
from puyu.model.keymaps import GGUF_PERMUTED_ARCHS, native_to_gguf, permute_rope_rows
from puyu.model.rope import llama3_divisors
from puyu.model.transformer import Transformer
from puyu.tokenizer import Tokenizer

OUTTYPES = ("f32", "f16", "q8_0")
_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def _pre_type(pre: dict | None) -> str:
    """llama.cpp's pre-split name of a ``tokenizer.json`` pre-tokenizer (see puyu.tokenizer.gguf_vocab)."""
    if pre is None:
        raise ConfigError("the tokenizer has no pre-tokenizer; only byte-level BPE tokenizers export to GGUF")
    if pre.get("type") == "ByteLevel":
        return "gpt2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = parts[0].get("pattern", {}).get("Regex", "")
        return "llama-bpe" if r"\p{N}{1,3}" in pattern else "qwen2"
    raise ConfigError(f"cannot name the tokenizer's pre-split rules ({kinds or pre.get('type')}) in GGUF terms; "
                      "export a Hugging Face folder instead")


def _vocabulary(tokenizer: Tokenizer, vocab_size: int) -> dict:
    """``tokenizer.ggml.*`` values from the ``tokenizers`` JSON."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or spec.get("decoder", {}).get("type") != "ByteLevel":
        raise ConfigError("only byte-level BPE tokenizers export to GGUF; export a Hugging Face folder instead")
    tokens = [""] * vocab_size
    types = [_UNUSED] * vocab_size
    for token, index in model["vocab"].items():
        if index < vocab_size:
            tokens[index], types[index] = token, _NORMAL
    for added in spec.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]], types[added["id"]] = added["content"], _CONTROL if added["special"] else _USER_DEFINED
    for index, token in enumerate(tokens):
        if not token:
            tokens[index] = f"[PAD{index}]"
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    post = spec.get("post_processor") or {}
    add_bos = post.get("type") == "TemplateProcessing" and bool(post.get("special_tokens"))
    return {"tokens": tokens, "types": types, "merges": merges, "pre": _pre_type(spec.get("pre_tokenizer")), "add_bos": add_bos}


def _tensor_data(value: torch.Tensor, outtype: str):
    """``(array, raw_dtype)`` for the writer: 1-D and odd-shaped tensors stay F32."""
    import gguf

    array = value.detach().float().cpu().numpy()
    if array.ndim == 1 or outtype == "f32":
        return array.astype(np.float32), None
    if outtype == "f16":
        return array.astype(np.float16), None
    if array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        return array.astype(np.float16), None
    return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def export_gguf(model: Transformer, tokenizer: Tokenizer, path: str | Path, outtype: str = "f16", name: str = "puyu model") -> Path:
    """Write ``model`` and ``tokenizer`` to the GGUF file ``path``.

    Raises:
        ConfigError: an unknown ``outtype``, an architecture or tokenizer GGUF cannot express.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise ConfigError(f"unknown GGUF tensor type {outtype!r}; use one of {', '.join(OUTTYPES)}")
    c = model.config
    if c.arch not in _ARCHS:
        raise ConfigError(f"GGUF export supports {', '.join(_ARCHS)} layouts, not {c.arch}; export a Hugging Face folder instead")
    arch = _ARCHS[c.arch]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = _vocabulary(tokenizer, c.vocab_size)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_heads)
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_vocab_size(c.vocab_size)
    if c.rope_scaling and c.rope_scaling["rope_type"] != "llama3":
        kind = c.rope_scaling["rope_type"]
        if kind not in ("linear", "yarn"):
            raise ConfigError(f"{kind} RoPE scaling cannot be written to GGUF by puyu; export a Hugging Face folder instead")
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(c.rope_scaling["factor"]))
        if kind == "yarn":
            writer.add_rope_scaling_orig_ctx_len(int(c.rope_scaling["original_max_position_embeddings"]))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key, token in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.token_id(tokenizer.pad_token)),
                       ("unk", tokenizer.token_id(tokenizer.unk_token))):
        if token is not None:
            getattr(writer, f"add_{key}_token_id")(token)
    writer.add_add_bos_token(vocab["add_bos"])
    if tokenizer.template is not None:
        writer.add_chat_template(tokenizer.template.source)
    writers = {"temperature": writer.add_sampling_temp, "top_p": writer.add_sampling_top_p, "min_p": writer.add_sampling_min_p,
               "repetition_penalty": writer.add_sampling_penalty_repeat, "top_k": lambda k: writer.add_sampling_top_k(int(k))}
    for key, value in tokenizer.sampling_defaults.items():  # llama.cpp samples with them when the user sets none
        writers[key](value)
    permute = arch in GGUF_PERMUTED_ARCHS
    state = model.state_dict()
    if c.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for key, value in state.items():
        if permute and key.endswith("self_attn.q_proj.weight"):
            value = permute_rope_rows(value, c.num_heads)
        elif permute and key.endswith("self_attn.k_proj.weight"):
            value = permute_rope_rows(value, c.num_kv_heads)
        array, raw = _tensor_data(value, outtype)
        writer.add_tensor(native_to_gguf(key), array, raw_dtype=raw)
    if c.rope_scaling and c.rope_scaling["rope_type"] == "llama3":
        writer.add_tensor(ROPE_FREQS, llama3_divisors(c.rope_scaling, c.rope_theta, c.head_dim).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
