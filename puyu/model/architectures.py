"""The architectures puyu runs, as published, without executing any remote code.

One row per Hugging Face ``architectures`` entry: the puyu ``arch`` it loads
as (which decides the key map in :mod:`puyu.model.keymaps` and the config
layout in :mod:`puyu.model.config`), its ``model_type``, what differs from a
plain Llama, the chat template a folder without one gets, and notes a user
needs (``puyu models`` prints this table).

The weight layouts, read from each family's published modeling code:

- ``InternLMForCausalLM`` (InternLM v1, remote code ``modeling_internlm.py``):
  Llama names, multi-head attention, q/k/v/o biases (``bias``), RoPE given
  as ``rotary: {base, type: origin|dynamic, scaling_factor}``.
- ``InternLM2ForCausalLM`` (InternLM2 / 2.5): ``tok_embeddings``, one fused
  ``attention.wqkv`` interleaved per key/value head, ``wo``, ``w1/w3/w2``,
  ``attention_norm``/``ffn_norm``, ``output``; ``bias`` on wqkv and wo.
- ``InternLM3ForCausalLM``: Llama names; ``qkv_bias`` on q/k/v, ``bias`` on
  o_proj and the three MLP projections.
- Qwen2/2.5 (q/k/v bias), Qwen3 (per-head q/k RMSNorm, tied embeddings on
  the small sizes), Llama 1-3.x (``llama3`` RoPE), Mistral: transformers'
  own classes and names.

Sliding-window attention (Mistral v0.1, Qwen with ``use_sliding_window``) is
not computed: such a model loads with its context capped at the window,
where full attention and sliding-window attention are the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """One supported Hugging Face architecture."""

    hf_class: str  # the config.json ``architectures`` entry
    arch: str  # puyu's layout name
    model_type: str  # the config.json ``model_type``
    models: str  # published models of this layout
    differs: str  # what differs from a plain Llama
    template: str | None  # the built-in chat template used when the folder has none (None: the folder must carry one)
    notes: str = ""


ARCHITECTURES = [
    Architecture("LlamaForCausalLM", "llama", "llama", "Llama 2, Llama 3.x, SmolLM2, TinyLlama",
                 "reference layout; llama3/linear/dynamic/yarn RoPE scaling", None),
    Architecture("MistralForCausalLM", "mistral", "mistral", "Mistral 7B v0.1-v0.3, Mistral-Nemo",
                 "Llama layout", None, "v0.1's 4096-token sliding window: context capped at the window"),
    Architecture("Qwen2ForCausalLM", "qwen2", "qwen2", "Qwen2, Qwen2.5 (0.5B-72B), Qwen2.5-Coder/Math",
                 "q/k/v biases; tied embeddings on small sizes", "chatml",
                 "use_sliding_window: context capped at the window"),
    Architecture("Qwen3ForCausalLM", "qwen3", "qwen3", "Qwen3 (0.6B-32B dense)",
                 "per-head RMSNorm on q and k; explicit head_dim; tied embeddings on small sizes", "chatml",
                 "use_sliding_window: context capped at the window"),
    Architecture("InternLMForCausalLM", "internlm", "internlm", "InternLM-7B, InternLM-Chat-7B (v1)",
                 "q/k/v/o biases; RoPE from the 'rotary' key", "internlm",
                 "published as .bin: convert once to safetensors (the load error prints the command)"),
    Architecture("InternLM2ForCausalLM", "internlm2", "internlm2", "InternLM2 / InternLM2.5 (1.8B, 7B, 20B) chat and base",
                 "fused wqkv per key/value head, renamed layers", "internlm2"),
    Architecture("InternLM3ForCausalLM", "internlm3", "internlm3", "InternLM3-8B-Instruct",
                 "qkv_bias on q/k/v, bias on o_proj and the MLP", "internlm2"),
]
BY_HF_CLASS = {a.hf_class: a for a in ARCHITECTURES}
BY_ARCH = {a.arch: a for a in ARCHITECTURES}
BY_MODEL_TYPE = {a.model_type: a for a in ARCHITECTURES}


def supported_list() -> str:
    """``LlamaForCausalLM (Llama 2, ...), ...`` for error messages."""
    return "; ".join(f"{a.hf_class} ({a.models})" for a in ARCHITECTURES)


def bin_conversion_command(folder: str) -> str:
    """The one-line command that re-saves a folder's PyTorch ``.bin`` shards as safetensors next to them.

    ``torch.load(weights_only=True)`` reads tensors only (no arbitrary unpickling); ``clone`` separates tensors that
    share storage (tied embeddings), which safetensors refuses.
    """
    return ("python -c \"import glob,torch,safetensors.torch as s; [s.save_file({k: v.clone() for k, v in "
            f"torch.load(f, weights_only=True, map_location='cpu').items()}}, f[:-4] + '.safetensors', {{'format': 'pt'}}) "
            f"for f in sorted(glob.glob('{folder}/*.bin'))]\"")
